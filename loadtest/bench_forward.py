"""Forwarding benchmark: server CPU per forwarded RTP packet, memory per participant.

    python -m loadtest.bench_forward --subscribers 10 --duration 60
    python -m loadtest.bench_forward --subscribers 50 --duration 30 --compare-udp-port 50000 --runs 3

Starts the SFU server as a subprocess on 127.0.0.1 (pinned to the first allowed CPU),
one publisher bot (pre-encoded VP8 640x480 ~1 Mbit/s 30 fps + Opus 20 ms) and N
counting subscriber bots (no decoding: they count the decrypted RTP) in one room, all
bots pinned to the other CPUs and spread over ``--bot-procs`` worker processes. After
a warm-up it measures over a steady window:

* forwarded packets/s: packets the subscribers received (and the server's own
  ``sfu_rtp_packets_sent_total`` from ``/metrics`` when it exports it);
* server CPU (user/system, from ``psutil``) divided by the packets forwarded;
* server RSS idle and loaded, and (loaded - idle) / participants;
* subscriber loss from RTP sequence numbers (RFC 3550 §A.3).

``--udp-port P`` runs the server with every participant's media on the one UDP port P
(``sfu serve --udp-port``); ``--compare-udp-port P --runs N`` runs N pairs, each the
normal mode then the shared port, alternating in one invocation, and prints both
modes' figures per run and their medians.

Everything is bounded in time; every process started here is ended by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import pstats
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop

from loadtest.benchutil import start_py_spy, stop_workers
from loadtest.client import RoomClient
from loadtest.media import (
    PreEncodedAudioTrack,
    PreEncodedVideoTrack,
    encode_opus_clip,
    encode_vp8_clip,
)
from loadtest.server import ServerProcess, server_help

ROOM = "bench"
TRACKS_PER_PUBLISHER = 2  # one video, one audio
JOIN_CONCURRENCY = 4  # subscribers joining at once, per worker process
MIB = 1024 * 1024


# ------------------------------------------------------------------ worker side


@dataclass(slots=True)
class SubscriberTotals:
    """One subscriber's counters, summed over its streams (see ``StreamStats``), at
    ``at`` (``time.monotonic()`` seconds in the worker: the clock is system-wide)."""

    at: float = 0.0
    packets: int = 0
    bytes: int = 0
    expected: int = 0
    frames: int = 0
    keyframes: int = 0
    streams: int = 0


def _totals(client: RoomClient) -> SubscriberTotals:
    assert client.counter is not None
    totals = SubscriberTotals(at=time.monotonic())
    for stats in client.counter.snapshot():
        totals.packets += stats.packets
        totals.bytes += stats.bytes
        totals.expected += stats.expected
        totals.frames += stats.frames if stats.kind == "video" else 0
        totals.keyframes += stats.keyframes
        totals.streams += 1
    return totals


def _receiving_all(client: RoomClient, tracks: int) -> bool:
    """True when ``client`` subscribed to ``tracks`` tracks and got RTP on each."""
    if client.counter is None or len(client.subscriptions) < tracks:
        return False
    mids = {s.mid for s in client.counter.snapshot() if s.packets}
    return all(sub.mid in mids for sub in client.subscriptions.values())


async def _worker_main(
    url: str, names: list[str], tracks: int, ready_timeout: float, conn: multiprocessing.connection.Connection
) -> None:
    """Join ``names`` as counting subscribers, report ``ready``, then answer
    ``snap`` with per-subscriber totals until ``stop`` (or the pipe closes)."""
    clients = [RoomClient(url, count_rtp=True) for _ in names]
    gate = asyncio.Semaphore(JOIN_CONCURRENCY)

    async def start(client: RoomClient, name: str) -> None:
        async with gate:
            await client.join(ROOM, name)
            await client.wait_until(lambda: _receiving_all(client, tracks), timeout=ready_timeout)

    try:
        try:
            async with asyncio.timeout(ready_timeout):
                await asyncio.gather(*(start(c, n) for c, n in zip(clients, names, strict=True)))
        except Exception as exc:  # report any failure to the parent, then clean up
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", len(clients)))
        while True:
            try:
                command = await asyncio.to_thread(conn.recv)
            except EOFError:
                return
            if command == "snap":
                conn.send(("snap", [dataclasses.asdict(_totals(c)) for c in clients]))
            else:
                return
    finally:
        async with asyncio.timeout(15):
            await asyncio.gather(*(c.leave() for c in clients), return_exceptions=True)


def _worker(url: str, names: list[str], tracks: int, ready_timeout: float, conn: multiprocessing.connection.Connection) -> None:
    """Process entry point of a subscriber worker (runs on uvloop)."""
    uvloop.run(_worker_main(url, names, tracks, ready_timeout, conn))


# ------------------------------------------------------------------ parent side


@dataclass(slots=True)
class Snapshot:
    """Cumulative counters at one instant of the benchmark."""

    wall: float
    server_user: float
    server_system: float
    bots_cpu: float
    publisher_sent: int
    server_sent: float | None
    subscribers: list[SubscriberTotals]


def _server_packets_sent(http_url: str) -> float | None:
    """Sum of every ``sfu_rtp_packets_sent_total`` sample on ``/metrics``, or None
    when the server does not export it."""
    try:
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=5.0) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sfu_rtp_packets_sent_total") and not line.startswith("#")
    ]
    return sum(values) if values else None


async def _publisher_sent(client: RoomClient) -> int:
    """RTP packets the publisher's senders have sent (``outbound-rtp`` stats)."""
    total = 0
    for published in client.published.values():
        report = await published.transceiver.sender.getStats()
        total += sum(s.packetsSent for s in report.values() if s.type == "outbound-rtp")
    return total


