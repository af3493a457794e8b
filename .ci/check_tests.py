"""Check a pytest JUnit XML report against the floor: no test skipped, none failed, and at
least as many run as `.ci/test-floor` says.

    python .ci/check_tests.py REPORT.xml .ci/test-floor

Exits 0 when the run is good, 1 with the reasons otherwise (a missing or empty report too:
pytest's exit 5, "no tests collected", is a failure here as everywhere in CI).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Tally:
    passed: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def read_floor(path: Path) -> int:
    """The first line of `path` that is not blank or a `#` comment, as a whole number."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            return int(text)
    raise ValueError(f"{path}: no number in it")


def tally(report: str) -> Tally:
    """Count the test cases of a JUnit XML report (pytest --junitxml) by outcome."""
    root = ElementTree.fromstring(report)
    found = Tally()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            found.failed.append(name)
        elif "skipped" in kinds:
            found.skipped.append(name)
        else:
            found.passed += 1
    return found


def problems(found: Tally, floor: int) -> list[str]:
    """Why the run is not good enough; empty when it is."""
    out = [f"skipped: {name}" for name in found.skipped]
    out += [f"failed: {name}" for name in found.failed]
    if found.passed < floor:
        out.append(
            f"{found.passed} tests passed, fewer than the floor of {floor} (.ci/test-floor): "
            "were tests deleted or deselected?"
        )
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    report, floor_file = Path(argv[0]), Path(argv[1])
    floor = read_floor(floor_file)
    try:
        found = tally(report.read_text(encoding="utf-8"))
    except (OSError, ElementTree.ParseError) as exc:
        print(f"check-tests: no usable report {report}: {exc}", file=sys.stderr)
        return 1
    reasons = problems(found, floor)
    for reason in reasons:
        print(f"check-tests: {reason}", file=sys.stderr)
    if reasons:
        return 1
    print(f"check-tests: {found.passed} tests passed, none skipped (floor {floor})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
