"""The soak benchmark (``python -m loadtest.bench_soak``) runs end to end in a tiny
configuration: it starts its server, runs aiortc cycles that receive media and
DataChannel messages, takes the baseline and a checkpoint, and writes the table, the
CSV and the plot. The 1,000-cycle soak itself is a script (docs/BENCHMARKS.md), not a
test; whether this short run's figures pass is not asserted here."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

from loadtest.server import REPO_ROOT


def test_soak_script_runs_cycles_and_writes_its_figures(tmp_path: Path) -> None:
    csv_path, plot_path = tmp_path / "soak.csv", tmp_path / "soak.png"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_soak", "--cycles", "3", "--warmup", "1", "--sample-every", "1",
         "--settle", "1", "--bots", "3", "--publishers", "1", "--csv", str(csv_path), "--plot", str(plot_path)],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    out = result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "FAILED" not in out, out
    assert re.search(r"^aiortc: 3 of 3 cycles succeeded in ", out, re.MULTILINE), out
    rows = re.findall(r"^\| after 3 aiortc cycles \| (RSS|asyncio tasks|open fds|threads) \| .* \| (PASS|FAIL.*) \|$",
                      out, re.MULTILINE)
    assert [r[0] for r in rows[-4:]] == ["RSS", "asyncio tasks", "open fds", "threads"], out
    verdict = re.search(r"^RESULT: (PASS|FAIL)$", out, re.MULTILINE)
    assert verdict, out
    assert result.returncode == (0 if verdict.group(1) == "PASS" else 1), out
    with csv_path.open() as f:
        phases = [row["phase"] for row in csv.DictReader(f)]
    # Cold start, the warm-up cycle, the baseline, three cycles, the checkpoint.
    assert phases == ["warmup", "warmup", "settled", "aiortc", "aiortc", "aiortc", "settled"], phases
    assert plot_path.read_bytes()[:4] == b"\x89PNG"
