"""Soak benchmark: many join/publish/subscribe/leave cycles against one server, and
whether its resources come back to where they started.

    python -m loadtest.bench_soak --cycles 1000 --browsers 50 --plot docs/soak.png

Starts one SFU server (``signaling.cli serve`` on 127.0.0.1, :class:`ServerProcess`) and
runs, one after the other:

* **aiortc cycles** (``--cycles``, default 1,000): ``--bots`` bots (default 4) join a
  new room with a reliable ``chat`` DataChannel, ``--publishers`` of them (default 2)
  publish a pre-encoded VP8 clip and Opus, the others subscribe to every published
  track and must receive RTP on each (audio and video, counted without decoding), each
  publisher sends one DataChannel message that every other bot must receive, then all
  leave: on even cycles every bot sends ``leave``, on odd cycles the last bot just
  drops its WebSocket and PeerConnection (the server must notice and clean up).
* **Chromium cycles** (``--browsers``, default 0): two pages of the demo page (real
  headless Chromium, ``/usr/bin/chromium``, fake camera and microphone, one browser
  context per cycle in one Chromium process) join a new room, each must decode the
  other's video and receive its audio, one sends a chat message the other must show;
  then one presses Leave and the other's context is closed (a dropped tab).

Resources of the server process sampled every ``--sample-every`` cycles: resident
memory (``process_resident_memory_bytes``), asyncio tasks (``sfu_asyncio_tasks``), open
file descriptors (``process_open_fds``), all from ``/metrics``, and OS threads
(``psutil``, ``num_threads``). The **baseline** is taken after warm-up cycles
(``--warmup`` aiortc cycles, default 20, and ``--browser-warmup`` Chromium cycles,
default 5), so that what a server fills once and keeps counts in it: lazily imported
modules, codec and SDP tables, and the allocators' working set (glibc's heap and
CPython's arenas grow over the first ~10-20 cycles and are then reused;
docs/BENCHMARKS.md shows the step). With ``--browsers``, the demo page's files are also
fetched 16 at a time before the baseline: aiohttp serves them through asyncio's default
thread pool, which keeps every thread it ever started (:meth:`Soak.warm_static_files`).

Every checkpoint (after each phase, and every ``--checkpoint-every`` cycles) is taken
the same way as the baseline: wait until the server reports no room, participant or WebSocket, have it run a
full garbage collection (SIGUSR1 to its pid, see :data:`SERVER_CODE`; off with
``--no-server-gc``), wait ``--settle`` seconds, collect again, sample. A checkpoint
passes when each resource is at most ``--tolerance`` (default 5 %) above the baseline (a
fall is reported but is not a leak). A least-squares trend over the settled samples (per
1,000 cycles) tells a steady rise from a one-off step.

Output: a table with PASS/FAIL per resource and checkpoint, a CSV of every sample and a
PNG plot of the four resources over the run (``--csv``, ``--plot``; default in a new
temp directory). Exit status 0 when every check passed and every cycle succeeded.

Every wait is bounded (``--cycle-timeout`` per cycle, ``--max-minutes`` for the whole
run); Ctrl-C stops after the current cycle and still takes the checkpoint (a second
Ctrl-C aborts). The server is ended by its pid (:meth:`ServerProcess.stop`), Chromium by
its own process group, bots are closed. The server and the bots use only 127.0.0.1;
Chromium also offers host candidates of the machine's other interfaces (as in the
browser tests), which the server's connectivity checks answer on this host.

Units: times are seconds, memory bytes (MiB in the table), unless a name says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

from loadtest.client import RoomClient
from loadtest.data import ChannelSpec
from loadtest.media import (
    EncodedClip,
    PreEncodedAudioTrack,
    PreEncodedVideoTrack,
    encode_opus_clip,
    encode_vp8_clip,
)
from loadtest.server import REPO_ROOT, ServerProcess

__all__ = [
    "RESOURCES",
    "Check",
    "Sample",
    "compare",
    "format_checks",
    "main",
    "parse_args",
    "slope_per_1000",
    "write_csv",
    "write_plot",
]

MIB = 1024 * 1024
CHAT = ChannelSpec("chat")  # reliable, ordered: the demo page's chat channel too
# The resources judged against the baseline: (Sample field, label, unit scale, unit).
RESOURCES: tuple[tuple[str, str, float, str], ...] = (
    ("rss_bytes", "RSS", MIB, "MiB"),
    ("tasks", "asyncio tasks", 1, ""),
    ("fds", "open fds", 1, ""),
    ("threads", "threads", 1, ""),
)
IDLE_TIMEOUT = 60.0  # seconds for the server to report no room/participant/WebSocket
BROWSER_MEDIA_TIMEOUT = 30.0  # seconds for a page to decode the other's video
GC_WAIT = 2.0  # seconds from asking the server for a garbage collection to sampling
# The server under the soak: ``python -c SERVER_CODE -m signaling.cli serve ...`` runs
# ``signaling.cli`` as ``-m`` would (it sees ``serve ...``), with a SIGUSR1 handler that
# runs a full garbage collection in the server's main thread and logs what it freed. The
# soak asks for one before each checkpoint, so that a comparison does not depend on when
# the interpreter last ran a full collection by itself: aiortc's objects form reference
# cycles, so a participant's memory goes back to the allocator only in such a collection.
# Nothing else is imported, so the server's memory and threads are those of a plain one.
SERVER_CODE = """
import gc, runpy, signal, sys
def _collect(signum, frame):
    print(f"bench_soak: gc.collect() freed {gc.collect()} unreachable objects", file=sys.stderr, flush=True)
