"""Load-test bots: one :class:`Bot` is one participant of the room protocol in a role.

Roles (:class:`Role`):

* ``video_publisher``: publishes a looped pre-encoded VP8 clip and Opus audio
  (:class:`~loadtest.latency.TimedVideoTrack` records each frame's send time);
* ``audio_publisher``: publishes Opus audio only;
* ``subscriber``: subscribes to every track of its room and counts what arrives with
  a :class:`~loadtest.latency.LatencyCounter` (no decoding).

Publishers only publish: a bot that counts received RTP runs no encoder, so one
aiortc peer connection cannot both loop pre-encoded media and count. With
``data_rate`` > 0 every bot also sends that many DataChannel messages per second to
its room (send time inside) and measures the delivery latency of what it receives.

Every bot loop is bounded: joining by ``join_timeout``, running by the runner's stop
event, leaving by :data:`LEAVE_TIMEOUT`. A failure of one bot (refused join, timeout,
lost connection, an exception) is recorded in the bot (``state``, ``error``) and never
propagates to the run.

Units: times are ``time.monotonic()`` seconds unless a name says ms; rates per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av

from .client import RoomClient, RoomError
from .data import ChannelSpec, DataMessage
from .latency import FrameSendLog, LatencyCounter, TimedVideoTrack
from .media import EncodedClip, PreEncodedAudioTrack
from .simulcast import SimulcastClips, SimulcastSender

__all__ = ["Bot", "BotTotals", "CountingAudioTrack", "DATA_LABEL", "LEAVE_TIMEOUT", "Role"]

logger = logging.getLogger("loadtest.bots")

DATA_LABEL = "loadtest"  # the DataChannel every bot opens when data_rate > 0
LEAVE_TIMEOUT = 5.0  # seconds a bot may take to leave
DATA_TICK = 0.05  # seconds between DataChannel send bursts
DATA_BUFFER_LIMIT = 1 << 20  # bytes queued on the channel above which a message is skipped
MAX_DATA_SAMPLES = 200_000  # DataChannel latency samples kept per bot between drains


class Role(enum.StrEnum):
    """What a bot does in its room."""

    VIDEO = "video_publisher"
    AUDIO = "audio_publisher"
    SUBSCRIBER = "subscriber"


class CountingAudioTrack(PreEncodedAudioTrack):
    """A :class:`PreEncodedAudioTrack` that counts the packets and bytes it sent."""

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__(clip)
        self.frames_sent = 0
        self.bytes_sent = 0

    async def recv(self) -> av.Packet:  # type: ignore[override]
        """The next Opus packet, when due."""
        packet = await super().recv()
        self.frames_sent += 1
        self.bytes_sent += packet.size
        return packet


@dataclass(slots=True)
class BotTotals:
    """A bot's cumulative counters at one instant.

    Attributes:
        at: when they were taken (monotonic s).
        recv_packets, recv_bytes: RTP packets and payload bytes received (subscribers).
        recv_expected, recv_lost: packets expected from sequence numbers, and lost.
        recv_frames, recv_keyframes, recv_gaps: video frames (marker bit), keyframes,
            sequence gaps received.
        video_streams, audio_streams: streams with at least one packet.
        first_arrival, last_arrival: first and last received packet (monotonic s;
            0 when none).
        sent_frames, sent_bytes: frames (video) / packets (audio) handed to the sender
            and their payload bytes (publishers).
        sent_since: when the first of them was handed over (monotonic s; 0 if none).
        data_sent, data_skipped, data_received: DataChannel messages.
    """

    at: float = 0.0
    recv_packets: int = 0
    recv_bytes: int = 0
    recv_expected: int = 0
    recv_lost: int = 0
    recv_frames: int = 0
    recv_keyframes: int = 0
    recv_gaps: int = 0
    video_streams: int = 0
    audio_streams: int = 0
    first_arrival: float = 0.0
    last_arrival: float = 0.0
    sent_frames: int = 0
    sent_bytes: int = 0
    sent_since: float = 0.0
    data_sent: int = 0
    data_skipped: int = 0
    data_received: int = 0


@dataclass(slots=True)
class Bot:
    """One bot. Create it, then ``await bot.run(start_at, stop)`` in a task.

    Attributes:
        name: participant name (unique in the run).
        room: the room it joins.
        role: its :class:`Role`.
        url: the room service WebSocket URL (the only address it connects to).
        state: ``pending`` -> ``joining`` -> ``running`` -> ``left``; or ``failed``
            (join refused or timed out), ``died`` (lost its connection or raised
            while running), ``killed`` (stopped abruptly by :meth:`kill`),
            ``not_started`` (the run ended before its turn).
        error: why it failed or died (``room_full``, ``timeout``, ...), else None.
        ready_at: when it became ready (monotonic s), once joined.
        join_ms: time from the start of its join to being ready (publishers: tracks
            accepted and the peer connection connected; subscribers: subscribed to
            every track in the room's roster at join and connected), ms.
        participant_id: the server's id for it, once joined.
        counter: the subscriber's :class:`LatencyCounter`, else None.
        layers: the simulcast layer the server forwards to this subscriber, per track
            id, from ``layer_changed`` events (``"paused"`` when paused).
        rtp_sent: RTP packets its senders sent (``outbound-rtp`` stats, plus the
            simulcast sender's), filled by :meth:`final_rtp_sent`.
        simulcast_clips: with these, a video publisher sends its video as three RID
            layers (:mod:`loadtest.simulcast`) instead of ``video_clip``.
    """

    name: str
    room: str
    role: Role
    url: str
    video_clip: EncodedClip | None = None
    simulcast_clips: SimulcastClips | None = None
    audio_clip: EncodedClip | None = None
    send_logs: dict[str, FrameSendLog] = field(default_factory=dict)
    data_rate: float = 0.0
    data_size: int = 100
    join_timeout: float = 20.0
    loopback_only: bool = True
    state: str = "pending"
    error: str | None = None
    join_ms: float | None = None
    ready_at: float | None = None
    participant_id: str | None = None
    client: RoomClient | None = None
    counter: LatencyCounter | None = None
    video_track: TimedVideoTrack | None = None
    audio_track: CountingAudioTrack | None = None
    layers: dict[str, str] = field(default_factory=dict)
    rtp_sent: int = 0
    data_sent: int = 0
    data_skipped: int = 0
    data_received: int = 0
    data_latencies: array = field(default_factory=lambda: array("d"))
    _killed: bool = False
    _simulcast: SimulcastSender | None = None
    _simulcast_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, start_at: float, stop: asyncio.Event) -> None:
        """Wait until ``start_at`` (monotonic s), join, run until ``stop`` is set,
        then leave. Never raises (but is cancellable); the outcome is in ``state``."""
        delay = start_at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            self.state = "not_started"
            return
        self.state = "joining"
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.join_timeout):
                await self._join()
        except RoomError as exc:
            self._fail(exc.code or "refused", str(exc))
        except TimeoutError:
            self._fail("timeout", f"not ready within {self.join_timeout:g} s")
        except (ConnectionError, aiohttp.ClientError, OSError) as exc:
            self._fail("connection", f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            await self._abort()
            raise
        except Exception as exc:  # a bot's bug must not end the run
            logger.exception("bot %s failed to join", self.name)
            self._fail("exception", f"{type(exc).__name__}: {exc}")
        if self.state == "failed":
            await self._close_quietly()
            return
        self.ready_at = time.monotonic()
        self.join_ms = (self.ready_at - began) * 1000.0
        self.state = "running"
        helpers = [asyncio.create_task(self._read_events())]
        if self.data_rate > 0:
            helpers.append(asyncio.create_task(self._send_data()))
        try:
            await self._watch(stop)
        except asyncio.CancelledError:
            await self._abort()
            raise
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        if self.state == "running":
            await self._leave()

    def kill(self) -> None:
        """Mark the bot as killed; the caller then cancels its task, which closes its
        WebSocket and peer connection without ``leave``, as a crashed bot would."""
        self._killed = True

    async def _watch(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set, or when the connection is lost (state ``died``)."""
        client = self.client
        assert client is not None and client.pc is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if not client.connected:
                self._die("disconnected", "the server closed the WebSocket")
                await self._close_quietly()
                return
            if client.pc.connectionState in ("failed", "closed"):
                self._die("peer_connection", f"peer connection {client.pc.connectionState}")
                await self._close_quietly()
                return

    async def _leave(self) -> None:
        assert self.client is not None
        self._stop_simulcast()
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await self.client.leave()
            self.state = "left"
        except Exception as exc:  # leaving is best effort; the run goes on
            self._die("leave", f"{type(exc).__name__}: {exc}")
            await self._close_quietly()

    async def _abort(self) -> None:
        """Cancelled: close without ``leave`` (a kill, or the run's hard deadline)."""
        if self._killed:
            self.state = "killed"
            self.error = self.error or "killed"
        elif self.state in ("joining", "running", "pending"):
            self._die("cancelled", "stopped by the run's deadline")
        await self._close_quietly()

    def _stop_simulcast(self) -> None:
        if self._simulcast_task is not None:
            self._simulcast_task.cancel()

    async def _close_quietly(self) -> None:
        self._stop_simulcast()
        if self.client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEAVE_TIMEOUT):
                    await self.client.close()

    def _fail(self, code: str, detail: str) -> None:
        self.state = "failed"
        self.error = code
        logger.info("bot %s: join failed: %s", self.name, detail)

    def _die(self, code: str, detail: str) -> None:
        self.state = "died"
        self.error = code
        logger.info("bot %s died: %s", self.name, detail)

    # -------------------------------------------------------------------- joining

    async def _join(self) -> None:
        channels = [ChannelSpec(DATA_LABEL)] if self.data_rate > 0 else []
        if self.role is Role.SUBSCRIBER:
            self.counter = LatencyCounter(self._send_log_for_mid)
            self.client = RoomClient(
                self.url, count_rtp=self.counter, channels=channels, on_data=self._on_data,
                loopback_only=self.loopback_only, request_timeout=self.join_timeout,
            )
        else:
            self.client = RoomClient(
                self.url, auto_subscribe=False, channels=channels, on_data=self._on_data,
                loopback_only=self.loopback_only, request_timeout=self.join_timeout,
            )
        client = self.client
        await client.join(self.room, self.name)
        self.participant_id = client.participant_id
        if self.role is Role.SUBSCRIBER:
            roster = {t for p in client.participants.values() for t in p.tracks}
            if roster:
                await client.wait_until(lambda: roster <= set(client.subscriptions) or not client.connected,
                                        timeout=self.join_timeout)
                await client.wait_connected(self.join_timeout)
            return
        assert self.audio_clip is not None
        self.audio_track = CountingAudioTrack(self.audio_clip)
        tracks: list[Any] = [self.audio_track]
        if self.role is Role.VIDEO and self.simulcast_clips is not None:
            log = FrameSendLog(self.simulcast_clips.combined)
            track_id, self._simulcast = await client.publish_simulcast(self.simulcast_clips, log=log)
            self.send_logs[track_id] = log
        elif self.role is Role.VIDEO:
            assert self.video_clip is not None
            self.video_track = TimedVideoTrack(self.video_clip)
            tracks.insert(0, self.video_track)
        ids = await client.publish(tracks)
        if self.video_track is not None:
            self.send_logs[ids[0]] = self.video_track.log
        await client.wait_connected(self.join_timeout)
        if self._simulcast is not None:
            self._simulcast_task = asyncio.create_task(self._simulcast.run(), name=f"{self.name}-simulcast")

    def _send_log_for_mid(self, mid: str) -> FrameSendLog | None:
        """The publisher's send log for the track arriving on ``mid`` (LatencyCounter)."""
        if self.client is None:
            return None
        for subscription in self.client.subscriptions.values():
            if subscription.mid == mid:
                return self.send_logs.get(subscription.track_id)
        return None

    # ---------------------------------------------------------------- running

    async def _read_events(self) -> None:
        """Drain the client's event queue (keeps memory flat) and note layer changes."""
        assert self.client is not None
        while True:
            event = await self.client.events.get()
            if event.get("type") == "layer_changed" and isinstance(event.get("trackId"), str):
                # rid is null for a track sent as a single encoding (docs/PROTOCOL.md).
                self.layers[event["trackId"]] = "paused" if event.get("paused") else str(event.get("rid") or "single")

    async def _send_data(self) -> None:
        """Send ``data_rate`` messages/s on :data:`DATA_LABEL` (to the whole room)
        until cancelled; a message is skipped while the channel's buffer is full."""
        assert self.client is not None
        start, scheduled, seq = time.monotonic(), 0, 0
        while True:
            due = int((time.monotonic() - start) * self.data_rate) + 1
            if due - scheduled > self.data_rate:  # more than a second behind: skip
                self.data_skipped += due - scheduled - int(self.data_rate)
                scheduled = due - int(self.data_rate)
            while scheduled < due:
                scheduled += 1
                try:
                    if self.client.buffered_amount(DATA_LABEL) > DATA_BUFFER_LIMIT:
                        self.data_skipped += 1
                        continue
                    head = f"{self.name} {seq} {time.monotonic():.6f} "
                    self.client.send_data(DATA_LABEL, head + "x" * max(0, self.data_size - len(head)))
                except Exception:  # channel closing or closed
                    self.data_skipped += 1
                    continue
                seq += 1
                self.data_sent += 1
            await asyncio.sleep(DATA_TICK)

    def _on_data(self, message: DataMessage) -> None:
        if message.label != DATA_LABEL or not isinstance(message.data, str):
            return
        parts = message.data.split(" ", 3)
        try:
            sent_at = float(parts[2])
        except (IndexError, ValueError):
            return
        self.data_received += 1
        if len(self.data_latencies) < 2 * MAX_DATA_SAMPLES:
            self.data_latencies.append(message.received_at)
            self.data_latencies.append((message.received_at - sent_at) * 1000.0)

    # ---------------------------------------------------------------- reading

    def totals(self) -> BotTotals:
        """The bot's cumulative counters now (cheap; no I/O)."""
        totals = BotTotals(at=time.monotonic(), data_sent=self.data_sent,
                           data_skipped=self.data_skipped, data_received=self.data_received)
        if self.counter is not None:
            for stats in self.counter.snapshot():
                totals.recv_packets += stats.packets
                totals.recv_bytes += stats.bytes
                totals.recv_expected += stats.expected
                totals.recv_lost += stats.lost
                totals.recv_gaps += stats.gaps
                if stats.packets:
                    first = totals.first_arrival
                    totals.first_arrival = stats.first_arrival if not first else min(first, stats.first_arrival)
                    totals.last_arrival = max(totals.last_arrival, stats.last_arrival)
                if stats.kind == "video":
                    totals.recv_frames += stats.frames
                    totals.recv_keyframes += stats.keyframes
                    totals.video_streams += 1 if stats.packets else 0
                elif stats.kind == "audio":
                    totals.audio_streams += 1 if stats.packets else 0
        for track in (self.video_track, self.audio_track):
            if track is not None:
                totals.sent_frames += track.frames_sent
                totals.sent_bytes += track.bytes_sent
                started = track._start  # the clip's first frame, monotonic s
                if started is not None:
                    totals.sent_since = started if not totals.sent_since else min(totals.sent_since, started)
        sender = self._simulcast
        if sender is not None and sender.started_at is not None:
            totals.sent_frames += sender.frames_sent
            totals.sent_bytes += sender.payload_bytes_sent
            totals.sent_since = sender.started_at if not totals.sent_since else min(totals.sent_since, sender.started_at)
        return totals

    def drain_latencies(self) -> tuple[array, array]:
        """Media and DataChannel latency samples since the last drain: two flattened
        ``(arrival monotonic s, latency ms)`` arrays."""
        media = self.counter.drain() if self.counter is not None else array("d")
        data, self.data_latencies = self.data_latencies, array("d")
        return media, data

    async def final_rtp_sent(self) -> int:
        """RTP packets this bot's senders sent so far (aiortc ``outbound-rtp`` stats);
        also stored in ``rtp_sent``. 0 for a subscriber or on any error."""
        client = self.client
        if client is None or self.role is Role.SUBSCRIBER:
            return 0
        total = 0
        with contextlib.suppress(Exception):
            for published in client.published.values():
                report = await published.transceiver.sender.getStats()
                total += sum(s.packetsSent for s in report.values() if s.type == "outbound-rtp")
        if self._simulcast is not None:
            total += self._simulcast.packets_sent
        self.rtp_sent = total
        return total
