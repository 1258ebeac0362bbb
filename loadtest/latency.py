"""Forwarding latency of video frames: publisher send time to subscriber arrival.

The method (publisher and subscriber bots run on one machine, so they share
``time.monotonic()``, a system-wide clock on Linux, even across processes):

1. The publisher loops a pre-encoded VP8 clip (:mod:`loadtest.media`). Before the run,
   :func:`clip_fingerprints` takes the first ``K`` bytes of every encoded frame (``K``
   from 16 up to 64, the smallest that tells all frames of the clip apart) and maps
   them to the frame's index in the clip. Frames whose prefix is shared by another
   frame even at 64 bytes are left out (never matched).
2. :class:`TimedVideoTrack` records, per clip index, the ``time.monotonic()`` at which
   it handed the frame to aiortc's sender (which packetizes, protects and sends it in
   the same event-loop turn) in a :class:`FrameSendLog`: the last two send times per
   index.
3. The server forwards RTP payloads unchanged but rewrites SSRC, sequence number,
   timestamp and header extensions (and, with simulcast, the VP8 picture id), so the
   subscriber skips the VP8 payload descriptor (RFC 7741 §4.2) of a packet that starts
   a frame (S bit set, partition index 0) and looks the next ``K`` bytes up in the
   fingerprints of the publisher of that stream (the subscription's track id leads to
   the publisher's log). The frame's latency is the packet's arrival time minus the
   latest recorded send time of that clip index that is not after the arrival.

Because the clip loops, one index is sent once per loop (2 s for the default clip):
a latency is attributed to the right loop as long as it is shorter than one loop
length, which is far beyond anything a working SFU adds. The figure includes the
publisher's packetization and SRTP, the network path (loopback here), the server and
the subscriber's SRTP unprotect; it is measured on the first packet of each frame.
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections.abc import Callable

import av

from sfu.core.codecs import parse_vp8_descriptor
from sfu.core.rtp import parse_rtp

from .counter import RtpCounter
from .media import EncodedClip, PreEncodedVideoTrack

__all__ = ["FrameArrivalCounter", "FrameSendLog", "LatencyCounter", "TimedVideoTrack", "clip_fingerprints", "frame_start"]

MIN_PREFIX = 16  # bytes of a frame's start used as its fingerprint, at least
MAX_PREFIX = 64  # ... and at most


def clip_fingerprints(clip: EncodedClip) -> tuple[int, dict[bytes, int]]:
    """The fingerprint length ``K`` (bytes) and ``{first K bytes of a frame: index}``
    for a clip's frames.

    ``K`` is the smallest of 16, 32, 48, 64 that tells every frame apart; frames that
    collide even at 64 bytes (e.g. identical frames) are left out of the map.
    """
    prefix = MIN_PREFIX
    while True:
        seen: dict[bytes, list[int]] = {}
        for index, frame in enumerate(clip.packets):
            seen.setdefault(frame[:prefix], []).append(index)
        if all(len(v) == 1 for v in seen.values()) or prefix >= MAX_PREFIX:
            return prefix, {k: v[0] for k, v in seen.items() if len(v) == 1}
        prefix += 16


def frame_start(payload: bytes, prefix: int) -> bytes | None:
    """The first ``prefix`` bytes of the VP8 frame when this RTP payload starts a
    frame (descriptor S bit set, partition index 0; RFC 7741 §4.2), else None."""
    try:
        descriptor = parse_vp8_descriptor(payload)
    except ValueError:
        return None
    if not descriptor.start_of_partition or descriptor.partition_index != 0:
        return None
    start = descriptor.size
    return bytes(payload[start : start + prefix])


class FrameSendLog:
    """When each frame of one publisher's looped clip was sent (publisher side).

    Attributes:
        prefix: the fingerprint length, bytes.
        fingerprints: ``{frame prefix: clip index}`` (see :func:`clip_fingerprints`).
        sent: frames recorded.
    """

    def __init__(self, clip: EncodedClip, history: bool = False) -> None:
        """With ``history``, every send time is kept (for :meth:`latency_ms`, when
        the arrivals are recorded in another process: 8 bytes per frame sent)."""
        self.prefix, self.fingerprints = clip_fingerprints(clip)
        count = len(clip.packets)
        self._last = array("d", [math.nan]) * count
        self._prev = array("d", [math.nan]) * count
        self.history: list[array] | None = [array("d") for _ in range(count)] if history else None
        self.sent = 0

    def record(self, index: int, sent_at: float) -> None:
        """Frame ``index`` of the clip was sent at ``sent_at`` (monotonic seconds)."""
        self._prev[index] = self._last[index]
        self._last[index] = sent_at
        if self.history is not None:
            self.history[index].append(sent_at)
        self.sent += 1

    def latency_ms(self, index: int, arrival: float) -> float | None:
        """Latency (ms) of clip frame ``index`` arriving at ``arrival``: from its
        latest send not after the arrival (needs ``history``), or None."""
        assert self.history is not None, "FrameSendLog(history=True) needed"
        times = self.history[index]
        pos = bisect.bisect_right(times, arrival) - 1
        return (arrival - times[pos]) * 1000.0 if pos >= 0 else None

    def send_time(self, fingerprint: bytes, arrival: float) -> float | None:
        """The send time (monotonic seconds) of the frame that starts with
        ``fingerprint`` and arrived at ``arrival``, or None when the fingerprint is
        unknown or no send of it precedes the arrival."""
        index = self.fingerprints.get(fingerprint)
        if index is None:
            return None
        last = self._last[index]
        if last <= arrival:  # False for NaN
            return last
        prev = self._prev[index]
        return prev if prev <= arrival else None


class TimedVideoTrack(PreEncodedVideoTrack):
    """A :class:`PreEncodedVideoTrack` that records each frame's send time in a
    :class:`FrameSendLog` (``log``) and counts what it sent.

    Attributes:
        log: the send log (shared with subscribers in the same process).
        frames_sent, bytes_sent: frames handed to the sender and their encoded size
            (bytes, VP8 payload only).
    """

    def __init__(self, clip: EncodedClip, log: FrameSendLog | None = None) -> None:
        super().__init__(clip)
        self.log = log or FrameSendLog(clip)
        self.frames_sent = 0
        self.bytes_sent = 0

    async def recv(self) -> av.Packet:  # type: ignore[override]
        """The next frame, when it is due; records its send time."""
        packet = await super().recv()
        index = (self._index - 1) % len(self.clip.packets)
        self.log.record(index, time.monotonic())
        self.frames_sent += 1
        self.bytes_sent += packet.size
        return packet


class LatencyCounter(RtpCounter):
    """An :class:`RtpCounter` that also measures each video frame's forwarding latency.

    Args:
        resolve: maps the m-line (mid) a stream arrives on to the publisher's
            :class:`FrameSendLog`, or None when it is not known (yet); asked once per
            SSRC until it answers.
        max_samples: latency samples kept until :meth:`drain` (older ones are
            dropped and counted in ``dropped_samples``), so memory stays bounded.

    Attributes:
        latencies: ``(arrival monotonic s, latency ms)`` pairs since the last drain,
            flattened into one array.
        matched, unmatched: frame starts whose send time was found / not found.
    """

    def __init__(self, resolve: Callable[[str], FrameSendLog | None], max_samples: int = 100_000) -> None:
        super().__init__()
        self._resolve = resolve
        self._logs: dict[int, FrameSendLog] = {}
        self.max_samples = max_samples
        self.latencies = array("d")
        self.matched = 0
        self.unmatched = 0
        self.dropped_samples = 0

    def on_rtp(self, data: bytes, arrival_ms: float) -> None:
        """Count the packet (:meth:`RtpCounter.on_rtp`); if it starts a VP8 frame,
        record the frame's latency."""
        super().on_rtp(data, arrival_ms)
        try:
            packet = parse_rtp(data)
        except ValueError:
            return
        if self._pt_mime.get(packet.payload_type, "").lower() != "video/vp8":
            return
        log = self._logs.get(packet.ssrc)
        if log is None:
            mid = self._ssrc_mid.get(packet.ssrc)
            log = self._resolve(mid) if mid is not None else None
            if log is None:
                return
            self._logs[packet.ssrc] = log
        fingerprint = frame_start(packet.payload, log.prefix)
        if fingerprint is None:
            return
        arrival = arrival_ms / 1000.0
        sent_at = log.send_time(fingerprint, arrival)
        if sent_at is None:
            self.unmatched += 1
            return
        self.matched += 1
        if len(self.latencies) >= 2 * self.max_samples:
            self.dropped_samples += 1
            return
        self.latencies.append(arrival)
        self.latencies.append((arrival - sent_at) * 1000.0)

    def drain(self) -> array:
        """The ``(arrival, latency ms)`` pairs since the last drain, flattened."""
        samples, self.latencies = self.latencies, array("d")
        return samples


