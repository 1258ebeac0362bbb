"""The parsers of untrusted input under fuzzing (tests/fuzz): every crasher ever found
replays clean, every seed passes its target's checks, and a short coverage-guided run
of every target with atheris (about 30 s in all on 2 cores) finds nothing new.

The long run (10^6 inputs and more per target) is ``python -m tests.fuzz.run``; its
figures are in docs/BENCHMARKS.md ("Fuzzing the parsers of untrusted input").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz.run import REGRESSIONS, run_target
from tests.fuzz.targets import SEEDS, TARGETS

SECONDS_PER_TARGET = 2  # libFuzzer -max_total_time; ~1.3 s of start-up comes on top (long runs: tests/fuzz/run.py)
PARALLEL = 2


def _regression_cases() -> list[tuple[str, Path]]:
    if not REGRESSIONS.is_dir():
        return []
    return [(d.name, f) for d in sorted(REGRESSIONS.iterdir()) if d.is_dir() for f in sorted(d.iterdir()) if f.is_file()]


def test_every_regression_directory_names_a_target() -> None:
    cases = _regression_cases()
    assert cases, "tests/fuzz/regressions holds the crashers found so far"
    assert {name for name, _ in cases} <= set(TARGETS)


@pytest.mark.parametrize(("target", "path"), _regression_cases(), ids=lambda v: v.name[:12] if isinstance(v, Path) else v)
def test_crashers_found_by_fuzzing_stay_fixed(target: str, path: Path) -> None:
    """Each input once raised an undocumented exception, broke a round trip or took
    too long; its target must now return normally."""
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", list(TARGETS))
def test_seeds_pass_their_target(target: str) -> None:
    seeds = SEEDS[target]()
    assert seeds, f"{target} has no seeds"
    for data in seeds:
        TARGETS[target](data)


def test_a_short_fuzzing_run_of_every_target_finds_nothing(tmp_path: Path) -> None:
    """Coverage-guided (atheris, libFuzzer) from the seeds and the kept crashers; a new
    crasher is written to tmp_path and its traceback shown here (copy it into
    tests/fuzz/regressions/<target>/ with the fix)."""

    def one(name: str):
        # A call over 1 s (instrumented) is a hang here; the long run hunts slow inputs at 100 ms.
        return run_target(name, seconds=SECONDS_PER_TARGET, regressions_dir=tmp_path, rss_limit_mb=1024, slow_ms=1000)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(one, TARGETS))
    problems = []
    for r in results:
        for crash in r.crashes:
            data = crash.path.read_bytes() if crash.path else b""
            problems.append(f"{r.target}: {crash.signature}, input {data[:200].hex()}\n{crash.traceback}")
        if r.returncode != 0 and not r.crashes:
            problems.append(f"{r.target}: exit {r.returncode}\n{r.log[-2000:]}")
        if r.execs < 100:
            problems.append(f"{r.target}: only {r.execs} inputs executed\n{r.log[-2000:]}")
    assert not problems, "\n\n".join(problems)