signal.signal(signal.SIGUSR1, _collect)
sys.argv = ["signaling.cli", *sys.argv[3:]]
runpy.run_module("signaling.cli", run_name="__main__", alter_sys=True)
"""


# ------------------------------------------------------------------ pure parts


@dataclass(slots=True)
class Sample:
    """The server's resources at one moment of the run.

    Attributes:
        t: seconds since the run started.
        phase: ``warmup``, ``aiortc``, ``chromium`` or ``settled`` (a checkpoint).
        cycle: cycles completed so far, all phases (warm-up included).
        rss_bytes: resident memory, bytes.
        tasks: unfinished asyncio tasks (``sfu_asyncio_tasks``, the scrape's included).
        fds: open file descriptors (``process_open_fds``, the scrape's socket included).
        threads: OS threads of the server process.
        participants, rooms, websockets: the server's gauges at that moment.
        gc_gen2: the server's full (generation 2) garbage collections so far.
    """

    t: float
    phase: str
    cycle: int
    rss_bytes: float
    tasks: float
    fds: float
    threads: float
    participants: float = 0.0
    rooms: float = 0.0
    websockets: float = 0.0
    gc_gen2: float = 0.0


@dataclass(frozen=True, slots=True)
class Check:
    """One resource at a checkpoint against the baseline.

    Attributes:
        checkpoint: the checkpoint's name (e.g. ``after 1000 aiortc cycles``).
        resource: the :class:`Sample` field (``rss_bytes``, ``tasks``, ``fds``, ``threads``).
        baseline, value: the resource at the baseline and at the checkpoint (its unit).
        tolerance: the allowed rise as a fraction of the baseline (0.05 = 5 %).
    """

    checkpoint: str
    resource: str
    baseline: float
    value: float
    tolerance: float

    @property
    def change(self) -> float:
        """(value - baseline) / baseline, a fraction (``inf`` for a rise from 0)."""
        if self.baseline == 0:
            return 0.0 if self.value == 0 else math.inf
        return (self.value - self.baseline) / self.baseline

    @property
    def passed(self) -> bool:
        """True when the value is at most ``tolerance`` above the baseline (a value
        below the baseline is not a leak, and passes)."""
        return self.value <= self.baseline * (1 + self.tolerance)


def compare(checkpoint: str, baseline: Sample, sample: Sample, tolerance: float = 0.05) -> list[Check]:
    """One :class:`Check` per resource of :data:`RESOURCES`, ``sample`` against
    ``baseline``; ``tolerance`` is a fraction (0.05 = 5 %)."""
    return [
        Check(checkpoint, name, getattr(baseline, name), getattr(sample, name), tolerance)
        for name, _, _, _ in RESOURCES
    ]


def format_checks(checks: Sequence[Check]) -> str:
    """A Markdown table of ``checks``: checkpoint, resource, baseline, value, change
    and PASS/FAIL (memory in MiB)."""
    units = {name: (label, scale, unit) for name, label, scale, unit in RESOURCES}
    lines = ["| checkpoint | resource | baseline | value | change | within tolerance |", "|---|---|---|---|---|---|"]
    for check in checks:
        label, scale, unit = units[check.resource]
        digits = 1 if scale != 1 else 0
        suffix = f" {unit}" if unit else ""
        base = f"{check.baseline / scale:,.{digits}f}{suffix}"
        value = f"{check.value / scale:,.{digits}f}{suffix}"
        change = "+inf" if math.isinf(check.change) else f"{100 * check.change:+.1f} %"
        verdict = "PASS" if check.passed else f"FAIL (> +{100 * check.tolerance:g} %)"
        lines.append(f"| {check.checkpoint} | {label} | {base} | {value} | {change} | {verdict} |")
    return "\n".join(lines)


def slope_per_1000(samples: Sequence[Sample], resource: str) -> float | None:
    """Least-squares slope of ``resource`` over the cycles of ``samples``, in the
    resource's unit per 1,000 cycles; None with fewer than 3 samples or one cycle count.

    Fed the settled checkpoints, it tells a leak (a steady rise per cycle) from a
    one-off step (a cache or the allocator's high-water mark).
    """
    points = [(float(s.cycle), float(getattr(s, resource))) for s in samples]
    if len(points) < 3:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def write_csv(samples: Sequence[Sample], path: Path) -> Path:
    """Write every sample as one CSV row (a header of the :class:`Sample` fields).

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(Sample)]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        for sample in samples:
            writer.writerow(asdict(sample))
    return path


def write_plot(samples: Sequence[Sample], baseline: Sample, path: Path, title: str, tolerance: float = 0.05) -> Path:
    """Draw the four resources of :data:`RESOURCES` against the cycles completed, one
    panel each, with the baseline (a dotted line where it was taken) and its tolerance
    band; checkpoints are marked.

    Returns:
        ``path`` (a PNG).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(RESOURCES), 1, figsize=(9, 9), sharex=True)
    colours = {"warmup": "tab:grey", "aiortc": "tab:blue", "chromium": "tab:orange", "settled": "tab:green"}
    for ax, (name, label, scale, unit) in zip(axes, RESOURCES, strict=True):
        base = getattr(baseline, name) / scale
        ax.axhline(base, color="black", linewidth=0.8, label="baseline")
        ax.axvline(baseline.cycle, color="black", linestyle=":", linewidth=0.8)
        ax.axhspan(base, base * (1 + tolerance), color="tab:green", alpha=0.12, label=f"baseline +{100 * tolerance:g} %")
        for phase in ("warmup", "aiortc", "chromium"):
            points = [(s.cycle, getattr(s, name) / scale) for s in samples if s.phase == phase]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", markersize=3, linewidth=0.8,
                        color=colours[phase], label=f"during {phase} cycles")
        settled = [(s.cycle, getattr(s, name) / scale) for s in samples if s.phase == "settled"]
        if settled:
            ax.plot(*zip(*settled, strict=True), linestyle="none", marker="D", markersize=6,
                    color=colours["settled"], label="settled (checkpoint)")
        values = [getattr(s, name) / scale for s in samples] + [base * (1 + tolerance)]
        low, high = min(values + [base]), max(values)
        pad = max((high - low) * 0.1, 0.5 if scale == 1 else 0.1)
        ax.set_ylim(low - pad, high + pad)
        ax.set_ylabel(f"{label} ({unit})" if unit else label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right", ncols=3)
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xlabel("cycles completed (warm-up included)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the cycles


@dataclass(slots=True)
class CycleResult:
    """What one cycle saw: its wall time (s), the fewest RTP packets any bot or page
    received on one of its subscribed tracks, and DataChannel messages delivered."""

    seconds: float
    min_packets: int
    messages: int


def _receiving_all(client: RoomClient, tracks: int) -> bool:
    """True when ``client`` subscribed to ``tracks`` tracks and got RTP on each."""
    if client.counter is None or len(client.subscriptions) < tracks:
        return False
    return all(client.counter.packets_on(sub.mid) > 0 for sub in client.subscriptions.values())


async def aiortc_cycle(
    url: str, room: str, bots: int, publishers: int, clips: tuple[EncodedClip, EncodedClip], drop_one: bool,
    timeout: float,
) -> CycleResult:
    """One aiortc cycle in ``room`` (see the module doc); ``drop_one`` makes the last
    bot close without ``leave``. Every bot is closed when this returns or raises.

    Raises:
        TimeoutError: a step did not finish within ``timeout`` seconds in all.
        AssertionError: a bot received no packets or not every message.
    """
    start = time.monotonic()
    step = "join"
    # Publishers only publish: a counting client starts no encoder, and a decoding one
    # would spend the bots' CPU on decoding. Subscribers count RTP without decoding.
    clients = [
        RoomClient(url, auto_subscribe=False, channels=[CHAT], request_timeout=timeout) if i < publishers
        else RoomClient(url, count_rtp=True, channels=[CHAT], request_timeout=timeout)
        for i in range(bots)
    ]
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(c.join(room, f"soak-{i}") for i, c in enumerate(clients)))
            video, audio = clips
            step = "publish"
            await asyncio.gather(*(
                c.publish([PreEncodedVideoTrack(video), PreEncodedAudioTrack(audio)], ["camera", "microphone"])
                for c in clients[:publishers]
            ))
            # Every subscriber subscribes to every publisher's two tracks.
            step = "receive RTP"
            await asyncio.gather(*(
                c.wait_until(lambda c=c: _receiving_all(c, 2 * publishers), timeout=timeout)
                for c in clients[publishers:]
            ))
            min_packets = min(
                (c.counter.packets_on(s.mid) for c in clients if c.counter for s in c.subscriptions.values()),
                default=0,
            )
            assert min_packets > 0, "a subscriber received no RTP"
            step = "DataChannel messages"
            for i, sender in enumerate(clients[:publishers]):
                sender.send_data("chat", f"hello from {i}")
            expected = [publishers - (1 if i < publishers else 0) for i in range(bots)]
            received = [[] for _ in clients]

            async def drain(index: int) -> None:
                while len(received[index]) < expected[index]:
                    received[index].append(await clients[index].data.get())

            await asyncio.gather(*(drain(i) for i in range(bots)))
            messages = sum(len(r) for r in received)
            step = "leave"
            leaving = clients[:-1] if drop_one else clients
            await asyncio.gather(*(c.leave() for c in leaving))
        return CycleResult(time.monotonic() - start, min_packets, messages)
    except TimeoutError as exc:
        raise TimeoutError(f"at step {step!r} after {time.monotonic() - start:.1f} s") from exc
    finally:
        async with asyncio.timeout(15):
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


class Chromium:
    """One headless Chromium process (its own process group) driven over CDP; each
    cycle gets a fresh browser context. Launch and shutdown are the browser tests'
    (``tests/browser/conftest.py``)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: Any = None
        self.user_data_dir = ""
        self.browser: Any = None
        self._playwright_cm: Any = None

    async def start(self) -> None:
        """Launch Chromium and connect Playwright to it."""
        from playwright.async_api import async_playwright

        from tests.browser.conftest import _devtools_port, _launch_chromium

        self.user_data_dir = tempfile.mkdtemp(prefix="chromium-soak-", dir=self.workdir)
        self.proc = _launch_chromium(self.user_data_dir)
        port = await _devtools_port(self.proc, self.user_data_dir)
        self._playwright_cm = async_playwright()
        playwright = await self._playwright_cm.__aenter__()
        self.browser = await playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")

    async def close(self) -> None:
        """Disconnect Playwright, then end Chromium's process group."""
        from tests.browser.conftest import _end_process_group

        if self.browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.browser.close(), 5)
        if self._playwright_cm is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._playwright_cm.__aexit__(None, None, None), 10)
        if self.proc is not None:
            await asyncio.to_thread(_end_process_group, self.proc)
        if self.user_data_dir:
            shutil.rmtree(self.user_data_dir, ignore_errors=True)


