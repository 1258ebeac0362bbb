"""Step benchmark, side by side: our SFU and Janus VideoRoom under the same bots.

    python -m loadtest.bench_step --steps 10,25,50,100 --window 10 --repeat 3

For each server (``--servers sfu,janus``) the script starts the server itself on
127.0.0.1, pinned to the first allowed CPU (bots on the others), publishes one
pre-encoded VP8 640x480 ~1.1 Mbit/s + Opus stream from this process, then steps the
number of counting subscribers up (``--steps``), spread over worker processes. At each
step, after ``--warmup`` seconds, it measures over ``--window`` seconds:

* forwarded packets/s: RTP packets the subscribers received;
* server CPU (user + system of its process, ``psutil``) per forwarded packet, µs;
* subscriber loss from RTP sequence numbers, and forwarding latency p50/p95/p99 of
  video frames (publisher send to subscriber arrival, same machine clock; see
  :mod:`loadtest.latency`);
* server memory: (RSS at the step - RSS before the publisher) / participants;
* the bots' CPU per subscriber (the worker processes' CPU / subscribers), % of a core.

It stops stepping a server once loss exceeds 5 % or p99 latency 1 s (overloaded), or
when the subscribers of a step cannot all join and receive in time.
Then it prints, per server, the table and the figures: CPU µs per forwarded packet,
forwarded packets/s, the largest subscriber count with < 0.5 % loss and p99 < 50 ms,
memory per participant; and the SFU / Janus ratio of CPU per forwarded packet at each
step, from the same run. With ``--repeat K`` the servers alternate K times and the
medians are printed.

Janus runs from a temp config (:class:`loadtest.janus.JanusProcess`: VideoRoom and
HTTP only, loopback only) with ``event_loops = 1`` by default: one event-loop thread,
like the SFU's one event loop on its one core (``--janus-event-loops 0`` is Janus's
own default of one thread per PeerConnection, which on one shared core lost packets
from ~100 subscribers on while using half the core). Every process started here is ended by its pid; every
wait is bounded.
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
import shutil
import statistics
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop

from loadtest.benchutil import Worker, start_py_spy, stop_workers
from loadtest.client import RoomClient
from loadtest.janus import (
    JanusProcess,
    JanusPublisher,
    JanusSession,
    JanusSubscriber,
    create_room,
)
from loadtest.latency import (
    FrameArrivalCounter,
    FrameSendLog,
    TimedVideoTrack,
    clip_fingerprints,
)
from loadtest.media import (
    EncodedClip,
    PreEncodedAudioTrack,
    encode_opus_clip,
    encode_vp8_clip,
)
from loadtest.runner import percentiles
from loadtest.server import ServerProcess

ROOM = "bench"
JANUS_ROOM = 1234
PER_WORKER = 25  # subscribers per worker process
JOIN_CONCURRENCY = 4  # subscribers joining at once, per worker
MIB = 1024 * 1024
LOSS_OK = 0.005  # "carried" means loss below this fraction ...
P99_OK_MS = 50.0  # ... and p99 latency below this
LOSS_STOP = 0.05  # stop stepping a server past this loss ...
P99_STOP_MS = 1000.0  # ... or this p99 latency


# ------------------------------------------------------------------ worker side


@dataclass(slots=True)
class SubTotals:
    """One subscriber's cumulative counters (summed over its streams)."""

    packets: int = 0
    bytes: int = 0
    expected: int = 0
    lost: int = 0


def _totals(counter: FrameArrivalCounter) -> SubTotals:
    totals = SubTotals()
    for stats in counter.snapshot():
        totals.packets += stats.packets
        totals.bytes += stats.bytes
        totals.expected += stats.expected
        totals.lost += stats.lost
    return totals


def _receiving_both(counter: FrameArrivalCounter) -> bool:
    kinds = {s.kind for s in counter.snapshot() if s.packets}
    return {"audio", "video"} <= kinds


