"""Human approval of held tool calls: the store interface (`base`), the memory and Redis
stores, the admin API (`admin`, `listener`) and the webhook (`webhook`).

The approval itself (`Approval`, `ApprovalStatus`) is in `authz.model`."""

from authz.approvals.base import (
    ApprovalConflict,
    ApprovalLimits,
    ApprovalNotFound,
    ApprovalRefused,
    ApprovalRequest,
    ApprovalStore,
    ApprovalStoreUnavailable,
)
from authz.approvals.memory import MemoryApprovalStore

__all__ = [
    "ApprovalConflict",
    "ApprovalLimits",
    "ApprovalNotFound",
    "ApprovalRefused",
    "ApprovalRequest",
    "ApprovalStore",
    "ApprovalStoreUnavailable",
    "MemoryApprovalStore",
]