class Bench:
    """The parent process: server, publisher, workers, snapshots."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        allowed = sorted(os.sched_getaffinity(0))
        self.pinned = not args.no_pin and len(allowed) >= 2
        self.server_cpus = {allowed[0]} if self.pinned else set(allowed)
        self.bot_cpus = set(allowed[1:]) if self.pinned else set(allowed)
        python_args: tuple[str, ...] = ()
        if args.profile == "cprofile":
            python_args = ("-m", "cProfile", "-o", str(workdir / "server.prof"))
        server_args = list(args.server_arg)
        if args.udp_port is not None:
            server_args += ["--udp-port", str(args.udp_port)]
        if "--max-participants" in server_help() and not any(a.startswith("--max-participants") for a in server_args):
            server_args += ["--max-participants", str(args.subscribers + 1)]
        self.server = ServerProcess(
            workdir / "server.log", server_args, cpus=self.server_cpus if self.pinned else None,
            python_args=python_args,
        )
        self.server_ps = psutil.Process(self.server.pid)
        self.workers: list[tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]] = []
        self.publisher: RoomClient | None = None

    def start_workers(self, url: str) -> None:
        """Spawn the subscriber worker processes (they inherit the bot CPU set)."""
        n, procs = self.args.subscribers, max(1, min(self.args.bot_procs, self.args.subscribers))
        context = multiprocessing.get_context("spawn")
        for w in range(procs):
            names = [f"sub-{i}" for i in range(w, n, procs)]
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker, args=(url, names, TRACKS_PER_PUBLISHER, self.args.ready_timeout, child),
                name=f"bench-worker-{w}",
            )
            proc.start()
            child.close()
            self.workers.append((proc, parent))

    async def _ask(self, conn: multiprocessing.connection.Connection, timeout: float) -> tuple[str, Any]:
        if not await asyncio.to_thread(conn.poll, timeout):
            raise TimeoutError("a worker did not answer in time")
        return conn.recv()

    async def wait_workers_ready(self) -> None:
        replies = await asyncio.gather(*(self._ask(c, self.args.ready_timeout + 10) for _, c in self.workers))
        failures = [detail for kind, detail in replies if kind != "ready"]
        if failures:
            raise RuntimeError(f"subscriber workers failed: {failures}")

    def _bots_cpu(self) -> float:
        """CPU seconds (user + system) of this process and the workers."""
        total = sum(os.times()[:2])
        for proc, _ in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(psutil.Process(proc.pid).cpu_times()[:2])
        return total

    async def snapshot(self) -> Snapshot:
        for _, conn in self.workers:
            conn.send("snap")
        cpu = self.server_ps.cpu_times()
        wall = time.monotonic()
        assert self.publisher is not None
        sent = await _publisher_sent(self.publisher)
        server_sent = await asyncio.to_thread(_server_packets_sent, self.server.http_url)
        bots = self._bots_cpu()
        replies = await asyncio.gather(*(self._ask(c, 10) for _, c in self.workers))
        subscribers = [SubscriberTotals(**t) for _, totals in replies for t in totals]
        return Snapshot(wall, cpu.user, cpu.system, bots, sent, server_sent, subscribers)

    async def run(self) -> dict[str, Any]:
        """The whole benchmark; returns the results (see :func:`report`)."""
        args = self.args
        await asyncio.to_thread(self.server.wait_healthy, 30.0)
        os.sched_setaffinity(0, self.bot_cpus)
        video_clip, audio_clip = encode_vp8_clip(), encode_opus_clip()
        await asyncio.sleep(1.0)
        rss_idle = self.server_ps.memory_info().rss

        self.publisher = RoomClient(self.server.ws_url, auto_subscribe=False)
        await self.publisher.join(ROOM, "publisher")
        await self.publisher.publish([PreEncodedVideoTrack(video_clip), PreEncodedAudioTrack(audio_clip)])
        self.start_workers(self.server.ws_url)
        await self.wait_workers_ready()
        await asyncio.sleep(args.warmup)

        spy = start_py_spy(self.server.pid, self.args.duration, self.workdir / "server.pyspy.txt") if args.profile == "py-spy" else None
        first = await self.snapshot()
        await asyncio.sleep(args.duration)
        last = await self.snapshot()
        rss_loaded = self.server_ps.memory_info().rss
        if spy is not None:
            spy.wait(timeout=args.duration + 30)
        return {
            "subscribers": args.subscribers,
            "participants": args.subscribers + 1,
            "window_s": last.wall - first.wall,
            "server_cpus": sorted(self.server_cpus),
            "bot_cpus": sorted(self.bot_cpus),
            "pinned": self.pinned,
            "video": f"VP8 640x480 {video_clip.bitrate / 1e6:.2f} Mbit/s 30 fps",
            "audio": f"Opus 20 ms {audio_clip.bitrate / 1e3:.0f} kbit/s",
            "rss_idle": rss_idle,
            "rss_loaded": rss_loaded,
            **_rates(first, last, len(self.bot_cpus)),
        }

    async def close(self) -> None:
        """Stop workers, publisher and server (each by its own handle / pid)."""
        await stop_workers(self.workers)
        if self.publisher is not None:
            await self.publisher.close()
        # SIGINT lets a cProfile'd server exit normally so that the profile is written.
        self.server.stop(signal.SIGINT if self.args.profile == "cprofile" else signal.SIGTERM, grace=15)


def _rates(first: Snapshot, last: Snapshot, bot_cpu_count: int) -> dict[str, Any]:
    """Rates and per-packet costs over the window between two snapshots."""
    window = last.wall - first.wall
    pairs = list(zip(first.subscribers, last.subscribers, strict=True))
    # Each subscriber's rate over its own snapshot times, so that the workers' reply
    # latency does not skew it; the server's CPU is then charged per packet at that rate.
    per_sub = [(b.packets - a.packets) / (b.at - a.at) for a, b in pairs]
    forwarded_pps = sum(per_sub)
    expected = sum(b.expected - a.expected for a, b in pairs)
    lost = max(0, expected - sum(b.packets - a.packets for a, b in pairs))
    packets = forwarded_pps * window
    user = last.server_user - first.server_user
    system = last.server_system - first.server_system
    server_sent = (
        (last.server_sent - first.server_sent) / window
        if last.server_sent is not None and first.server_sent is not None else None
    )
    return {
        "publisher_pps": (last.publisher_sent - first.publisher_sent) / window,
        "forwarded_pps": forwarded_pps,
        "server_sent_pps": server_sent,
        "subscriber_pps_min": min(per_sub),
        "subscriber_pps_max": max(per_sub),
        "lost": lost,
        "expected": expected,
        "server_cpu_share": (user + system) / window,
        "server_user_s": user,
        "server_system_s": system,
        "us_per_packet": 1e6 * (user + system) / packets if packets else math.nan,
        "us_per_packet_user": 1e6 * user / packets if packets else math.nan,
        "us_per_packet_system": 1e6 * system / packets if packets else math.nan,
        "bots_cpu_share": (last.bots_cpu - first.bots_cpu) / window / bot_cpu_count,
    }


def report(r: dict[str, Any]) -> str:
    """The results as a table for humans."""
    mem_per = (r["rss_loaded"] - r["rss_idle"]) / r["participants"]
    loss = 100.0 * r["lost"] / r["expected"] if r["expected"] else 0.0
    server_sent = f"{r['server_sent_pps']:,.0f} packets/s" if r["server_sent_pps"] is not None else "n/a (no sfu_rtp_packets_sent_total)"
    pin = f"server on CPU {r['server_cpus']}, bots on {r['bot_cpus']}" if r["pinned"] else f"not pinned (CPUs {r['server_cpus']})"
    rows = [
        ("publisher sends", f"{r['publisher_pps']:,.1f} packets/s ({r['video']} + {r['audio']})"),
        ("forwarded (subscribers received)", f"{r['forwarded_pps']:,.0f} packets/s "
         f"(per subscriber {r['subscriber_pps_min']:,.1f} to {r['subscriber_pps_max']:,.1f})"),
        ("forwarded (server's counter)", server_sent),
        ("subscriber loss", f"{loss:.3f} % ({r['lost']:,} of {r['expected']:,})"),
        ("server CPU", f"{100 * r['server_cpu_share']:.1f} % of a core "
         f"(user {100 * r['server_user_s'] / r['window_s']:.1f} %, system {100 * r['server_system_s'] / r['window_s']:.1f} %)"),
        ("server CPU per forwarded packet", f"{r['us_per_packet']:.1f} µs "
         f"(user {r['us_per_packet_user']:.1f} µs, system {r['us_per_packet_system']:.1f} µs)"),
        ("server RSS idle -> loaded", f"{r['rss_idle'] / MIB:.1f} MiB -> {r['rss_loaded'] / MIB:.1f} MiB"),
        ("memory per participant", f"{mem_per / MIB:.2f} MiB ({r['participants']} participants)"),
        ("bots CPU", f"{100 * r['bots_cpu_share']:.0f} % of {len(r['bot_cpus'])} CPU(s)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [
        f"SFU forwarding benchmark: 1 publisher -> {r['subscribers']} subscribers, "
        f"window {r['window_s']:.1f} s, {pin}",
        "-" * 78,
        *(f"{k:<{width}}  {v}" for k, v in rows),
    ]
    if r["bots_cpu_share"] > 0.85:
        lines.append("WARNING: the bots were near saturation; add CPUs or --bot-procs, or fewer subscribers")
    if r["lost"] > 0.01 * max(1, r["expected"]):
        lines.append("WARNING: more than 1 % loss: the figures describe an overloaded server")
    return "\n".join(lines)


def _print_cprofile(path: Path, top: int = 25) -> None:
    if not path.exists():
        print(f"(no cProfile output at {path}: the server did not exit cleanly)")
        return
    print(f"\ncProfile of the server (whole run), top {top} by own time; file {path}")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


def _print_py_spy(path: Path, top: int = 25) -> None:
    """Summarize py-spy's collapsed stacks: the functions with the most own samples."""
    if not path.exists():
        print(f"(no py-spy output at {path})")
        return
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])  # per function, not per line
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    print(f"\npy-spy of the server (window), top {top} functions by own samples of {total}; file {path}")
    print("(run_app's own samples are the uvloop event loop in C, waits included)")
    for leaf, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * count / total:6.1f} %  {leaf}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_forward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10, help="counting subscribers (default 10)")
    parser.add_argument("--duration", type=float, default=60.0, help="measurement window, seconds (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after all subscribers receive (default 5)")
    parser.add_argument("--bot-procs", type=int, default=0,
                        help="subscriber worker processes (default: one per 25 subscribers)")
    parser.add_argument("--ready-timeout", type=float, default=0.0,
                        help="seconds for all subscribers to join and receive (default 30 + 0.5 per subscriber)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and bots to separate CPUs")
    parser.add_argument("--profile", choices=["cprofile", "py-spy"],
                        help="profile the server: cProfile (whole run, slows it) or py-spy (window only)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for 'signaling.cli serve', e.g. --server-arg=--log-level=DEBUG "
                             "(repeatable; --max-participants defaults to subscribers + 1)")
    parser.add_argument("--udp-port", type=int, help="the server carries all media on this one UDP port (sfu serve --udp-port)")
    parser.add_argument("--compare-udp-port", type=int, metavar="P",
                        help="alternate runs without and with --udp-port P (see --runs) and compare them")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode with --compare-udp-port (default 3)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server log, profiles)")
    args = parser.parse_args(argv)
    if args.subscribers < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--subscribers must be >= 1, --duration > 0, --warmup >= 0")
    if args.compare_udp_port is not None and (args.udp_port is not None or args.profile or not 1 <= args.runs <= 20):
        parser.error("--compare-udp-port takes 1-20 --runs and neither --udp-port nor --profile")
    args.bot_procs = args.bot_procs or math.ceil(args.subscribers / 25)
    args.ready_timeout = args.ready_timeout or 30.0 + 0.5 * args.subscribers
    return args


