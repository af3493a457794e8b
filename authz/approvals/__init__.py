"""Human approval of held tool calls: store interface (`base`), memory and Redis stores."""

from authz.approvals.base import (
    Approval,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalStore,
    ApprovalStoreUnavailable,
)

__all__ = [
    "Approval",
    "ApprovalConflict",
    "ApprovalNotFound",
    "ApprovalRequest",
    "ApprovalStatus",
    "ApprovalStore",
    "ApprovalStoreUnavailable",
]