async def _worker_main(backend: str, url: str, feed: int, names: list[str], prefix: int,
                       fingerprints: dict[bytes, int], ready_timeout: float,
                       conn: multiprocessing.connection.Connection) -> None:
    """Join ``names`` as counting subscribers of ``backend`` (``sfu`` or ``janus``),
    reply ``ready``, then answer ``snap`` with (totals per subscriber, frame arrivals)
    until ``stop`` or the pipe closes."""
    counters = [FrameArrivalCounter(prefix, fingerprints) for _ in names]
    gate = asyncio.Semaphore(JOIN_CONCURRENCY)
    closers: list[Any] = []
    session: JanusSession | None = None

    async def wait_receiving(counter: FrameArrivalCounter) -> None:
        async with asyncio.timeout(ready_timeout):
            while not _receiving_both(counter):
                await asyncio.sleep(0.1)

    async def start_sfu(name: str, counter: FrameArrivalCounter) -> None:
        async with gate:
            client = RoomClient(url, count_rtp=counter, request_timeout=ready_timeout)
            closers.append(client.leave)
            await client.join(ROOM, name)
            await wait_receiving(counter)

    async def start_janus(counter: FrameArrivalCounter) -> None:
        assert session is not None
        async with gate:
            subscriber = JanusSubscriber(session, JANUS_ROOM, counter)
            closers.append(subscriber.close)
            await subscriber.subscribe(feed, timeout=ready_timeout)
            await wait_receiving(counter)

    try:
        try:
            async with asyncio.timeout(ready_timeout):
                if backend.startswith("sfu"):
                    await asyncio.gather(*(start_sfu(n, c) for n, c in zip(names, counters, strict=True)))
                else:
                    session = JanusSession(url)
                    await session.create()
                    await asyncio.gather(*(start_janus(c) for c in counters))
        except Exception as exc:  # report any failure to the parent, then clean up
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", len(names)))
        while True:
            try:
                command = await asyncio.to_thread(conn.recv)
            except EOFError:
                return
            if command != "snap":
                return
            arrivals = array("d")
            for counter in counters:
                arrivals.extend(counter.drain())
            conn.send(("snap", time.monotonic(), [dataclasses.astuple(_totals(c)) for c in counters],
                       arrivals.tobytes()))
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await asyncio.gather(*(close() for close in closers), return_exceptions=True)
                if session is not None:
                    await session.destroy()


def _worker(*args: Any) -> None:
    """Process entry point of a subscriber worker (uvloop)."""
    uvloop.run(_worker_main(*args))


# ------------------------------------------------------------------ parent side


@dataclass(slots=True)
class Step:
    """The figures of one step (one server, one subscriber count)."""

    server: str
    subscribers: int
    window_s: float
    forwarded_pps: float
    server_cpu_share: float
    us_per_packet: float
    us_per_packet_user: float
    us_per_packet_system: float
    loss: float
    latency_ms: tuple[float, float, float] | None
    rss_bytes: int
    mem_per_participant: float
    bots_cpu_per_subscriber: float
    subscriber_bps: float

    @property
    def carried(self) -> bool:
        """Loss < 0.5 % and p99 latency < 50 ms."""
        return self.loss < LOSS_OK and self.latency_ms is not None and self.latency_ms[2] < P99_OK_MS

    @property
    def overloaded(self) -> bool:
        return self.loss > LOSS_STOP or self.latency_ms is None or self.latency_ms[2] > P99_STOP_MS


@dataclass(slots=True)
class _Snap:
    wall: float
    server_user: float
    server_system: float
    bots_cpu: float
    subs: list[tuple[float, SubTotals]]


