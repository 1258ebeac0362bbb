"""A load run: bots in rooms, joined at a given rate, sampled every interval.

:class:`LoadRun` builds the bots from a :class:`LoadConfig`, starts them at
``join_rate`` per second (all publishers first, so that subscribers find their tracks
in the roster), keeps them running for ``duration`` seconds after the last bot started
joining, takes a :class:`Sample` every ``interval`` seconds (bit rates per role,
latency percentiles, loss, CPU of the bots' process and of the server from its
``/metrics``), then reads the final counters, asks the server's ``/admin/rooms`` for
the layer each subscriber gets, and makes every bot leave.

Bounds: the whole run ends by itself within ``ramp + duration + join_timeout +
30 s`` (``ramp`` = bots / ``join_rate``); each HTTP request to the server has a 3 s
timeout. Bots only connect to ``config.url``; the server's HTTP endpoints are read
on the same host and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import psutil

from .bots import Bot, BotTotals, Role
from .latency import FrameSendLog
from .media import EncodedClip, encode_opus_clip, encode_vp8_clip
from .simulcast import SimulcastClips, simulcast_clips

__all__ = ["LoadConfig", "LoadRun", "Sample", "http_base", "parse_metrics", "percentiles"]

logger = logging.getLogger("loadtest.runner")

HTTP_TIMEOUT = 3.0  # seconds for one request to the server's /metrics or /admin/rooms
FINISH_GRACE = 30.0  # seconds past the planned end before every bot task is cancelled


@dataclass(slots=True)
class LoadConfig:
    """What to run.

    Attributes:
        url: the room service WebSocket URL (``ws://127.0.0.1:8080/ws``); must be a
            server you run.
        rooms: number of rooms (named ``{room_prefix}-{i}``).
        video_publishers, audio_publishers, subscribers: bots per room, per role.
        width, height, fps, video_bitrate: the VP8 clip (pixels, frames/s, bit/s).
        simulcast: video publishers send three RID layers (q/h/f: a quarter, half and
            the full resolution at 15 %, 35 % and 100 % of the video bit rate).
        join_rate: bots starting to join per second, all rooms together.
        duration: seconds the run lasts after the last bot started joining.
        data_rate: DataChannel messages per second each bot sends to its room (0: none).
        data_size: bytes per DataChannel message.
        join_timeout: seconds for one bot to be ready, else its join counts as failed.
        interval: seconds between samples.
        room_prefix: prefix of the room names.
        loopback_only: bots gather only 127.0.0.1 ICE candidates.
        server_metrics: read the server's ``/metrics`` (CPU, forwarded packets) and
            ``/admin/rooms`` (layers) on the URL's host and port.
        kill_bots, kill_at: abruptly stop ``kill_bots`` running subscribers (else
            publishers) ``kill_at`` seconds into the steady phase, as crashed bots
            (to see that the run and the room survive it).
    """

    url: str
    rooms: int = 1
    video_publishers: int = 1
    audio_publishers: int = 0
    subscribers: int = 2
    width: int = 640
    height: int = 480
    fps: int = 30
    video_bitrate: int = 1_000_000
    simulcast: bool = False
    join_rate: float = 5.0
    duration: float = 10.0
    data_rate: float = 0.0
    data_size: int = 100
    join_timeout: float = 20.0
    interval: float = 1.0
    room_prefix: str = "load"
    loopback_only: bool = True
    server_metrics: bool = True
    kill_bots: int = 0
    kill_at: float = 0.0

    def validate(self) -> None:
        """Raises ValueError for a configuration that cannot run."""
        if self.rooms < 1:
            raise ValueError("rooms must be >= 1")
        if min(self.video_publishers, self.audio_publishers, self.subscribers) < 0:
            raise ValueError("bot counts must be >= 0")
        if self.video_publishers + self.audio_publishers + self.subscribers < 1:
            raise ValueError("no bots to run")
        if self.join_rate <= 0 or self.duration <= 0 or self.interval <= 0 or self.join_timeout <= 0:
            raise ValueError("join rate, duration, interval and join timeout must be > 0")
        if self.data_rate < 0 or not 40 <= self.data_size <= 60_000:
            raise ValueError("data rate must be >= 0 and data size 40..60000 bytes")
        if self.width % 2 or self.height % 2 or not (16 <= self.width <= 1920 and 16 <= self.height <= 1088):
            raise ValueError("resolution must be even, 16x16 to 1920x1088")
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError("url must be ws:// or wss://")

    @property
    def bots_per_room(self) -> int:
        return self.video_publishers + self.audio_publishers + self.subscribers


@dataclass(slots=True)
class Sample:
    """One interval of the run (rates over the interval ending at ``t``).

    Attributes:
        t: seconds since the run started.
        bots: bots by state.
        recv_bps, sent_bps: received (subscribers) and sent (publishers, encoded
            payload) bit/s, per role.
        latency_ms: media latency p50, p95, p99 over the interval (None when no frame).
        data_latency_ms: DataChannel latency p50, p95, p99 (None when no message).
        loss: fraction of the packets expected in the interval that were lost.
        data_received_per_s: DataChannel messages delivered to bots per second.
        bots_cpu: CPU of the bots' process, fraction of one core.
        server_cpu: CPU of the server from its ``process_cpu_seconds_total``, fraction
            of one core, or None when not readable.
    """

    t: float
    bots: dict[str, int]
    recv_bps: dict[str, float]
    sent_bps: dict[str, float]
    latency_ms: tuple[float, float, float] | None
    data_latency_ms: tuple[float, float, float] | None
    loss: float
    data_received_per_s: float
    bots_cpu: float
    server_cpu: float | None


def percentiles(values: Any, qs: tuple[float, ...] = (50, 95, 99)) -> tuple[float, ...] | None:
    """The ``qs`` percentiles of ``values`` (any sequence of numbers), or None if empty."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None
    return tuple(float(v) for v in np.percentile(data, qs))


def http_base(ws_url: str) -> str:
    """``ws://host:port/ws`` -> ``http://host:port`` (``wss`` -> ``https``)."""
    parts = urllib.parse.urlsplit(ws_url)
    return urllib.parse.urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "", "", ""))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{name{labels}: value}`` (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float] | None, name: str) -> float | None:
    """Sum of every sample of the metric ``name`` (all label sets), or None."""
    if samples is None:
        return None
    values = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    return sum(values) if values else None


