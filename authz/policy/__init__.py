"""The policy language: the document (version "1"), its rules and limits, conditions and
`regex` patterns, validation errors that name the field at fault, and loading.

- `document`: the whole document (`PolicyDocument`) and the loaded `Policy` the engine reads;
- `rules`, `limits`: the parts of a tool's entry;
- `conditions`, `patterns`: the operators and `args.x.y` paths, RE2 patterns;
- `errors`: `PolicyError` and its problems;
- `load`: `load_policy`, `check_policy_files`, `policy_json_schema`.
"""

from authz.policy.document import (
    WILDCARD,
    AllTools,
    MethodsPolicy,
    Policy,
    PolicyDocument,
    ToolPolicy,
)
from authz.policy.errors import PolicyError, Problem
from authz.policy.limits import WINDOW_SECONDS, Limit, LimitCost
from authz.policy.load import check_policy_files, load_policy, policy_json_schema
from authz.policy.rules import (
    GLOBAL_STATE_SCOPE,
    STATE_PREFIX,
    ActionRule,
    ApprovalRule,
    Condition,
    CounterState,
    Rule,
    RuleLimit,
)

__all__ = [
    "GLOBAL_STATE_SCOPE",
    "STATE_PREFIX",
    "WILDCARD",
    "WINDOW_SECONDS",
    "ActionRule",
    "AllTools",
    "ApprovalRule",
    "Condition",
    "CounterState",
    "Limit",
    "LimitCost",
    "MethodsPolicy",
    "Policy",
    "PolicyDocument",
    "PolicyError",
    "Problem",
    "Rule",
    "RuleLimit",
    "ToolPolicy",
    "check_policy_files",
    "load_policy",
    "policy_json_schema",
]
