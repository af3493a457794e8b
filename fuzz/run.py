"""Run the fuzz targets for a bounded time each and summarise (what `make fuzz` calls).

    python fuzz/run.py [--seconds N] [TARGET ...] [-- LIBFUZZER_ARG ...]

TARGET is `parser` (fuzz_parser.py) or `policy` (fuzz_policy.py); both by default. Each
target runs as its own process for N seconds (libFuzzer `-max_total_time`) over its seed
corpus `fuzz/corpus/TARGET/` plus a working corpus `fuzz/work/TARGET/` that keeps what the
fuzzer learns between local runs. The full libFuzzer log goes to `fuzz/work/TARGET.log`;
this prints one summary line per target (executions, coverage, corpus). On a crash, a
hang or an out-of-memory it prints the end of the log and the reproducer's path under
`fuzz/artifacts/`, and exits 1 once every target has run. Exit 0 means no target failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"parser": "fuzz_parser.py", "policy": "fuzz_policy.py"}
DICTIONARIES = {"parser": "mcp.dict", "policy": "policy.dict"}
DEFAULT_FLAGS = ["-timeout=10", "-rss_limit_mb=2048", "-max_len=8192", "-print_final_stats=1"]
LOG_TAIL = 60

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_FINAL = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")
_PULSE = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")
_UNITS = re.compile(r"stat::number_of_executed_units: (\d+)")


@dataclass
class Result:
    target: str
    returncode: int
    seconds: float
    runs: int | None
    cov: int | None
    ft: int | None
    corpus: str | None
    log: Path
    artifacts: list[Path]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.runs is not None and not self.artifacts

    def line(self) -> str:
        runs = f"{self.runs:,}" if self.runs is not None else "?"
        rate = f"{self.runs / max(self.seconds, 1e-9):,.0f}/s" if self.runs else "?/s"
        status = "no crash" if self.ok else f"FAILED (exit {self.returncode})"
        return (
            f"fuzz {self.target}: {runs} executions in {self.seconds:.0f} s ({rate}), "
            f"cov {self.cov} ft {self.ft}, corpus {self.corpus}: {status}"
        )


def run_target(target: str, seconds: int, extra: list[str]) -> Result:
    work = HERE / "work" / target
    work.mkdir(parents=True, exist_ok=True)
    artifacts = HERE / "artifacts"
    artifacts.mkdir(exist_ok=True)
    before = set(artifacts.iterdir())
    log = HERE / "work" / f"{target}.log"
    cmd = [
        sys.executable,
        str(HERE / TARGETS[target]),
        str(work),
        str(HERE / "corpus" / target),
        f"-max_total_time={seconds}",
        f"-dict={HERE / DICTIONARIES[target]}",
        f"-artifact_prefix={artifacts}/{target}-",
        *DEFAULT_FLAGS,
        *extra,
    ]
    print(f"fuzz {target}: {seconds} s …", flush=True)
    started = time.monotonic()
    with log.open("w") as out:
        returncode = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    runs = cov = ft = None
    corpus = None
    if (done := _DONE.search(text) or _UNITS.search(text)) is not None:
        runs = int(done.group(1))
    final = _FINAL.findall(text) or _PULSE.findall(text)
    if final:
        last = final[-1]
        runs = runs if runs is not None else int(last[0])
        cov, ft, corpus = int(last[1]), int(last[2]), f"{last[3]} inputs/{last[4]}"
    new = sorted(p for p in set(artifacts.iterdir()) - before if p.name.startswith(f"{target}-"))
    return Result(target, returncode, elapsed, runs, cov, ft, corpus, log, new)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args:
        extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[])
    options = parser.parse_args(args)
    targets = options.targets or list(TARGETS)

    results = [run_target(target, options.seconds, extra) for target in targets]
    failed = False
    for result in results:
        print(result.line())
        if not result.ok:
            failed = True
            lines = result.log.read_text(errors="replace").splitlines()
            print(f"--- last {LOG_TAIL} lines of {result.log} ---")
            print("\n".join(lines[-LOG_TAIL:]))
            for path in result.artifacts:
                print(
                    f"reproducer: {path}  (rerun: .venv/bin/python "
                    f"fuzz/{TARGETS[result.target]} {path})"
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
