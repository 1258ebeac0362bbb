"""``python -m loadtest.bench_workers``: the cost of the multi-worker machinery.

The same load of many rooms (``python -m loadtest`` bots: each room one VP8 + Opus
publisher and some subscribers) against ``sfu serve --workers 1`` and ``--workers 2``,
alternating, several runs each. The server (front and workers: the whole process tree)
is pinned to ``--server-cpus``, the bots to ``--bot-cpus``. Over a steady window it
measures:

* CPU per forwarded packet, µs: user + system seconds of every server process (front
  and workers, ``psutil``) divided by the RTP packets the server sent
  (``sfu_rtp_packets_sent_total``, summed over the workers);
* the spread of rooms and forwarded packets/s over the workers (the front's
  ``/healthz``);
* join time p50/p95 (the load test's report: WebSocket open to media flowing);
* a projection, from the per-worker figures, of a 16-core machine and of 4 such nodes.

Prints one line per run and a summary; ``--json FILE`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .runner import metric_sum
from .server import REPO_ROOT, ServerProcess

__all__ = ["main", "run_once"]


def _tree_cpu(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of ``pid`` itself and of its live children."""
    own = children = 0.0
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        own = times.user + times.system
        for proc in root.children(recursive=True):
            try:
                times = proc.cpu_times()
                children += times.user + times.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return own, children


def _health(server: ServerProcess) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as response:
        return json.loads(response.read())


def run_once(workers: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """One run: start the server with ``workers``, run the bots, measure the window."""
    server = ServerProcess(
        log_dir / f"server-w{workers}-{time.monotonic_ns()}.log",
        ("--workers", str(workers), "--max-participants", "100", "--no-transport-cc", "--log-level", "WARNING"),
        cpus=set(args.server_cpus),
    )
    report_path = log_dir / f"report-w{workers}-{time.monotonic_ns()}.json"
    bots: subprocess.Popen[bytes] | None = None
    try:
        server.wait_healthy(60)
        bots = subprocess.Popen(
            ["taskset", "-c", ",".join(map(str, args.bot_cpus)), sys.executable, "-m", "loadtest",
             "--url", server.ws_url, "--rooms", str(args.rooms), "--video-publishers", "1",
             "--subscribers", str(args.subscribers), "--join-rate", str(args.join_rate),
             "--duration", str(args.warmup + args.window + 2), "--progress", "none", "--no-server-metrics",
             "--json", str(report_path)],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        bot_count = args.rooms * (1 + args.subscribers)
        time.sleep(bot_count / args.join_rate + args.warmup)
        cpu0, sent0, t0 = _tree_cpu(server.pid), metric_sum(server.metrics(), "sfu_rtp_packets_sent_total") or 0.0, time.monotonic()
        time.sleep(args.window / 2)
        health = _health(server)
        time.sleep(args.window / 2)
        cpu1, sent1, t1 = _tree_cpu(server.pid), metric_sum(server.metrics(), "sfu_rtp_packets_sent_total") or 0.0, time.monotonic()
        bots.wait(timeout=args.warmup + args.window + 120)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    finally:
        if bots is not None and bots.poll() is None:
            bots.kill()
            bots.wait()
        server.stop()
    packets = sent1 - sent0
    cpu = sum(cpu1) - sum(cpu0)
    # With workers, the root process is the front: its CPU is the machinery's own cost.
    front = cpu1[0] - cpu0[0] if workers > 1 else 0.0
    joins = report.get("joins", {})
    return {
        "workers": workers,
        "packets_per_s": packets / (t1 - t0),
        "cpu_us_per_packet": cpu / packets * 1e6 if packets else None,
        "cpu_cores": cpu / (t1 - t0),
        "front_us_per_packet": front / packets * 1e6 if packets else None,
        "rooms_per_worker": [w["rooms"] for w in health.get("workers", [])],
        "packets_per_s_per_worker": [w["packetsPerSecond"] for w in health.get("workers", [])],
        "join_ms": joins.get("join_ms"),
        "joined": joins.get("ok"),
        "bots": args.rooms * (1 + args.subscribers),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rooms", type=int, default=8)
    parser.add_argument("--subscribers", type=int, default=3, help="per room")
    parser.add_argument("--join-rate", type=float, default=8.0, help="bots per second")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds after the last join before measuring")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--runs", type=int, default=3, help="runs of each configuration, alternating")
    parser.add_argument("--server-cpus", type=int, nargs="+", default=[1])
    parser.add_argument("--bot-cpus", type=int, nargs="+", default=[0])
    parser.add_argument("--json", help="write every run and the summary here")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for i in range(args.runs):
            for workers in (1, 2) if i % 2 == 0 else (2, 1):
                result = run_once(workers, args, Path(tmp))
                runs.append(result)
                join = result["join_ms"] or {}
                print(f"workers={workers}: {result['packets_per_s']:.0f} packets/s, "
                      f"{result['cpu_us_per_packet']:.1f} µs CPU per forwarded packet "
                      f"(front {result['front_us_per_packet']:.2f}), "
                      f"rooms per worker {result['rooms_per_worker']}, packets/s per worker "
                      f"{[round(p) for p in result['packets_per_s_per_worker']]}, joins {result['joined']}/{result['bots']} "
                      f"p50 {join.get('p50')} ms p95 {join.get('p95')} ms", flush=True)
    summary: dict[str, Any] = {}
    for workers in (1, 2):
        mine = [r for r in runs if r["workers"] == workers and r["cpu_us_per_packet"]]
        summary[f"workers_{workers}"] = {
            "cpu_us_per_packet_median": statistics.median(r["cpu_us_per_packet"] for r in mine),
            "packets_per_s_median": statistics.median(r["packets_per_s"] for r in mine),
            "front_us_per_packet_median": statistics.median(r["front_us_per_packet"] for r in mine),
            "join_p50_ms_median": statistics.median((r["join_ms"] or {}).get("p50", 0) for r in mine),
            "join_p95_ms_median": statistics.median((r["join_ms"] or {}).get("p95", 0) for r in mine),
        }
    one, two = summary["workers_1"], summary["workers_2"]
    overhead = two["cpu_us_per_packet_median"] / one["cpu_us_per_packet_median"] - 1
    per_core = 1e6 / two["cpu_us_per_packet_median"]  # forwarded packets/s one core sustains at this cost
    summary["overhead"] = overhead
    summary["projection"] = {
        "packets_per_s_per_core": per_core,
        "machine_16_cores_packets_per_s": 16 * per_core,
        "nodes_4x16_packets_per_s": 4 * 16 * per_core,
    }
    print(f"median CPU per forwarded packet: workers=1 {one['cpu_us_per_packet_median']:.1f} µs, "
          f"workers=2 {two['cpu_us_per_packet_median']:.1f} µs ({overhead * 100:+.1f} %), of which the front "
          f"{two['front_us_per_packet_median']:.2f} µs "
          f"({two['front_us_per_packet_median'] / one['cpu_us_per_packet_median'] * 100:.1f} % of one worker's cost)")
    print(f"projection at {two['cpu_us_per_packet_median']:.1f} µs/packet: {per_core:,.0f} packets/s per core, "
          f"{16 * per_core:,.0f} on 16 cores, {64 * per_core:,.0f} on 4 such nodes")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