async def chromium_cycle(chromium: Chromium, base_url: str, room: str, query: dict[str, str], drop_first: bool,
                         timeout: float) -> CycleResult:
    """One Chromium cycle in ``room`` (see the module doc): two demo pages in a new
    browser context; ``drop_first`` picks which page leaves with the button and which
    is dropped with its context. The context is closed when this returns or raises.

    Raises:
        TimeoutError: a step did not finish within ``timeout`` seconds in all.
        AssertionError: a page got no media or not the chat message.
    """
    from tests.browser.pages import (
        CHAT_LOG_JS,
        CHAT_OPEN_JS,
        MEDIA_STATS_JS,
        SEND_CHAT_JS,
    )

    start = time.monotonic()
    console: list[str] = []
    context = await chromium.browser.new_context()
    try:
        async with asyncio.timeout(timeout):
            pages = []
            for name in ("alice", "bob"):
                page = await context.new_page()
                page.on("console", lambda msg, name=name: console.append(f"{name} {msg.type}: {msg.text}"))
                await page.goto(f"{base_url}/?{urlencode({'room': room, 'name': name, **query})}")
                pages.append(page)
            ids = []
            for page in pages:
                handle = await page.wait_for_function(
                    "() => window.sfuClient && window.sfuClient.participantId", timeout=timeout * 1000)
                ids.append(await handle.json_value())
            min_packets = None
            deadline = time.monotonic() + BROWSER_MEDIA_TIMEOUT
            while True:
                stats = [await page.evaluate(MEDIA_STATS_JS) for page in pages]
                seen = [s.get(other, {}) for s, other in zip(stats, reversed(ids), strict=True)]
                if all(e.get("framesDecoded", 0) > 0 and e.get("audioPackets", 0) > 0 for e in seen):
                    min_packets = min(e["audioPackets"] for e in seen)
                    break
                if time.monotonic() > deadline:
                    states = [await page.evaluate(PC_STATE_JS) for page in pages]
                    raise AssertionError(f"no media both ways within {BROWSER_MEDIA_TIMEOUT} s: {seen}; "
                                         f"alice, bob: {states}; console: {console[-6:]}")
                await asyncio.sleep(0.25)
            for page in pages:
                await page.wait_for_function(CHAT_OPEN_JS, timeout=timeout * 1000)
            text = f"soak {room}"
            assert await pages[0].evaluate(SEND_CHAT_JS, text) == ""
            await pages[1].wait_for_function(
                f"() => ({CHAT_LOG_JS})().some(([from, t]) => from === 'alice' && t === {json.dumps(text)})",
                timeout=timeout * 1000)
            leaver = pages[1] if drop_first else pages[0]
            await leaver.evaluate("() => document.querySelector('#leave').click()")
            await leaver.wait_for_function(
                "() => document.querySelector('#status')?.textContent === 'You left the room.'", timeout=timeout * 1000)
        return CycleResult(time.monotonic() - start, min_packets or 0, 1)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.close(), 10)