class ServerRun:
    """One server's steps: start it, publish, add subscribers step by step, measure."""

    def __init__(self, server: str, args: argparse.Namespace, workdir: Path,
                 video: EncodedClip, audio: EncodedClip) -> None:
        self.server = server
        self.args = args
        self.workdir = workdir
        self.video = video
        self.audio = audio
        allowed = sorted(os.sched_getaffinity(0))
        self.pinned = not args.no_pin and len(allowed) >= 2
        self.server_cpus = {allowed[0]} if self.pinned else set(allowed)
        self.bot_cpus = set(allowed[1:]) if self.pinned else set(allowed)
        self.workers: list[Worker] = []
        self.closers: list[Any] = []
        self.log = FrameSendLog(video, history=True)
        self.prefix, self.fingerprints = clip_fingerprints(video)
        self.sfu: ServerProcess | None = None
        self.janus: JanusProcess | None = None
        self.session: JanusSession | None = None
        self.url = ""
        self.feed = 0
        self.subscribers = 0

    async def start(self) -> None:
        """Start the server and the publisher."""
        cpus = self.server_cpus if self.pinned else None
        if self.server.startswith("sfu"):
            extra = ["--max-participants", str(max(self.args.steps) + 1), *self.args.server_arg]
            saved = os.environ.get("SFU_BATCH")
            if self.server == "sfu-python":  # the pure-Python packet path (sfu/rtc/batch.py)
                os.environ["SFU_BATCH"] = "0"
            try:
                self.sfu = ServerProcess(self.workdir / f"{self.server}.log", extra, cpus=cpus)
            finally:
                if saved is None:
                    os.environ.pop("SFU_BATCH", None)
                else:
                    os.environ["SFU_BATCH"] = saved
            await asyncio.to_thread(self.sfu.wait_healthy, 30.0)
            self.pid, self.url = self.sfu.pid, self.sfu.ws_url
        else:
            self.janus = JanusProcess(cpus=cpus, keep=self.args.keep, event_loops=self.args.janus_event_loops)
            await asyncio.to_thread(self.janus.wait_ready, 30.0)
            self.pid, self.url = self.janus.pid, self.janus.url
        self.ps = psutil.Process(self.pid)
        os.sched_setaffinity(0, self.bot_cpus)
        await asyncio.sleep(1.0)
        self.rss_idle = self.ps.memory_info().rss
        tracks = [TimedVideoTrack(self.video, self.log), PreEncodedAudioTrack(self.audio)]
        if self.server.startswith("sfu"):
            publisher = RoomClient(self.url, auto_subscribe=False)
            self.closers.append(publisher.close)
            await publisher.join(ROOM, "publisher")
            await publisher.publish(tracks)
            await publisher.wait_connected(15)
        else:
            self.session = JanusSession(self.url)
            await self.session.create()
            await create_room(self.session, JANUS_ROOM, publishers=4)
            janus_publisher = JanusPublisher(self.session, JANUS_ROOM)
            self.closers.append(janus_publisher.close)
            await janus_publisher.publish(tracks)
            assert janus_publisher.feed_id is not None
            self.feed = janus_publisher.feed_id

    async def grow(self, target: int) -> None:
        """Add worker processes until ``target`` subscribers receive audio and video.

        Raises:
            RuntimeError: a worker failed to join or receive.
        """
        context = multiprocessing.get_context("spawn")
        added: list[Worker] = []
        timeout = 30.0 + 1.0 * (target - self.subscribers)
        while self.subscribers < target:
            count = min(PER_WORKER, target - self.subscribers)
            names = [f"sub-{i}" for i in range(self.subscribers, self.subscribers + count)]
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker, name=f"bench-{self.server}-{len(self.workers)}",
                args=(self.server, self.url, self.feed, names, self.prefix, self.fingerprints, timeout, child),
            )
            proc.start()
            child.close()
            self.workers.append((proc, parent))
            added.append((proc, parent))
            self.subscribers += count
        replies = await asyncio.gather(*(self._ask(conn, timeout + 10) for _, conn in added))
        failures = [r[1] for r in replies if r[0] != "ready"]
        if failures:
            raise RuntimeError(f"{self.server}: subscriber workers failed: {failures[:3]}")

    async def _ask(self, conn: multiprocessing.connection.Connection, timeout: float) -> tuple[Any, ...]:
        if not await asyncio.to_thread(conn.poll, timeout):
            raise TimeoutError("a worker did not answer in time")
        return conn.recv()

    def _bots_cpu(self) -> float:
        total = 0.0
        for proc, _ in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(psutil.Process(proc.pid).cpu_times()[:2])
        return total

    async def snapshot(self, latencies: list[float] | None) -> _Snap:
        """Counters now; the frame arrivals since the last snapshot become latencies
        (appended to ``latencies`` unless None)."""
        for _, conn in self.workers:
            conn.send("snap")
        cpu = self.ps.cpu_times()
        wall = time.monotonic()
        bots = self._bots_cpu()
        replies = await asyncio.gather(*(self._ask(conn, 20) for _, conn in self.workers))
        subs: list[tuple[float, SubTotals]] = []
        for _, at, totals, raw in replies:
            subs.extend((at, SubTotals(*t)) for t in totals)
            if latencies is not None:
                arrivals = array("d")
                arrivals.frombytes(raw)
                for i in range(0, len(arrivals), 2):
                    latency = self.log.latency_ms(int(arrivals[i + 1]), arrivals[i])
                    if latency is not None:
                        latencies.append(latency)
        return _Snap(wall, cpu.user, cpu.system, bots, subs)

    async def measure(self, profile: bool) -> Step:
        """Warm up, then measure one window at the current subscriber count."""
        args = self.args
        await asyncio.sleep(args.warmup)
        first = await self.snapshot(None)
        spy = None
        if profile and self.server.startswith("sfu"):
            spy = start_py_spy(self.pid, args.window, self.workdir / f"{self.server}-{self.subscribers}.pyspy.txt")
        latencies: list[float] = []
        deadline = time.monotonic() + args.window
        while time.monotonic() < deadline:  # drain arrivals every 2 s (bounded memory)
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            last = await self.snapshot(latencies)
        rss = self.ps.memory_info().rss
        if spy is not None:
            await asyncio.to_thread(spy.wait, args.window + 30)
        window = last.wall - first.wall
        pairs = list(zip(first.subs, last.subs, strict=True))
        rates = [(b.packets - a.packets) / (tb - ta) for (ta, a), (tb, b) in pairs]
        bitrates = [(b.bytes - a.bytes) * 8 / (tb - ta) for (ta, a), (tb, b) in pairs]
        forwarded_pps = sum(rates)
        packets = forwarded_pps * window
        expected = sum(b.expected - a.expected for (_, a), (_, b) in pairs)
        lost = sum(b.lost - a.lost for (_, a), (_, b) in pairs)
        user, system = last.server_user - first.server_user, last.server_system - first.server_system
        n = self.subscribers
        return Step(
            server=self.server,
            subscribers=n,
            window_s=window,
            forwarded_pps=forwarded_pps,
            server_cpu_share=(user + system) / window,
            us_per_packet=1e6 * (user + system) / packets if packets else math.nan,
            us_per_packet_user=1e6 * user / packets if packets else math.nan,
            us_per_packet_system=1e6 * system / packets if packets else math.nan,
            loss=max(0, lost) / expected if expected > 0 else 1.0,
            latency_ms=percentiles(latencies),  # type: ignore[arg-type]
            rss_bytes=rss,
            mem_per_participant=(rss - self.rss_idle) / (n + 1),
            bots_cpu_per_subscriber=(last.bots_cpu - first.bots_cpu) / window / n,
            subscriber_bps=sum(bitrates) / len(bitrates),
        )

    async def close(self) -> None:
        """Stop workers, publisher, session and server (by pid)."""
        await stop_workers(self.workers)
        for close in self.closers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await close()
        if self.session is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self.session.destroy()
        if self.sfu is not None:
            self.sfu.stop()
        if self.janus is not None:
            self.janus.stop()

    def log_tail(self) -> str:
        if self.sfu is not None:
            return self.sfu.log_tail()
        return self.janus.log_tail() if self.janus is not None else ""


