"""The step benchmark (``python -m loadtest.bench_step``) runs end to end against
both servers it starts itself (our SFU and Janus VideoRoom, Debian package ``janus``)
and prints the figures the issue asks for, with the SFU / Janus ratio."""

from __future__ import annotations

import re
import subprocess
import sys

from loadtest.server import REPO_ROOT


def test_step_benchmark_prints_the_figures_for_both_servers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_step", "--steps", "2,4", "--warmup", "1", "--window", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr[-3000:]}"
    for server in ("sfu", "janus"):
        cpu = re.search(rf"^{server}: CPU per forwarded packet ([\d.]+) µs at 4 subscribers.*?([\d,]+) forwarded packets/s",
                        out, re.MULTILINE)
        assert cpu, out
        assert 0 < float(cpu.group(1)) < 1000
        # 4 subscribers x ~170 packets/s (VP8 ~1.1 Mbit/s + Opus).
        assert 500 < int(cpu.group(2).replace(",", "")) < 1000, out
        # The latency criterion depends on how busy the machine is; the figure must be printed.
        carried = re.search(rf"^{server}: largest subscriber count with < 0.5 % loss and p99 < 50 ms: (\S+)", out, re.MULTILINE)
        assert carried and carried.group(1) in ("none", "2", "4"), out
        row = re.search(rf"^{server}\n(?:[^\n]*\n){{1,3}}?\s+4\s+[\d,]+\s+[\d.]+%\s+[\d.]+\s+\S+\s+([\d.]+)%", out, re.MULTILINE)
        assert row and float(row.group(1)) < 0.5, out  # no loss on loopback at 4 subscribers
        memory = re.search(rf"^{server}: memory per participant ([\d.]+) MiB", out, re.MULTILINE)
        assert memory and float(memory.group(1)) < 50, out
    ratio = re.search(r"^\s+4\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)(?:\s+\(per run: [^)]*\))?$", out, re.MULTILINE)
    assert ratio, out
    sfu_us, janus_us, ratio_value = (float(v) for v in ratio.groups())
    assert abs(ratio_value - sfu_us / janus_us) < 0.02 * ratio_value + 0.01