async def _amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bench = Bench(args, workdir)
    try:
        limit = args.ready_timeout + args.warmup + args.duration + 120
        async with asyncio.timeout(limit):
            return await bench.run()
    except BaseException:
        print(f"server log tail:\n{bench.server.log_tail()}", file=sys.stderr)
        raise
    finally:
        await bench.close()


def compare_udp_port(args: argparse.Namespace) -> None:
    """``args.runs`` pairs of runs, the normal mode then ``--udp-port``, alternating;
    prints each run's CPU per forwarded packet and loss, and the medians per mode."""
    rows: list[tuple[int, str, dict[str, Any]]] = []
    for run in range(1, args.runs + 1):
        for mode, port in (("own ports", None), (f"--udp-port {args.compare_udp_port}", args.compare_udp_port)):
            one = argparse.Namespace(**{**vars(args), "udp_port": port, "compare_udp_port": None})
            workdir = Path(tempfile.mkdtemp(prefix="bench_forward-"))
            try:
                results = uvloop.run(_amain(one, workdir))
            except BaseException:
                print(f"benchmark failed; server log kept in {workdir}", file=sys.stderr)
                raise
            shutil.rmtree(workdir, ignore_errors=True)
            rows.append((run, mode, results))
            loss = 100.0 * results["lost"] / results["expected"] if results["expected"] else 0.0
            print(f"run {run} {mode:<16} {results['forwarded_pps']:8,.0f} packets/s  "
                  f"{results['us_per_packet']:5.1f} µs/packet (user {results['us_per_packet_user']:.1f}, "
                  f"system {results['us_per_packet_system']:.1f})  server CPU {100 * results['server_cpu_share']:.1f} %  "
                  f"loss {loss:.3f} %", flush=True)
            if args.json:
                print(json.dumps({"run": run, "mode": mode, **results}), flush=True)
    print()
    for mode in dict.fromkeys(m for _, m, _ in rows):
        figures = sorted(r["us_per_packet"] for _, m, r in rows if m == mode)
        print(f"{mode:<16} µs per forwarded packet: {', '.join(f'{f:.1f}' for f in figures)} "
              f"(median {statistics.median(figures):.1f})")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare_udp_port is not None:
        compare_udp_port(args)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench_forward-"))
    try:
        results = uvloop.run(_amain(args, workdir))
    except BaseException:
        print(f"benchmark failed; server log and profiles kept in {workdir}", file=sys.stderr)
        raise
    print(report(results))
    if args.json:
        print(json.dumps(results))
    if args.profile == "cprofile":
        _print_cprofile(workdir / "server.prof")
    elif args.profile == "py-spy":
        _print_py_spy(workdir / "server.pyspy.txt")
    if args.keep or args.profile:
        print(f"work directory: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
