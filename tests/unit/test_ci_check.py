""".ci/check_tests.py: a CI run passes only with nothing skipped and at least the floor."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "check_tests.py"
FLOOR = Path(__file__).resolve().parents[2] / ".ci" / "test-floor"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_tests", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


check = _load()


def report(*cases: str) -> str:
    body = "".join(
        f'<testcase classname="tests.m" name="t{i}">{inner}</testcase>'
        for i, inner in enumerate(cases)
    )
    return (
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>'
    )


SKIPPED = '<skipped type="pytest.skip" message="no envoy">x</skipped>'
FAILED = '<failure message="assert 1 == 2">x</failure>'
ERROR = '<error message="fixture failed">x</error>'


def test_a_full_run_passes() -> None:
    found = check.tally(report("", "", "<system-out>log</system-out>"))
    assert found.passed == 3
    assert check.problems(found, 3) == []


@pytest.mark.parametrize(
    ("cases", "floor", "expected"),
    [
        (("", SKIPPED), 1, ["skipped: tests.m::t1"]),
        (("", FAILED, ERROR), 1, ["failed: tests.m::t1", "failed: tests.m::t2"]),
        (("", ""), 3, ["2 tests passed, fewer than the floor of 3"]),
        ((), 1, ["0 tests passed, fewer than the floor of 1"]),  # pytest's exit 5
        (("", SKIPPED), 2, ["skipped: tests.m::t1", "1 tests passed, fewer than the floor of 2"]),
    ],
)
def test_skips_failures_and_too_few_tests_fail_the_run(
    cases: tuple[str, ...], floor: int, expected: list[str]
) -> None:
    found = check.problems(check.tally(report(*cases)), floor)
    assert [p.split(" (")[0].removesuffix(":") for p in found] == expected


def test_the_floor_file_is_one_number_after_comments(tmp_path: Path) -> None:
    path = tmp_path / "floor"
    path.write_text("# the fewest tests\n\n  1234 \n")
    assert check.read_floor(path) == 1234
    path.write_text("# nothing\n")
    with pytest.raises(ValueError):
        check.read_floor(path)
    assert check.read_floor(FLOOR) > 0  # the repository's own floor reads


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    floor = tmp_path / "floor"
    floor.write_text("2\n")
    good = tmp_path / "good.xml"
    good.write_text(report("", ""))
    assert check.main([str(good), str(floor)]) == 0
    assert "2 tests passed, none skipped" in capsys.readouterr().out
    skipped = tmp_path / "skipped.xml"
    skipped.write_text(report("", "", SKIPPED))
    assert check.main([str(skipped), str(floor)]) == 1
    assert "skipped: tests.m::t2" in capsys.readouterr().err
    assert check.main([str(tmp_path / "missing.xml"), str(floor)]) == 1
    broken = tmp_path / "broken.xml"
    broken.write_text("<testsuites>")
    assert check.main([str(broken), str(floor)]) == 1
    assert check.main([]) == 2