async def run_server(server: str, args: argparse.Namespace, workdir: Path, video: EncodedClip,
                     audio: EncodedClip) -> list[Step]:
    """All steps on one server (bounded by a deadline); stops early when overloaded."""
    run = ServerRun(server, args, workdir, video, audio)
    steps: list[Step] = []
    limit = 120 + sum(50 + 1.0 * n + args.warmup + args.window for n in args.steps)
    try:
        async with asyncio.timeout(limit):
            await run.start()
            for i, n in enumerate(args.steps):
                try:
                    await run.grow(n)
                except (RuntimeError, TimeoutError) as exc:  # joins failed: the server (or machine) is full
                    print(f"  {server}: could not grow to {n} subscribers ({exc}); stopping", file=sys.stderr)
                    break
                step = await run.measure(profile=args.profile and i == len(args.steps) - 1)
                steps.append(step)
                print(f"  {server}: {_row(step)}", file=sys.stderr, flush=True)
                if step.overloaded:
                    print(f"  {server}: overloaded at {n} subscribers; stopping", file=sys.stderr)
                    break
    except BaseException:
        print(f"{server} log tail:\n{run.log_tail()}", file=sys.stderr)
        raise
    finally:
        await run.close()
    return steps


# ------------------------------------------------------------------ reporting