class FrameArrivalCounter(RtpCounter):
    """An :class:`RtpCounter` that records, for each VP8 frame start of a known clip,
    ``(arrival monotonic s, clip index)``: the subscriber half of the latency
    measurement when the publisher runs in another process (the parent matches them
    with :meth:`FrameSendLog.latency_ms`). Frames of unknown fingerprint are counted
    in ``unmatched``.

    Args:
        prefix, fingerprints: from :func:`clip_fingerprints` of the publisher's clip.
        max_samples: arrivals kept between drains (more are counted in
            ``dropped_samples``).
    """

    def __init__(self, prefix: int, fingerprints: dict[bytes, int], max_samples: int = 100_000) -> None:
        super().__init__()
        self.prefix = prefix
        self.fingerprints = fingerprints
        self.max_samples = max_samples
        self.arrivals = array("d")
        self.unmatched = 0
        self.dropped_samples = 0

    def on_rtp(self, data: bytes, arrival_ms: float) -> None:
        """Count the packet; note the arrival of a frame start."""
        super().on_rtp(data, arrival_ms)
        try:
            packet = parse_rtp(data)
        except ValueError:
            return
        if self._pt_mime.get(packet.payload_type, "").lower() != "video/vp8":
            return
        fingerprint = frame_start(packet.payload, self.prefix)
        if fingerprint is None:
            return
        index = self.fingerprints.get(fingerprint)
        if index is None:
            self.unmatched += 1
        elif len(self.arrivals) >= 2 * self.max_samples:
            self.dropped_samples += 1
        else:
            self.arrivals.append(arrival_ms / 1000.0)
            self.arrivals.append(float(index))

    def drain(self) -> array:
        """The ``(arrival, index)`` pairs since the last drain, flattened."""
        arrivals, self.arrivals = self.arrivals, array("d")
        return arrivals