@dataclass(slots=True)
class _Latencies:
    """Every latency sample of the run, flattened (arrival, ms) pairs, per source."""

    media: array = field(default_factory=lambda: array("d"))
    data: array = field(default_factory=lambda: array("d"))


class LoadRun:
    """One run of :class:`LoadConfig` (use once).

    Attributes:
        config: the configuration.
        bots: every bot, in start order.
        samples: the :class:`Sample` timeline.
        started_at: monotonic seconds at the start.
        server_before, server_after: the server's ``/metrics`` samples at the start
            and at the end of the steady phase (before the bots leave), or None.
        admin: the server's ``/admin/rooms`` JSON at the end, or None.
        layers: :meth:`subscriber_layers` at the end of the steady phase.
        latencies: per bot name, every media latency sample (ms) of the run.
        data_latencies: every DataChannel latency sample (ms) of the run.
        errors: run-level problems (e.g. the server's metrics not readable).
    """

    def __init__(self, config: LoadConfig) -> None:
        """Raises ValueError for an invalid configuration (see LoadConfig.validate)."""
        config.validate()
        self.config = config
        self.bots: list[Bot] = []
        self.samples: list[Sample] = []
        self.started_at = 0.0
        self.steady_at = 0.0
        self.ended_at = 0.0
        self.server_before: dict[str, float] | None = None
        self.server_after: dict[str, float] | None = None
        self.admin: dict[str, Any] | None = None
        self.latencies: dict[str, array] = {}
        self.data_latencies = array("d")
        self.errors: list[str] = []
        self.final_totals: dict[str, BotTotals] = {}
        self.killed: list[str] = []
        self.layers: dict[str, dict[str, str]] = {}
        self._interval_media = array("d")
        self._interval_data = array("d")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._early = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._process = psutil.Process()
        self._last_totals: dict[str, BotTotals] = {}
        self._last_cpu: tuple[float, float] | None = None
        self._last_server_cpu: tuple[float, float] | None = None

    # ------------------------------------------------------------------ building

    def _build_bots(self, video: EncodedClip | None, audio: EncodedClip, layers: SimulcastClips | None = None) -> None:
        c = self.config
        logs: dict[str, FrameSendLog] = {}
        publishers: list[Bot] = []
        subscribers: list[Bot] = []
        common = dict(url=c.url, video_clip=video, simulcast_clips=layers, audio_clip=audio, send_logs=logs, data_rate=c.data_rate,
                      data_size=c.data_size, join_timeout=c.join_timeout, loopback_only=c.loopback_only)
        for r in range(c.rooms):
            room = f"{c.room_prefix}-{r}"
            for i in range(c.video_publishers):
                publishers.append(Bot(name=f"{room}-vpub-{i}", room=room, role=Role.VIDEO, **common))
            for i in range(c.audio_publishers):
                publishers.append(Bot(name=f"{room}-apub-{i}", room=room, role=Role.AUDIO, **common))
            for i in range(c.subscribers):
                subscribers.append(Bot(name=f"{room}-sub-{i}", room=room, role=Role.SUBSCRIBER, **common))
        self.bots = publishers + subscribers

    @property
    def ramp(self) -> float:
        """Seconds from the first bot's start to the last one's."""
        return (len(self.bots) - 1) / self.config.join_rate if self.bots else 0.0

    # ------------------------------------------------------------------- running

    async def run(self, on_sample: Callable[[LoadRun, Sample], None] | None = None) -> None:
        """Run to the end. ``on_sample`` is called after every sample (progress display).

        Never raises for what bots or the server do (they end up in the bots' states
        and :attr:`errors`); raises ValueError for an invalid configuration and
        whatever encoding the clip raises.
        """
        c = self.config
        video = layers = None
        if c.video_publishers and c.simulcast:
            layers = simulcast_clips(c.width, c.height, c.fps, c.video_bitrate)
        elif c.video_publishers:
            video = encode_vp8_clip(c.width, c.height, c.fps, bitrate=c.video_bitrate)
        audio = encode_opus_clip()
        self._build_bots(video, audio, layers)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))
        try:
            if c.server_metrics:
                self.server_before = await self._scrape()
                if self.server_before is None:
                    self.errors.append(f"server metrics not readable at {http_base(c.url)}/metrics")
            self.started_at = time.monotonic()
            self.steady_at = self.started_at + self.ramp
            end_at = self.steady_at + c.duration
            self._last_cpu = (self.started_at, sum(self._process.cpu_times()[:2]))
            for i, bot in enumerate(self.bots):
                start_at = self.started_at + i / c.join_rate
                self._tasks[bot.name] = asyncio.create_task(bot.run(start_at, self._stop), name=bot.name)
            killer = asyncio.create_task(self._kill_later()) if c.kill_bots else None
            next_sample = self.started_at + c.interval
            while not self._early.is_set():
                now = time.monotonic()
                if now >= end_at:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._early.wait(), max(0.0, min(next_sample, end_at) - now))
                if time.monotonic() >= next_sample - 1e-3:
                    sample = await self._sample()
                    if on_sample is not None:
                        on_sample(self, sample)
                    next_sample += c.interval
            if killer is not None:
                killer.cancel()
            await self._finish()
        finally:
            # Whatever happened above, no bot outlives the run (each closes on cancel).
            self._stop.set()
            left = [t for t in self._tasks.values() if not t.done()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            await self._http.close()

    def request_stop(self) -> None:
        """End the run early (e.g. on Ctrl-C): the final counters are read and the
        bots leave as at a normal end."""
        if not self._early.is_set():
            self.errors.append("stopped early on request")
        self._early.set()

    async def _kill_later(self) -> None:
        """Kill ``kill_bots`` running bots (subscribers first) at ``steady + kill_at``."""
        c = self.config
        await asyncio.sleep(max(0.0, self.steady_at + c.kill_at - time.monotonic()))
        running = [b for b in self.bots if b.state == "running"]
        running.sort(key=lambda b: b.role is not Role.SUBSCRIBER)
        for bot in running[: c.kill_bots]:
            logger.info("killing bot %s", bot.name)
            self.killed.append(bot.name)
            bot.kill()
            self._tasks[bot.name].cancel()

    async def _finish(self) -> None:
        """Final counters and server state, then every bot leaves (bounded)."""
        self.ended_at = time.monotonic()
        self._collect_latencies()
        for bot in self.bots:
            self.final_totals[bot.name] = bot.totals()
        await asyncio.gather(*(b.final_rtp_sent() for b in self.bots if b.role is not Role.SUBSCRIBER))
        if self.config.server_metrics:
            self.server_after = await self._scrape()
            self.admin = await self._get_json("/admin/rooms")
        self.layers = self.subscriber_layers()  # before leaving empties the rosters
        self._stop.set()
        tasks = list(self._tasks.values())
        done, pending = await asyncio.wait(tasks, timeout=self.config.join_timeout + FINISH_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pending:
            self.errors.append(f"{len(pending)} bots did not finish in time and were cancelled")

    def _collect_latencies(self) -> None:
        for bot in self.bots:
            media, data = bot.drain_latencies()
            if len(media):
                self.latencies.setdefault(bot.name, array("d")).extend(media[1::2])
            if len(data):
                self.data_latencies.extend(data[1::2])
                self._interval_data.extend(data[1::2])
            if len(media):
                self._interval_media.extend(media[1::2])

    async def _sample(self) -> Sample:
        now = time.monotonic()
        self._interval_media = array("d")
        self._interval_data = array("d")
        self._collect_latencies()
        recv: dict[str, float] = {r.value: 0.0 for r in Role}
        sent: dict[str, float] = {r.value: 0.0 for r in Role}
        expected = lost = data_received = 0
        states: dict[str, int] = {}
        for bot in self.bots:
            states[bot.state] = states.get(bot.state, 0) + 1
            totals = bot.totals()
            last = self._last_totals.get(bot.name)
            self._last_totals[bot.name] = totals
            if last is None:
                last = BotTotals(at=self._last_sample_at(now))
            dt = max(1e-6, totals.at - last.at)
            recv[bot.role.value] += (totals.recv_bytes - last.recv_bytes) * 8 / dt
            sent[bot.role.value] += (totals.sent_bytes - last.sent_bytes) * 8 / dt
            expected += totals.recv_expected - last.recv_expected
            lost += totals.recv_lost - last.recv_lost
            data_received += totals.data_received - last.data_received
        cpu_now = sum(self._process.cpu_times()[:2])
        assert self._last_cpu is not None
        bots_cpu = (cpu_now - self._last_cpu[1]) / max(1e-6, now - self._last_cpu[0])
        self._last_cpu = (now, cpu_now)
        server_cpu = await self._server_cpu(now) if self.config.server_metrics else None
        interval = now - self._last_sample_at(now)
        sample = Sample(
            t=now - self.started_at,
            bots=states,
            recv_bps=recv,
            sent_bps=sent,
            latency_ms=percentiles(self._interval_media),  # type: ignore[arg-type]
            data_latency_ms=percentiles(self._interval_data),  # type: ignore[arg-type]
            loss=max(0, lost) / expected if expected > 0 else 0.0,
            data_received_per_s=data_received / max(1e-6, interval),
            bots_cpu=bots_cpu,
            server_cpu=server_cpu,
        )
        self.samples.append(sample)
        return sample

    def _last_sample_at(self, now: float) -> float:
        return self.started_at + self.samples[-1].t if self.samples else self.started_at

    async def _server_cpu(self, now: float) -> float | None:
        metrics = await self._scrape()
        cpu = metric_sum(metrics, "process_cpu_seconds_total")
        if cpu is None:
            return None
        last, self._last_server_cpu = self._last_server_cpu, (now, cpu)
        if last is None:
            return None
        return (cpu - last[1]) / max(1e-6, now - last[0])

    async def _scrape(self) -> dict[str, float] | None:
        assert self._http is not None
        try:
            async with self._http.get(http_base(self.config.url) + "/metrics", ssl=False) as response:
                if response.status != 200:
                    return None
                return parse_metrics(await response.text())
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _get_json(self, path: str) -> dict[str, Any] | None:
        assert self._http is not None
        try:
            async with self._http.get(http_base(self.config.url) + path, ssl=False) as response:
                if response.status != 200:
                    return None
                body = await response.json()
                return body if isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    # ------------------------------------------------------------------ results

    def subscriber_layers(self) -> dict[str, dict[str, str]]:
        """Per subscriber bot name: ``{video track id: layer}``. The layer comes from
        the bot's ``layer_changed`` events, else from ``/admin/rooms`` (the ``rid`` of
        the DownTrack), else ``"single"`` (not simulcast)."""
        admin_layers: dict[str, dict[str, str]] = {}
        for room in (self.admin or {}).get("rooms", []):
            for participant in room.get("participants", []):
                entries = {}
                for down in participant.get("subscribed", []):
                    if down.get("kind") == "audio":
                        continue
                    entries[str(down.get("trackId"))] = str(down.get("rid") or "single")
                admin_layers[str(participant.get("id"))] = entries
        result: dict[str, dict[str, str]] = {}
        for bot in self.bots:
            if bot.role is not Role.SUBSCRIBER or bot.client is None:
                continue
            from_admin = admin_layers.get(bot.participant_id or "", {})
            result[bot.name] = {
                track_id: bot.layers.get(track_id) or from_admin.get(track_id) or "single"
                for track_id, subscription in sorted(bot.client.subscriptions.items())
                if subscription.kind == "video"
            }
        return result