HEADER = (f"{'subs':>5} {'fwd pkt/s':>10} {'server CPU':>10} {'µs/pkt':>7} {'(usr+sys)':>12} "
          f"{'loss':>7} {'lat p50/p95/p99 ms':>20} {'MiB/part':>8} {'bot CPU/sub':>11}")


def _row(s: Step) -> str:
    lat = "/".join(f"{v:.1f}" for v in s.latency_ms) if s.latency_ms else "-"
    return (f"{s.subscribers:>5} {s.forwarded_pps:>10,.0f} {100 * s.server_cpu_share:>9.1f}% {s.us_per_packet:>7.1f} "
            f"{f'{s.us_per_packet_user:.1f}+{s.us_per_packet_system:.1f}':>12} {100 * s.loss:>6.2f}% {lat:>20} "
            f"{s.mem_per_participant / MIB:>8.2f} {100 * s.bots_cpu_per_subscriber:>10.2f}%")


def _median_step(steps: list[Step]) -> Step:
    """The per-field median of repeated runs of one step."""
    def med(name: str) -> float:
        return statistics.median(getattr(s, name) for s in steps)
    lat = [s.latency_ms for s in steps if s.latency_ms]
    return Step(
        server=steps[0].server, subscribers=steps[0].subscribers, window_s=med("window_s"),
        forwarded_pps=med("forwarded_pps"), server_cpu_share=med("server_cpu_share"),
        us_per_packet=med("us_per_packet"), us_per_packet_user=med("us_per_packet_user"),
        us_per_packet_system=med("us_per_packet_system"), loss=med("loss"),
        latency_ms=tuple(statistics.median(x[i] for x in lat) for i in range(3)) if lat else None,  # type: ignore[arg-type]
        rss_bytes=int(med("rss_bytes")), mem_per_participant=med("mem_per_participant"),
        bots_cpu_per_subscriber=med("bots_cpu_per_subscriber"), subscriber_bps=med("subscriber_bps"),
    )


def medians(runs: list[list[Step]]) -> list[Step]:
    """Per subscriber count, the median over the runs that reached it."""
    by_n: dict[int, list[Step]] = {}
    for steps in runs:
        for step in steps:
            by_n.setdefault(step.subscribers, []).append(step)
    return [_median_step(v) for _, v in sorted(by_n.items())]


def summary(server: str, steps: list[Step]) -> list[str]:
    """The figures of one server (from its median steps)."""
    if not steps:
        return [f"{server}: no step completed"]
    carried = [s.subscribers for s in steps if s.carried]
    best = max(steps, key=lambda s: s.forwarded_pps)
    # The per-packet and memory figures at the largest step that was not overloaded.
    top = max((s for s in steps if not s.overloaded), key=lambda s: s.subscribers, default=steps[-1])
    return [
        f"{server}: CPU per forwarded packet {top.us_per_packet:.1f} µs at {top.subscribers} subscribers "
        f"(user {top.us_per_packet_user:.1f}, system {top.us_per_packet_system:.1f}); "
        f"{best.forwarded_pps:,.0f} forwarded packets/s at {100 * best.server_cpu_share:.0f} % of a core "
        f"(~{best.forwarded_pps / max(1e-9, best.server_cpu_share):,.0f} packets/s per core)",
        f"{server}: largest subscriber count with < {100 * LOSS_OK:g} % loss and p99 < {P99_OK_MS:g} ms: "
        f"{max(carried) if carried else 'none'} (of the steps tried, up to {steps[-1].subscribers})",
        f"{server}: memory per participant {top.mem_per_participant / MIB:.2f} MiB at {top.subscribers} subscribers; "
        f"bot CPU per subscriber at {top.subscriber_bps / 1e6:.2f} Mbit/s: {100 * top.bots_cpu_per_subscriber:.2f} % of a core",
    ]


