"""The policy language: the document (version "1") and its parts (`document`, `rules`,
`limits`), conditions and `regex` patterns (`conditions`, `patterns`), problems that name
the field at fault (`errors`), and loading (`load`)."""

from authz.policy.document import Policy, PolicyDocument
from authz.policy.errors import PolicyError, Problem
from authz.policy.load import check_policy_files, load_policy, policy_json_schema

__all__ = [
    "Policy",
    "PolicyDocument",
    "PolicyError",
    "Problem",
    "check_policy_files",
    "load_policy",
    "policy_json_schema",
]
