"""UpTrack: one track a participant publishes, as the server receives it.

Per arriving packet (RFC 3550 §5.1): unwrap sequence number and timestamp, store the
packet once in the packet cache, feed the NACK generator and the reception statistics,
detect keyframes, and hand the packet to every DownTrack. RTX packets from the
publisher (RFC 4588) are restored to their original sequence number first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from .core.codecs import is_keyframe, rtx_original_sequence
from .core.keyframe import KeyframeRequester
from .core.nack import NackGenerator
from .core.packet_cache import PacketCache
from .core.receive_stats import ReceiveStats
from .core.rtcp import ReportBlock, SenderReport
from .core.rtp import RtpPacket
from .core.seqnum import Unwrapper
from .metrics import COUNTERS, LATENCY_SAMPLE_EVERY
from .rtc.adapter import CodecInfo

if TYPE_CHECKING:
    from .downtrack import DownTrack

__all__ = ["SourcePacket", "UpTrack"]

VIDEO_CACHE_PACKETS = 512
AUDIO_CACHE_PACKETS = 64


class SourcePacket:
    """A cached source packet: the parsed packet plus its unwrapped sequence number and
    timestamp, keyframe flag and arrival time (ms, monotonic)."""

    __slots__ = ("packet", "sequence", "timestamp", "keyframe", "arrival_ms")

    def __init__(self, packet: RtpPacket, sequence: int, timestamp: int, keyframe: bool, arrival_ms: float) -> None:
        self.packet = packet
        self.sequence = sequence
        self.timestamp = timestamp
        self.keyframe = keyframe
        self.arrival_ms = arrival_ms


class UpTrack:
    """A published audio or video track.

    Args:
        track_id: the room-wide track id (``TR_...``).
        publisher_id: the publishing participant's id.
        kind: ``audio`` or ``video``.
        source: ``camera``, ``microphone``, ``screen``, ...
        mid: the publisher's m-line carrying it.
        codec: the negotiated codec (payload type, clock rate, RTX payload type).
        extensions: the publisher's header extension ids by URI.
        send_pli: called with the media SSRC when a PLI must go to the publisher.
    """

    def __init__(
        self,
        track_id: str,
        publisher_id: str,
        kind: str,
        source: str,
        mid: str,
        codec: CodecInfo,
        extensions: dict[str, int],
        send_pli: Callable[[int], None],
    ) -> None:
        self.id = track_id
        self.publisher_id = publisher_id
        self.kind = kind
        self.source = source
        self.mid = mid
        self.codec = codec
        self.extensions = extensions
        self.muted = False
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.is_video = kind == "video"
        self.cache: PacketCache[SourcePacket] = PacketCache(
            VIDEO_CACHE_PACKETS if self.is_video else AUDIO_CACHE_PACKETS
        )
        self.nack = NackGenerator() if self.is_video else None
        self.keyframes = KeyframeRequester()
        self.stats: ReceiveStats | None = None
        self.downtracks: list[DownTrack] = []
        self.last_sender_report: SenderReport | None = None
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._mime = codec.mime_type
        self._counters = COUNTERS.kinds[kind] if COUNTERS.per_packet else None
        self._send_pli = send_pli
        self.keyframes_received = 0

    def describe(self) -> dict[str, object]:
        """The protocol's track object: ``{"id", "kind", "source", "muted"}``."""
        return {"id": self.id, "kind": self.kind, "source": self.source, "muted": self.muted}

    def stats_snapshot(self) -> dict[str, object]:
        """Per-track statistics for the admin endpoint (JSON-ready)."""
        stats = self.stats
        return {
            **self.describe(),
            "publisherId": self.publisher_id,
            "mid": self.mid,
            "codec": self.codec.mime_type,
            "ssrc": self.ssrc,
            "rtxSsrc": self.rtx_ssrc,
            "packetsReceived": stats.received if stats else 0,
            "packetsLost": stats.lost if stats else 0,
            "jitter": round(stats.jitter / self.codec.clock_rate, 6) if stats else 0.0,
            "keyframesReceived": self.keyframes_received,
            "keyframeRequestsSent": self.keyframes.sent,
            "subscribers": len(self.downtracks),
        }

    def bind_ssrc(self, ssrc: int) -> None:
        """Bind the media SSRC (from SDP, or from the MID extension of the first packet)."""
        if self.ssrc != ssrc:
            self.ssrc = ssrc
            self.stats = ReceiveStats(ssrc, self.codec.clock_rate)
            self._seq = Unwrapper(16)
            self._ts = Unwrapper(32)

    def on_rtp(self, packet: RtpPacket, now_ms: float) -> None:
        """Handle one media packet of this track (hot path)."""
        seq = self._seq.unwrap(packet.sequence_number)
        if seq in self.cache:
            COUNTERS.dropped["duplicate"] += 1
            return
        counters = self._counters
        if counters is not None:
            counters.packets_received += 1
            counters.bytes_received += len(packet.data)
        if self.nack is not None:
            self.nack.on_packet(seq, now_ms)
        stats = self.stats
        if stats is not None:
            stats.on_packet(seq, packet.timestamp, now_ms)
        keyframe = False
        if self.is_video and packet.payload_end > packet.payload_offset:
            keyframe = is_keyframe(self._mime, packet.data[packet.payload_offset : packet.payload_offset + 64])
            if keyframe:
                self.keyframes.on_keyframe(now_ms)
                self.keyframes_received += 1
        source = SourcePacket(packet, seq, self._ts.unwrap(packet.timestamp), keyframe, now_ms)
        self.cache.put(seq, source)
        for downtrack in self.downtracks:
            downtrack.forward(source, now_ms)
        if seq % LATENCY_SAMPLE_EVERY == 0 and counters is not None and self.downtracks:
            COUNTERS.forwarding_latency.observe(max(0.0, time.monotonic() - now_ms / 1000.0))

    def on_rtx(self, packet: RtpPacket, now_ms: float) -> None:
        """Handle an RTX packet from the publisher (RFC 4588 §4): restore and forward it.

        Padding-only RTX packets (bandwidth probes) are dropped and counted.
        """
        if packet.payload_end - packet.payload_offset < 2:
            COUNTERS.dropped["padding"] += 1
            return
        osn = rtx_original_sequence(packet.data[packet.payload_offset : packet.payload_offset + 2])
        restored = RtpPacket(
            packet.data,
            self.codec.payload_type,
            packet.marker,
            osn,
            packet.timestamp,
            self.ssrc or 0,
            packet.csrc,
            packet.extensions,
            packet.payload_offset + 2,
            packet.payload_end,
            False,
        )
        self.on_rtp(restored, now_ms)

    def on_sender_report(self, report: SenderReport, now_ms: float) -> None:
        """The publisher's SR: kept for RR (LSR/DLSR) and translated to every DownTrack."""
        self.last_sender_report = report
        if self.stats is not None:
            self.stats.on_sender_report(report.ntp_timestamp, now_ms)
        for downtrack in self.downtracks:
            downtrack.on_source_sender_report(report)

    def request_keyframe(self, now_ms: float) -> None:
        """Ask the publisher for a keyframe: coalesced and throttled (see KeyframeRequester)."""
        if self.is_video and self.ssrc is not None and self.keyframes.request(now_ms):
            self._send_pli(self.ssrc)

    def poll(self, now_ms: float, rtt_ms: float) -> list[int]:
        """Periodic work: retry keyframe requests; return the 16-bit sequence numbers to NACK."""
        if self.is_video and self.ssrc is not None and self.keyframes.poll(now_ms):
            self._send_pli(self.ssrc)
        if self.nack is None:
            return []
        return [s & 0xFFFF for s in self.nack.poll(now_ms, rtt_ms)]

    def report_block(self, now_ms: float) -> ReportBlock | None:
        """A reception report block for this track's media SSRC (RFC 3550 §6.4.1)."""
        return self.stats.report_block(now_ms) if self.stats is not None else None

    def close(self) -> None:
        """Detach every DownTrack (the track is unpublished)."""
        for downtrack in list(self.downtracks):
            downtrack.close()
        self.downtracks.clear()