def report(results: dict[str, list[list[Step]]], args: argparse.Namespace) -> str:
    """Tables, figures and the SFU / Janus ratio."""
    lines = []
    median_steps = {server: medians(runs) for server, runs in results.items()}
    for server, runs in results.items():
        title = f"{server}: median of {len(runs)} run(s)" if len(runs) > 1 else server
        lines += ["", title, HEADER, *(_row(s) for s in median_steps[server])]
    lines.append("")
    for server, steps in median_steps.items():
        lines += summary(server, steps)
    for sfu in (name for name in results if name.startswith("sfu")):
        if "janus" not in results:
            break
        lines += ["", f"CPU per forwarded packet, {sfu} / Janus (same run; median of the per-run ratios):",
                  f"{'subs':>5} {'SFU µs':>8} {'Janus µs':>9} {'ratio':>6}"]
        for n in args.steps:
            ratios = []
            for sfu_steps, janus_steps in zip(results[sfu], results["janus"], strict=False):
                a = next((s for s in sfu_steps if s.subscribers == n), None)
                b = next((s for s in janus_steps if s.subscribers == n), None)
                if a and b and b.us_per_packet > 0:
                    ratios.append((a.us_per_packet, b.us_per_packet, a.us_per_packet / b.us_per_packet))
            if ratios:
                lines.append(f"{n:>5} {statistics.median(r[0] for r in ratios):>8.1f} "
                             f"{statistics.median(r[1] for r in ratios):>9.1f} {statistics.median(r[2] for r in ratios):>6.2f}"
                             f"  (per run: {', '.join(f'{r[2]:.2f}' for r in ratios)})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="sfu,janus",
                   help="comma-separated: sfu (the packet path SFU_BATCH selects, batched when built), "
                        "sfu-python (SFU_BATCH=0), janus (default sfu,janus)")
    p.add_argument("--steps", default="10,25,50,100", help="subscriber counts (default 10,25,50,100)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before each window (default 3)")
    p.add_argument("--window", type=float, default=10.0, help="measurement window per step, s (default 10)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the servers this many times (medians)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and bots to separate CPUs")
    p.add_argument("--profile", action="store_true", help="py-spy the SFU during its last step")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for 'sfu serve'")
    p.add_argument("--janus-event-loops", type=int, default=1,
                   help="Janus event_loops: N = a pool of N loop threads (default 1, like the one-loop SFU on "
                        "its one core); 0 = Janus's own default, one thread per PeerConnection")
    p.add_argument("--json", type=Path, help="write every step as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, profiles, Janus config)")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.servers or set(args.servers) - {"sfu", "sfu-python", "janus"}:
        p.error("--servers takes sfu, sfu-python and/or janus")
    try:
        args.steps = sorted({int(v) for v in args.steps.split(",")})
    except ValueError:
        p.error("--steps takes comma-separated integers")
    if args.steps[0] < 1 or args.window <= 0 or args.warmup < 0 or args.repeat < 1:
        p.error("steps >= 1, window > 0, warmup >= 0, repeat >= 1")
    return args


async def _amain(args: argparse.Namespace, workdir: Path) -> dict[str, list[list[Step]]]:
    video, audio = encode_vp8_clip(), encode_opus_clip()
    results: dict[str, list[list[Step]]] = {s: [] for s in args.servers}
    for r in range(args.repeat):
        for server in args.servers:
            print(f"run {r + 1}/{args.repeat}: {server}", file=sys.stderr, flush=True)
            results[server].append(await run_server(server, args, workdir, video, audio))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench_step-"))
    try:
        results = uvloop.run(_amain(args, workdir))
    except BaseException:
        print(f"benchmark failed; logs kept in {workdir}", file=sys.stderr)
        raise
    print(f"Step benchmark: 1 publisher (VP8 640x480 ~1.1 Mbit/s 30 fps + Opus) -> N counting subscribers; "
          f"server pinned apart from the bots: {not args.no_pin}; window {args.window:g} s")
    print(report(results, args))
    if args.json:
        args.json.write_text(json.dumps({s: [[dataclasses.asdict(x) for x in run] for run in runs]
                                         for s, runs in results.items()}, indent=1))
    if args.profile:
        from loadtest.bench_forward import _print_py_spy

        for path in sorted(workdir.glob("sfu-*.pyspy.txt")):
            _print_py_spy(path)
    if args.keep or args.profile:
        print(f"work directory: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