# What a page's PeerConnection shows when media does not come (for the failure message).
PC_STATE_JS = """async () => {
  const pc = window.sfuPc;
  if (!pc) return 'no PeerConnection';
  const pairs = [...(await pc.getStats()).values()].filter((s) => s.type === 'candidate-pair')
    .map((s) => `${s.state}${s.nominated ? '*' : ''}`);
  return `${pc.connectionState}/${pc.iceConnectionState}/${pc.iceGatheringState}/${pc.signalingState} pairs ${pairs}`;
}"""


# ------------------------------------------------------------------ the run


class Soak:
    """The server, the samples, the cycles; :meth:`run` does it all."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        python_args = () if args.no_server_gc else ("-c", SERVER_CODE)
        self.server = ServerProcess(workdir / "server.log", args.server_arg, python_args=python_args)
        self.process: psutil.Process | None = None
        self.samples: list[Sample] = []
        self.checks: list[Check] = []
        self.baseline: Sample | None = None
        self.failures: list[str] = []
        self.cycle_times: dict[str, list[float]] = {"aiortc": [], "chromium": []}
        self.cycles_done = 0
        self.started = time.monotonic()
        self.deadline = self.started + 60 * args.max_minutes
        self.chromium: Chromium | None = None
        self.phase_wall: dict[str, float] = {}
        self.cycles_run: dict[str, int] = {"aiortc": 0, "chromium": 0}
        self.stop_requested = False

    def request_stop(self) -> None:
        """Ctrl-C: finish the current cycle, skip the rest, and still take the
        checkpoint and write the figures."""
        if not self.stop_requested:
            print("stopping after this cycle (Ctrl-C again to abort)", flush=True)
        self.stop_requested = True

    # -- sampling

    async def sample(self, phase: str) -> Sample:
        """Scrape ``/metrics`` and read the server's threads; append and return it."""
        metrics = await asyncio.to_thread(self.server.metrics)
        assert self.process is not None
        threads = self.process.num_threads()
        sample = Sample(
            t=round(time.monotonic() - self.started, 3),
            phase=phase,
            cycle=self.cycles_done,
            rss_bytes=metrics["process_resident_memory_bytes"],
            tasks=metrics["sfu_asyncio_tasks"],
            fds=metrics["process_open_fds"],
            threads=threads,
            participants=metrics.get("sfu_participants", 0.0),
            rooms=metrics.get("sfu_rooms", 0.0),
            websockets=metrics.get("sfu_websocket_connections", 0.0),
            gc_gen2=metrics.get('python_gc_collections_total{generation="2"}', 0.0),
        )
        self.samples.append(sample)
        return sample

    def warm_static_files(self, concurrency: int = 16) -> None:
        """Fetch the demo page's files (``web/``) ``concurrency`` at a time, 4 rounds.

        aiohttp serves a static file through asyncio's default thread pool, which starts
        a thread whenever a file request finds none idle, up to ``min(32, cores + 4)``,
        and never ends one: the server's thread count is the highest number of file
        requests it ever served at once. Warming the pool up to its size before the
        baseline keeps that high-water mark out of the leak check (see BENCHMARKS.md).
        """
        import concurrent.futures
        import urllib.request

        paths = ["/", "/app.js", "/sfu-client.js", "/style.css"] * (concurrency // 4 or 1)

        def fetch(path: str) -> int:
            with urllib.request.urlopen(f"{self.server.http_url}{path}", timeout=10) as response:
                return len(response.read())

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for _ in range(4):
                list(pool.map(fetch, paths))

    def collect_garbage(self) -> None:
        """Ask the server for a full garbage collection (SIGUSR1 to its pid, see
        :data:`SERVER_CODE`); nothing with ``--no-server-gc``."""
        if not self.args.no_server_gc:
            os.kill(self.server.pid, signal.SIGUSR1)

    async def settled(self, checkpoint: str | None) -> Sample:
        """Wait until the server reports no room, participant or WebSocket (at most
        :data:`IDLE_TIMEOUT` s); have the server collect its garbage (SIGUSR1, unless
        ``--no-server-gc``), wait ``--settle`` seconds, collect again, wait
        :data:`GC_WAIT` s; sample.
        With a ``checkpoint`` name, compare the sample with the baseline."""
        deadline = time.monotonic() + IDLE_TIMEOUT
        while True:
            metrics = await asyncio.to_thread(self.server.metrics)
            busy = {k: metrics.get(k, 0.0) for k in ("sfu_rooms", "sfu_participants", "sfu_websocket_connections")}
            if not any(busy.values()):
                break
            if time.monotonic() > deadline:
                self.failures.append(f"{checkpoint or 'baseline'}: not idle after {IDLE_TIMEOUT} s: {busy}")
                break
            await asyncio.sleep(0.5)
        # A collection before the settling time frees the cycles of the participants
        # that left; one after it what the settling time released (closing connections).
        self.collect_garbage()
        await asyncio.sleep(self.args.settle)
        self.collect_garbage()
        await asyncio.sleep(0 if self.args.no_server_gc else GC_WAIT)
        sample = await self.sample("settled")
        if checkpoint is not None and self.baseline is not None:
            checks = compare(checkpoint, self.baseline, sample, self.args.tolerance)
            self.checks.extend(checks)
            print(format_checks(checks), flush=True)
        return sample

    def progress(self, phase: str, done: int, total: int, sample: Sample, since: float, cycles: int) -> None:
        """Print one progress line."""
        rate = (time.monotonic() - since) / max(cycles, 1)
        print(
            f"{phase} {done:5d}/{total}  rss {sample.rss_bytes / MIB:6.1f} MiB  tasks {sample.tasks:4.0f}  "
            f"fds {sample.fds:4.0f}  threads {sample.threads:3.0f}  participants {sample.participants:2.0f}  "
            f"{rate:5.2f} s/cycle  failures {len(self.failures)}",
            flush=True,
        )

    # -- phases

    async def run_cycles(self, phase: str, count: int, sampled: bool) -> int:
        """Run ``count`` cycles of ``phase`` (``aiortc`` or ``chromium``); sample every
        ``--sample-every`` cycles when ``sampled``. Returns the cycles run (fewer when
        the time limit or ``--max-failures`` stopped it)."""
        args = self.args
        since, since_cycles = time.monotonic(), 0
        label = phase if sampled else "warmup"
        for i in range(count):
            if self.stop_requested:
                self.failures.append(f"stopped by Ctrl-C in the {phase} phase after {i} cycles")
                return i
            if time.monotonic() > self.deadline:
                self.failures.append(f"time limit of {args.max_minutes} min reached in the {phase} phase after {i} cycles")
                return i
            if len(self.failures) > args.max_failures:
                self.failures.append(f"more than {args.max_failures} failed cycles: stopped")
                return i
            room = f"soak-{phase[0]}{self.cycles_done}-{uuid.uuid4().hex[:6]}"
            try:
                if phase == "aiortc":
                    result = await aiortc_cycle(self.server.ws_url, room, args.bots, args.publishers, self.clips,
                                                drop_one=i % 2 == 1, timeout=args.cycle_timeout)
                else:
                    assert self.chromium is not None
                    result = await chromium_cycle(self.chromium, self.server.http_url, room, self.browser_query,
                                                  drop_first=i % 2 == 1, timeout=args.cycle_timeout)
                if sampled:
                    self.cycle_times[phase].append(result.seconds)
            except Exception as exc:  # noqa: BLE001  (a failed cycle is recorded; the soak goes on)
                message = f"{phase} cycle {i} ({room}): {type(exc).__name__}: {exc}"[:500]
                self.failures.append(message)
                print(f"FAILED {message}", flush=True)
            self.cycles_done += 1
            if sampled:
                self.cycles_run[phase] += 1
            since_cycles += 1
            if (i + 1) % args.sample_every == 0 or i + 1 == count:
                sample = await self.sample(label)
                self.progress(label, i + 1, count, sample, since, since_cycles)
                since, since_cycles = time.monotonic(), 0
            if sampled and args.checkpoint_every and (i + 1) % args.checkpoint_every == 0 and i + 1 < count:
                await self.settled(f"after {i + 1} {phase} cycles")
                since, since_cycles = time.monotonic(), 0
        return count

    async def run(self) -> None:
        """Warm-up, baseline, the aiortc phase, the Chromium phase, a checkpoint after each."""
        args = self.args
        await asyncio.to_thread(self.server.wait_healthy, 30.0)
        self.process = psutil.Process(self.server.pid)
        video = encode_vp8_clip(args.width, args.height, args.fps, 2.0, args.video_bitrate, args.keyframe_interval)
        self.clips = (video, encode_opus_clip())
        self.browser_query = dict(q.split("=", 1) for q in args.browser_query)
        await self.sample("warmup")
        if args.cycles:
            await self.run_cycles("aiortc", args.warmup, sampled=False)
        if args.browsers:
            self.chromium = Chromium(self.workdir)
            await self.chromium.start()
            await self.run_cycles("chromium", args.browser_warmup, sampled=False)
        if args.browsers:
            await asyncio.to_thread(self.warm_static_files)
        warmup_failures = len(self.failures)
        self.baseline = await self.settled(None)
        print(f"baseline after {self.cycles_done} warm-up cycles and {args.settle:g} s: "
              f"rss {self.baseline.rss_bytes / MIB:.1f} MiB, tasks {self.baseline.tasks:.0f}, "
              f"fds {self.baseline.fds:.0f}, threads {self.baseline.threads:.0f}"
              + (f" ({warmup_failures} warm-up cycles failed)" if warmup_failures else ""), flush=True)
        for phase, count in (("aiortc", args.cycles), ("chromium", args.browsers)):
            if not count:
                continue
            if self.stop_requested:
                self.failures.append(f"stopped by Ctrl-C before the {phase} phase")
                continue
            start = time.monotonic()
            done = await self.run_cycles(phase, count, sampled=True)
            self.phase_wall[phase] = time.monotonic() - start
            await self.settled(f"after {done} {phase} cycles")

    async def close(self) -> None:
        """End Chromium and the server (by their pids)."""
        if self.chromium is not None:
            await self.chromium.close()
        await asyncio.to_thread(self.server.stop)


def _warmup_text(args: argparse.Namespace) -> str:
    """The warm-up cycles run before the baseline, e.g. ``20 aiortc + 3 Chromium``."""
    kinds = ((args.warmup, "aiortc", args.cycles), (args.browser_warmup, "Chromium", args.browsers))
    return " + ".join(f"{n} {kind}" for n, kind, phase in kinds if phase)


def summary(soak: Soak, args: argparse.Namespace, wall: float) -> str:
    """The run's figures as text: cycles, times, the checks, failures, verdict."""
    warmup = _warmup_text(args)
    lines = [
        (f"server pid {soak.server.pid}; {soak.cycles_done} cycles in {wall / 60:.1f} min, warm-up included "
         f"(baseline after {warmup} warm-up cycles; settle {args.settle:g} s; tolerance {100 * args.tolerance:g} %)")
    ]
    for phase, times in soak.cycle_times.items():
        if times:
            lines.append(
                f"{phase}: {len(times)} of {soak.cycles_run[phase]} cycles succeeded in "
                f"{soak.phase_wall.get(phase, sum(times)) / 60:.1f} min; "
                f"per cycle median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    lines.append(format_checks(soak.checks))
    settled = [s for s in soak.samples if s.phase == "settled"]
    slopes = []
    for name, label, scale, unit in RESOURCES:
        slope = slope_per_1000(settled, name)
        if slope is not None:
            slopes.append(f"{label} {slope / scale:+.2f}{' ' + unit if unit else ''}")
    if slopes:
        lines.append(f"trend of the {len(settled)} settled samples (least squares, per 1,000 cycles): " + ", ".join(slopes))
    if soak.failures:
        lines.append(f"{len(soak.failures)} failures:")
        lines.extend(f"  {f}" for f in soak.failures[:20])
    ok = bool(soak.checks) and all(c.passed for c in soak.checks) and not soak.failures
    lines.append("RESULT: " + ("PASS" if ok else "FAIL"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000, help="aiortc cycles after the baseline (default 1000)")
    parser.add_argument("--browsers", type=int, default=0, help="Chromium cycles after the aiortc ones (default 0)")
    parser.add_argument("--bots", type=int, default=4, help="aiortc bots per cycle (default 4)")
    parser.add_argument("--publishers", type=int, default=2, help="of those, publishers of VP8 + Opus (default 2)")
    parser.add_argument("--warmup", type=int, default=20, help="aiortc warm-up cycles before the baseline (default 20)")
    parser.add_argument("--browser-warmup", type=int, default=5,
                        help="Chromium warm-up cycles before the baseline, with --browsers (default 5)")
    parser.add_argument("--sample-every", type=int, default=10, help="sample the server every K cycles (default 10)")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds idle before a baseline/checkpoint (default 30)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed rise over the baseline (default 0.05)")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also settle and compare every N cycles of a phase (default 0: at the end of each phase)")
    parser.add_argument("--no-server-gc", action="store_true",
                        help="run the server plainly: no garbage collection asked for before a checkpoint")
    parser.add_argument("--cycle-timeout", type=float, default=45.0, help="seconds for one cycle (default 45)")
    parser.add_argument("--max-failures", type=int, default=10, help="stop after this many failed cycles (default 10)")
    parser.add_argument("--max-minutes", type=float, default=180.0, help="stop the cycles after this long (default 180)")
    parser.add_argument("--width", type=int, default=320, help="bots' video width, pixels (default 320)")
    parser.add_argument("--height", type=int, default=240, help="bots' video height, pixels (default 240)")
    parser.add_argument("--fps", type=int, default=15, help="bots' frames per second (default 15)")
    parser.add_argument("--video-bitrate", type=int, default=300_000, help="bots' video, bit/s (default 300000)")
    parser.add_argument("--keyframe-interval", type=int, default=8, help="bots' frames between keyframes (default 8)")
    parser.add_argument("--browser-query", action="append", default=[], metavar="KEY=VALUE",
                        help="more demo-page query parameters, e.g. simulcast=0")
    parser.add_argument("--server-arg", action="append", default=[], help="extra 'signaling.cli serve' argument")
    parser.add_argument("--csv", type=Path, help="CSV of the samples (default: in the work directory)")
    parser.add_argument("--plot", type=Path, help="PNG plot (default: in the work directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server log)")
    args = parser.parse_args(argv)
    if args.cycles < 0 or args.browsers < 0 or args.cycles + args.browsers == 0:
        parser.error("--cycles and --browsers must be >= 0, and not both 0")
    if not 1 <= args.publishers < args.bots:
        parser.error("need 1 <= --publishers < --bots (at least one subscriber)")
    if args.warmup < 0 or args.browser_warmup < 0 or args.sample_every < 1 or args.settle < 0 or args.tolerance < 0:
        parser.error("--warmup and --browser-warmup >= 0, --sample-every >= 1, --settle >= 0, --tolerance >= 0")
    if any("=" not in q for q in args.browser_query):
        parser.error("--browser-query takes KEY=VALUE")
    return args


async def _amain(soak: Soak) -> None:
    args = soak.args
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_sigint() -> None:
        if soak.stop_requested:
            main_task.cancel()  # a second Ctrl-C aborts (the server and Chromium are still ended)
        soak.request_stop()

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_sigint)
    checkpoints = 3 + (args.cycles + args.browsers) // args.checkpoint_every if args.checkpoint_every else 3
    try:
        # Generous outer bound: the cycles stop by --max-minutes; the rest is settling.
        async with asyncio.timeout(60 * args.max_minutes + checkpoints * (IDLE_TIMEOUT + args.settle + 2 * GC_WAIT) + 120):
            await soak.run()
    except BaseException:
        print(f"server log tail:\n{soak.server.log_tail()}", file=sys.stderr)
        raise
    finally:
        await soak.close()


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print the table and write the CSV and plot. Returns the exit status
    (0: every check passed and no cycle failed)."""
    args = parse_args(argv)
    if args.browsers:
        from tests.browser.conftest import (
            CHROMIUM,  # also puts the repository on sys.path
        )

        if not os.access(CHROMIUM, os.X_OK):
            sys.exit(f"{CHROMIUM} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="bench_soak-"))
    started = time.monotonic()
    soak = Soak(args, workdir)
    print(f"server log: {soak.server.log_path}", flush=True)
    try:
        asyncio.run(_amain(soak))
    except BaseException:
        print(f"soak failed; work directory kept: {workdir}", file=sys.stderr)
        raise
    wall = time.monotonic() - started
    print()
    text = summary(soak, args, wall)
    print(text)
    csv_path = write_csv(soak.samples, args.csv or workdir / "soak.csv")
    assert soak.baseline is not None
    ran, ok = soak.cycles_run, {phase: len(times) for phase, times in soak.cycle_times.items()}
    title = (f"Soak: {ran['aiortc']} aiortc cycles ({args.bots} bots, {args.publishers} publishing"
             + (f"; {ran['aiortc'] - ok['aiortc']} failed" if ran["aiortc"] != ok["aiortc"] else "") + ")"
             + (f", {ran['chromium']} Chromium cycles ({ran['chromium'] - ok['chromium']} failed)"
                if args.browsers and ran["chromium"] != ok["chromium"]
                else f", {ran['chromium']} Chromium cycles" if args.browsers else "")
             + f", one server\nbaseline (dotted line) after {_warmup_text(args)} warm-up cycles"
             + f" and {args.settle:g} s idle; tolerance {100 * args.tolerance:g} %")
    plot_path = write_plot(soak.samples, soak.baseline, args.plot or workdir / "soak.png", title, args.tolerance)
    print(f"csv: {csv_path}\nplot: {plot_path}")
    if args.keep or args.csv is None or args.plot is None:
        print(f"work directory: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if text.endswith("RESULT: PASS") else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
