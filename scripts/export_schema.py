"""Write the policy JSON Schema to authz/schema/policy.schema.json (deterministic output).

Usage: python scripts/export_schema.py [--check]
With --check, exit 1 if the committed file differs from the generated schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from authz.policy import policy_json_schema

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "authz" / "schema" / "policy.schema.json"


def render() -> str:
    """The schema as committed: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SCHEMA_PATH} is stale; run scripts/export_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
