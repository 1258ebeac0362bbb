"""The soak benchmark's pure parts (``loadtest/bench_soak.py``): the checks against the
baseline, the table, the CSV, the plot and the command line. The soak itself is a
script, not a test (docs/BENCHMARKS.md)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from loadtest.bench_soak import (
    MIB,
    Check,
    Sample,
    compare,
    format_checks,
    parse_args,
    slope_per_1000,
    write_csv,
    write_plot,
)


def sample(cycle: int, rss_mib: float, tasks: int, fds: int, threads: int, phase: str = "aiortc") -> Sample:
    return Sample(t=float(cycle), phase=phase, cycle=cycle, rss_bytes=rss_mib * MIB, tasks=tasks, fds=fds, threads=threads)


def test_a_rise_within_the_tolerance_passes_and_beyond_it_fails() -> None:
    baseline = sample(2, 100.0, 20, 16, 5)
    checks = {c.resource: c for c in compare("end", baseline, sample(1002, 105.0, 21, 17, 6), 0.05)}
    assert checks["rss_bytes"].passed  # exactly +5 %
    assert math.isclose(checks["rss_bytes"].change, 0.05)
    assert checks["tasks"].passed  # +5 %
    assert not checks["fds"].passed  # one more fd of 16 is +6.25 %
    assert not checks["threads"].passed  # +20 %
    assert [c.checkpoint for c in checks.values()] == ["end"] * 4


def test_a_fall_is_not_a_leak() -> None:
    (rss, *_) = compare("end", sample(2, 100.0, 4, 16, 5), sample(9, 80.0, 4, 16, 5))
    assert rss.passed and math.isclose(rss.change, -0.2)


def test_a_rise_from_zero() -> None:
    assert Check("end", "tasks", 0, 0, 0.05).passed and Check("end", "tasks", 0, 0, 0.05).change == 0
    rose = Check("end", "tasks", 0, 1, 0.05)
    assert not rose.passed and math.isinf(rose.change)


def test_trend_per_1000_cycles() -> None:
    settled = [sample(c, 100.0 + c / 100, 4, 16, 5, "settled") for c in (20, 270, 520, 770, 1020)]
    assert math.isclose(slope_per_1000(settled, "rss_bytes") / MIB, 10.0)  # +10 MiB per 1,000 cycles
    assert slope_per_1000(settled, "tasks") == 0
    assert slope_per_1000(settled[:2], "rss_bytes") is None  # too few points
    assert slope_per_1000([sample(5, 1, 1, 1, 1)] * 3, "tasks") is None  # one cycle count


def test_the_table_shows_units_change_and_verdict() -> None:
    checks = compare("after 1000 aiortc cycles", sample(2, 90.0, 4, 16, 5), sample(1002, 99.0, 4, 16, 5))
    table = format_checks(checks)
    lines = table.splitlines()
    assert lines[0].startswith("| checkpoint | resource |") and len(lines) == 2 + 4
    assert "| after 1000 aiortc cycles | RSS | 90.0 MiB | 99.0 MiB | +10.0 % | FAIL (> +5 %) |" in lines
    assert "| after 1000 aiortc cycles | asyncio tasks | 4 | 4 | +0.0 % | PASS |" in lines


def test_csv_has_one_row_per_sample(tmp_path: Path) -> None:
    samples = [sample(0, 80.0, 4, 16, 5, "warmup"), sample(10, 90.5, 5, 17, 5), sample(10, 88.0, 4, 16, 5, "settled")]
    path = write_csv(samples, tmp_path / "out" / "soak.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["warmup", "aiortc", "settled"]
    assert float(rows[1]["rss_bytes"]) == 90.5 * MIB and rows[1]["tasks"] == "5"


def test_plot_is_a_png(tmp_path: Path) -> None:
    samples = [sample(i, 90.0 + i / 100, 4 + i % 3, 16, 5, "aiortc" if i else "warmup") for i in range(0, 50, 10)]
    samples.append(sample(40, 90.2, 4, 16, 5, "settled"))
    path = write_plot(samples, samples[0], tmp_path / "soak.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_command_line() -> None:
    args = parse_args([])
    assert (args.cycles, args.browsers, args.bots, args.publishers, args.tolerance) == (1000, 0, 4, 2, 0.05)
    assert parse_args(["--browsers", "50", "--browser-query", "simulcast=0"]).browser_query == ["simulcast=0"]
    for bad in (["--cycles", "0"], ["--publishers", "4"], ["--sample-every", "0"], ["--browser-query", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
