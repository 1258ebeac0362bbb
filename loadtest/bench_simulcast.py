"""Simulcast switch benchmark with real Chromium: how fast a subscriber goes down to
the lowest layer when its downlink drops, how fast it climbs back when the link
recovers, and what the viewer sees meanwhile (freezes, loss).

    sudo .venv/bin/python -m loadtest.bench_simulcast --rounds 3

Starts the SFU server (``signaling.cli serve`` on 127.0.0.1) and two headless
Chromium processes (the flags of ``tests/browser/conftest.py``): a publisher on the
demo page, camera as three simulcast layers (fake camera 1280x720: rids q/h/f at
320x180, 640x360, 1280x720), and a subscriber (``maxHeight=none``: no tile cap). Once
the subscriber decodes the top layer, each round:

1. limits the subscriber's downlink (``tc`` HTB on ``lo``, by the UDP port of its
   selected ICE candidate) to ``--rate`` kbit/s and measures the time until the
   server announces the lowest layer (``layer_changed`` rid q) and until the
   subscriber decodes it (inbound-rtp ``frameHeight`` <= 200);
2. holds the limit ``--hold`` seconds, measuring freezes and loss on the lowest layer;
3. lifts the limit and measures the time until ``layer_changed`` rid f and until the
   subscriber decodes >= 540 px again;
4. waits ``--settle`` seconds on the top layer.

Freezes are Chrome's (``freezeCount``, ``totalFreezesDuration``: a frame later than
max(3 x the average frame interval, average + 150 ms)); the longest single freeze is
bounded by the freeze time that ended within one 50 ms poll. "Stall" is the longest
time ``framesDecoded`` stood still, seen from outside. Loss is ``packetsLost`` over
packets expected. It prints per-round figures and medians, and the server's CPU over
the rounds (the CPU the allocation itself adds per subscriber is measured in process
by ``loadtest.bench_allocator``).

Needs root (tc) and /usr/bin/chromium. Every wait is bounded; the shaping is removed
and every process started here is ended by its own process group, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil
from playwright.async_api import Page, async_playwright

from loadtest.server import REPO_ROOT, ServerProcess

sys.path.insert(0, str(REPO_ROOT))
# Chromium's flags and launch have one source: the browser tests' conftest.
from tests.browser.conftest import (
    CHROMIUM,
    _devtools_port,
    _end_process_group,
    _launch_chromium,
)
from tests.integration.shaping import shaped_port

TOP_MIN_HEIGHT = 540
LOW_MAX_HEIGHT = 200
POLL_S = 0.05

# Inbound video from one remote participant, and this page's selected ICE pair (also
# used by tests/browser/test_simulcast.py).
# Argument: the publisher's participant id.
VIDEO_STATS_JS = """
async (publisherId) => {
  const stats = [...(await window.sfuPc.getStats()).values()];
  const participant = window.sfuClient.participants.get(publisherId);
  const trackIds = new Set(participant ? participant.stream.getTracks().map((t) => t.id) : []);
  const video = stats.filter((s) => s.type === 'inbound-rtp' && s.kind === 'video' && trackIds.has(s.trackIdentifier));
  const sum = (key) => video.reduce((n, s) => n + (s[key] ?? 0), 0);
  const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
  // Firefox names no selected pair on its transport; its pair says `selected` itself.
  const pair = transport ? stats.find((s) => s.id === transport.selectedCandidatePairId)
    : stats.find((s) => s.type === 'candidate-pair' && s.selected);
  const local = pair && stats.find((s) => s.id === pair.localCandidateId);
  return {
    at: performance.now(),
    framesDecoded: sum('framesDecoded'),
    frameWidth: video.reduce((n, s) => Math.max(n, s.frameWidth ?? 0), 0),
    frameHeight: video.reduce((n, s) => Math.max(n, s.frameHeight ?? 0), 0),
    packetsReceived: sum('packetsReceived'),
    packetsLost: sum('packetsLost'),
    bytesReceived: sum('bytesReceived'),
    nackCount: sum('nackCount'),
    pliCount: sum('pliCount'),
    freezeCount: sum('freezeCount'),
    totalFreezesDuration: sum('totalFreezesDuration'),
    localPort: local ? local.port : null,
    availableIncomingBitrate: pair ? pair.availableIncomingBitrate ?? null : null,
  };
}
"""


@dataclass
class Window:
    """What the subscriber saw between two instants (seconds, counts)."""

    seconds: float = 0.0
    frames: int = 0
    freezes: int = 0
    freeze_seconds: float = 0.0
    max_freeze: float = 0.0
    max_stall: float = 0.0
    loss: float = 0.0
    kbps: float = 0.0


@dataclass
class Round:
    first_down_s: float | None = None  # limit set -> first layer_changed below f (or a pause)
    drop_event_s: float | None = None  # limit set -> layer_changed rid q
    drop_decoded_s: float | None = None  # limit set -> frameHeight <= 200
    up_event_s: float | None = None  # limit lifted -> layer_changed rid f
    up_decoded_s: float | None = None  # limit lifted -> frameHeight >= 540
    down_switch: Window = field(default_factory=Window)  # limit set -> lowest layer decoded + 1 s
    hold: Window = field(default_factory=Window)  # on the lowest layer under the limit
    up_switch: Window = field(default_factory=Window)  # limit lifted -> top layer decoded + 1 s
    paused: bool = False  # the server paused the video at some point
    events: list[dict] = field(default_factory=list)


class Watcher:
    """Polls the subscriber's stats every POLL_S seconds and keeps window figures."""

    def __init__(self, page: Page, publisher_id: str) -> None:
        self.page = page
        self.publisher_id = publisher_id
        self.last: dict[str, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self.first = self.last
        self.max_freeze = 0.0
        self.stalled_since = self.last["at"] if self.last else 0.0
        self.max_stall = 0.0

    async def poll(self) -> dict[str, Any]:
        stats = await self.page.evaluate(VIDEO_STATS_JS, self.publisher_id)
        last = self.last
        if last is not None:
            if stats["framesDecoded"] > last["framesDecoded"]:
                self.stalled_since = stats["at"]
            self.max_stall = max(self.max_stall, (stats["at"] - self.stalled_since) / 1000)
            if stats["freezeCount"] > last["freezeCount"]:
                self.max_freeze = max(self.max_freeze, stats["totalFreezesDuration"] - last["totalFreezesDuration"])
        self.last = stats
        return stats

    async def start_window(self) -> None:
        await self.poll()
        self._reset()

    def end_window(self) -> Window:
        a, b = self.first, self.last
        seconds = (b["at"] - a["at"]) / 1000
        received = b["packetsReceived"] - a["packetsReceived"]
        lost = b["packetsLost"] - a["packetsLost"]
        return Window(
            seconds=round(seconds, 3),
            frames=b["framesDecoded"] - a["framesDecoded"],
            freezes=b["freezeCount"] - a["freezeCount"],
            freeze_seconds=round(b["totalFreezesDuration"] - a["totalFreezesDuration"], 3),
            max_freeze=round(self.max_freeze, 3),
            max_stall=round(self.max_stall, 3),
            loss=round(lost / max(1, received + lost), 4),
            kbps=round(8 * (b["bytesReceived"] - a["bytesReceived"]) / max(seconds, 1e-3) / 1000, 1),
        )

    async def until(self, predicate, timeout: float) -> float | None:
        """Poll until ``predicate(stats)`` holds on a poll in which frames were decoded
        (the stats keep the last decoded frame's size while nothing arrives); the
        seconds it took, or None on timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            frames = self.last["framesDecoded"] if self.last else 0
            stats = await self.poll()
            if stats["framesDecoded"] > frames and predicate(stats):
                return time.monotonic() - start
            await asyncio.sleep(POLL_S)
        return None

    async def hold(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.poll()
            await asyncio.sleep(POLL_S)


async def _events_since(page: Page, since_ms: float) -> list[dict]:
    return await page.evaluate("(t) => window.sfuLayerEvents.filter((e) => e.receivedAt >= t)", since_ms)


def _first_event(events: list[dict], rid: str, since_ms: float) -> float | None:
    for event in events:
        if event["rid"] == rid and not event["paused"]:
            return round((event["receivedAt"] - since_ms) / 1000, 3)
    return None


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.server = ServerProcess(workdir / "server.log", args.server_arg)
        self.chromiums: list[tuple[Any, str]] = []

    async def _open(self, playwright, url: str, label: str) -> Page:
        user_data_dir = tempfile.mkdtemp(prefix=f"chromium-{label}-", dir=self.workdir)
        proc = _launch_chromium(user_data_dir)
        self.chromiums.append((proc, user_data_dir))
        port = await _devtools_port(proc, user_data_dir)
        browser = await playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        context = browser.contexts[0]
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(url)
        return page

    async def run(self) -> dict[str, Any]:
        args = self.args
        await asyncio.to_thread(self.server.wait_healthy, 30.0)
        server_proc = psutil.Process(self.server.pid)
        room = f"bench-{uuid.uuid4().hex[:8]}"
        base = self.server.http_url
        async with async_playwright() as playwright:
            publisher = await self._open(playwright, f"{base}/?{urlencode({'room': room, 'name': 'pub'})}", "pub")
            query = {"room": room, "name": "sub", "publish": "0", "maxHeight": "none"}
            subscriber = await self._open(playwright, f"{base}/?{urlencode(query)}", "sub")
            await publisher.wait_for_function("() => window.sfuClient?.localTracks.size >= 2", timeout=20_000)
            publisher_id = await publisher.evaluate("() => window.sfuClient.participantId")
            watcher = Watcher(subscriber, publisher_id)

            warmup = await watcher.until(lambda s: s["frameHeight"] >= TOP_MIN_HEIGHT, args.warmup_timeout)
            if warmup is None:
                raise RuntimeError(f"the subscriber never decoded the top layer: {watcher.last}; "
                                   f"events {await _events_since(subscriber, 0)}")
            print(f"subscriber on the top layer {warmup:.1f} s after the publisher published", flush=True)
            await watcher.hold(args.settle)

            rounds: list[Round] = []
            cpu_start = server_proc.cpu_times()
            run_start = time.monotonic()
            for number in range(1, args.rounds + 1):
                result = Round()
                port = watcher.last["localPort"]
                if not port:
                    raise RuntimeError(f"no selected candidate pair on the subscriber: {watcher.last}")
                with shaped_port(port, args.rate, args.queue):
                    shaped_at = (await watcher.poll())["at"]
                    await watcher.start_window()
                    result.drop_decoded_s = await watcher.until(
                        lambda s: 0 < s["frameHeight"] <= LOW_MAX_HEIGHT, args.drop_timeout)
                    await watcher.hold(1.0)
                    result.down_switch = watcher.end_window()
                    await watcher.start_window()
                    await watcher.hold(args.hold)
                    result.hold = watcher.end_window()
                    down_events = await _events_since(subscriber, shaped_at)
                result.drop_event_s = _first_event(down_events, "q", shaped_at)
                result.first_down_s = next((round((e["receivedAt"] - shaped_at) / 1000, 3) for e in down_events
                                            if e["paused"] or e["rid"] != "f"), None)
                lifted_at = (await watcher.poll())["at"]
                await watcher.start_window()
                result.up_decoded_s = await watcher.until(
                    lambda s: s["frameHeight"] >= TOP_MIN_HEIGHT, args.recover_timeout)
                await watcher.hold(1.0)
                result.up_switch = watcher.end_window()
                up_events = await _events_since(subscriber, lifted_at)
                result.up_event_s = _first_event(up_events, "f", lifted_at)
                result.events = [{k: e[k] for k in ("rid", "paused", "reason")}
                                 | {"t": round((e["receivedAt"] - shaped_at) / 1000, 3)}
                                 for e in down_events + up_events]
                result.paused = any(e["paused"] for e in result.events)
                rounds.append(result)
                print(f"round {number}: {json.dumps(asdict(result))}", flush=True)
                if result.up_decoded_s is None:
                    print("  the subscriber did not get back to the top layer; stopping", flush=True)
                    break
                await watcher.hold(args.settle)
            cpu_end = server_proc.cpu_times()
            elapsed = time.monotonic() - run_start
        server_cpu = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / elapsed
        return {"rounds": [asdict(r) for r in rounds], "server_cpu": server_cpu, "warmup_s": warmup}

    async def close(self) -> None:
        for proc, user_data_dir in self.chromiums:
            await asyncio.to_thread(_end_process_group, proc)
            shutil.rmtree(user_data_dir, ignore_errors=True)
        await asyncio.to_thread(self.server.stop)


def _median(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    missing = len(values) - len(present)
    if not present:
        return "n/a"
    text = f"{statistics.median(present):.2f}"
    return text + (f" ({missing} missing)" if missing else "")


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    rounds = results["rounds"]

    def col(path: str) -> list[Any]:
        return [_dig(r, path) for r in rounds]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"simulcast switch benchmark: {len(rounds)} round(s), downlink limit {args.rate} kbit/s "
        f"(FIFO {args.queue} packets), hold {args.hold:.0f} s",
        "times in s from the change of the limit; frz = Chrome freezes (count, longest); stall = longest time "
        "without a decoded frame",
        f"{'round':>5} {'1st down':>8} {'q event':>8} {'q dec':>6} {'f event':>8} {'f dec':>6} "
        f"{'down frz':>8} {'max':>5} {'stall':>5} {'hold frz':>8} {'max':>5} {'stall':>5} "
        f"{'loss':>6} {'kb/s':>5} {'up frz':>6} {'max':>5} {'stall':>5} {'paused':>6}",
    ]
    for i, r in enumerate(rounds, 1):
        down, hold, up = r["down_switch"], r["hold"], r["up_switch"]
        lines.append(
            f"{i:>5} {f(r['first_down_s']):>8} {f(r['drop_event_s']):>8} {f(r['drop_decoded_s']):>6} "
            f"{f(r['up_event_s']):>8} {f(r['up_decoded_s']):>6} "
            f"{down['freezes']:>8} {down['max_freeze']:>5.2f} {down['max_stall']:>5.2f} "
            f"{hold['freezes']:>8} {hold['max_freeze']:>5.2f} {hold['max_stall']:>5.2f} "
            f"{hold['loss']:>6.2%} {hold['kbps']:>5.0f} "
            f"{up['freezes']:>6} {up['max_freeze']:>5.2f} {up['max_stall']:>5.2f} {r['paused']!s:>6}"
        )
    lines += [
        f"medians (s): first step down {_median(col('first_down_s'))}, "
        f"to q (event) {_median(col('drop_event_s'))}, q decoded "
        f"{_median(col('drop_decoded_s'))}, back to f (event) {_median(col('up_event_s'))}, top decoded "
        f"{_median(col('up_decoded_s'))}",
        f"longest freeze (s): down switch {_median(col('down_switch.max_freeze'))}, hold "
        f"{_median(col('hold.max_freeze'))}, up switch {_median(col('up_switch.max_freeze'))}",
        f"longest stall (s): down switch {_median(col('down_switch.max_stall'))}, hold "
        f"{_median(col('hold.max_stall'))}, up switch {_median(col('up_switch.max_stall'))}",
        f"server CPU over the rounds: {100 * results['server_cpu']:.1f} % of a core "
        f"(1 publisher with 3 layers + audio, 1 subscriber)",
    ]
    return "\n".join(lines)


def _dig(record: dict, path: str) -> Any:
    for key in path.split("."):
        record = record[key]
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_simulcast", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="drop/recover rounds (default 3)")
    parser.add_argument("--rate", type=int, default=350, help="downlink limit, kbit/s (default 350)")
    parser.add_argument("--queue", type=int, default=20, help="FIFO of the limited link, packets (default 20)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds under the limit after the drop (default 10)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds on the top layer between rounds (default 5)")
    parser.add_argument("--warmup-timeout", type=float, default=40.0, help="seconds to reach the top layer first")
    parser.add_argument("--drop-timeout", type=float, default=15.0, help="seconds to wait for the lowest layer")
    parser.add_argument("--recover-timeout", type=float, default=40.0, help="seconds to wait for the top layer")
    parser.add_argument("--server-arg", action="append", default=[], help="extra 'signaling.cli serve' argument")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server log)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.rate < 50 or args.queue < 1 or args.hold <= 0:
        parser.error("--rounds >= 1, --rate >= 50, --queue >= 1 and --hold > 0")
    return args


async def _amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bench = Bench(args, workdir)
    limit = 90 + args.warmup_timeout + args.rounds * (args.drop_timeout + args.hold + args.recover_timeout
                                                      + args.settle + 10)
    try:
        async with asyncio.timeout(limit):
            return await bench.run()
    except BaseException:
        print(f"server log tail:\n{bench.server.log_tail()}", file=sys.stderr)
        raise
    finally:
        await bench.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if os.geteuid() != 0 or shutil.which("tc") is None:
        sys.exit("this benchmark shapes the loopback link with tc: run it as root with iproute2 installed")
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"{CHROMIUM} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="bench_simulcast-"))
    try:
        results = asyncio.run(_amain(args, workdir))
    except BaseException:
        print(f"benchmark failed; work directory kept: {workdir}", file=sys.stderr)
        raise
    print()
    print(report(results, args))
    if args.json:
        print(json.dumps(results))
    if args.keep:
        print(f"work directory: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
