"""DownTrack: one UpTrack forwarded to one subscriber.

The hot path asks the :class:`~sfu.core.forwarder.Forwarder` what to do with a packet,
writes the subscriber's header (SSRC, payload type, sequence number, timestamp and
the subscriber's own header extensions: its MID, a fresh abs-send-time, the audio
level) in front of the cached payload, and sends it. Subscriber feedback is handled
here: NACK (RFC 4585 §6.2.1) answered from the UpTrack's cache, by RTX where
negotiated (RFC 4588); PLI/FIR passed upstream; receiver reports kept for loss and RTT.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Callable

from .core.forwarder import DropReason, Forwarder, Translation
from .core.receive_stats import rtt_from_report_ms
from .core.rtcp import ReportBlock, SenderReport, build_sr
from .core.rtp import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    abs_send_time,
    build_extensions,
    write_packet,
    write_rtx_packet,
)
from .metrics import COUNTERS
from .rtc.adapter import MediaInfo

if TYPE_CHECKING:
    from .uptrack import SourcePacket, UpTrack

__all__ = ["DownTrack", "ntp_now"]

_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def ntp_now() -> int:
    """The current wall-clock time as a 64-bit NTP timestamp (RFC 3550 §4)."""
    t = time.time() + _NTP_EPOCH_OFFSET
    return int(t * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


class DownTrack:
    """Forwards ``uptrack`` on the subscriber's m-line ``media``.

    Args:
        uptrack: the published track.
        subscriber_id: the subscribing participant's id.
        media: the negotiated ``sendonly`` m-line (SSRCs, payload types, extension ids).
        send_rtp: sends one RTP packet to the subscriber (returns False if it could not).
        send_rtcp: sends one RTCP compound packet to the subscriber.
        connected: tells whether the subscriber's transport can send yet; nothing is
            forwarded before (so a video DownTrack never starts on a keyframe that
            cannot be delivered).

    Raises:
        ValueError: the m-line did not negotiate the UpTrack's codec.
    """

    def __init__(
        self,
        uptrack: UpTrack,
        subscriber_id: str,
        media: MediaInfo,
        send_rtp: Callable[[bytes], bool],
        send_rtcp: Callable[[bytes], bool],
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        codec = next(
            (c for c in media.codecs if c.mime_type.lower() == uptrack.codec.mime_type.lower()), None
        )
        if codec is None:
            raise ValueError(f"m-line {media.mid} has no {uptrack.codec.mime_type}")
        self.uptrack = uptrack
        self.subscriber_id = subscriber_id
        self.mid = media.mid
        self.ssrc = media.ssrc
        self.payload_type = codec.payload_type
        self.rtx_payload_type = codec.rtx_payload_type
        self.rtx_ssrc = media.rtx_ssrc if codec.rtx_payload_type is not None else None
        self.kind = uptrack.kind
        self.forwarder = Forwarder(
            needs_keyframe=uptrack.is_video,
            initial_sequence=random.randrange(0x10000),
            initial_timestamp=random.randrange(0x100000000),
        )
        self._mid_ext = (media.extensions[URI_MID], media.mid.encode()) if URI_MID in media.extensions else None
        self._abs_send_time_id = media.extensions.get(URI_ABS_SEND_TIME)
        level_out = media.extensions.get(URI_AUDIO_LEVEL)
        level_in = uptrack.extensions.get(URI_AUDIO_LEVEL)
        self._audio_level = (level_in, level_out) if level_in and level_out else None
        self._template = self._extension_template()
        self._mid_only = build_extensions([self._mid_ext] if self._mid_ext is not None else [])
        self._send_rtp = send_rtp
        self._connected = connected
        self._ready = False
        self._send_rtcp = send_rtcp
        self._counters = COUNTERS.kinds[uptrack.kind] if COUNTERS.per_packet else None
        self._rtx_sequence = random.randrange(0x10000)
        self.packets_sent = 0
        self.octets_sent = 0
        self.rtt_ms: float | None = None
        self.fraction_lost = 0.0
        self.closed = False

    def _extension_template(self) -> tuple[bytes, bytes] | None:
        """Precomputed bytes around the one per-packet value (abs-send-time or audio
        level), so the hot path writes ``head + value + tail`` (RFC 8285 §4.2)."""
        elements = [self._mid_ext] if self._mid_ext is not None else []
        if self._abs_send_time_id is not None:
            variable = (self._abs_send_time_id, 3)
        elif self._audio_level is not None:
            variable = (self._audio_level[1], 1)
        else:
            return None
        ext_id, size = variable
        if not 1 <= ext_id <= 14 or any(not 1 <= i <= 14 for i, _ in elements):
            return None
        body = b"".join(bytes(((i << 4) | (len(v) - 1),)) + v for i, v in elements)
        body += bytes(((ext_id << 4) | (size - 1),))
        padding = -(len(body) + size) % 4
        words = (len(body) + size + padding) // 4
        return b"\xbe\xde" + words.to_bytes(2, "big") + body, b"\x00" * padding

    def _extensions(self, source: SourcePacket, now_ms: float) -> bytes:
        template = self._template
        if template is not None:
            if self._abs_send_time_id is not None:
                return template[0] + abs_send_time(now_ms / 1000.0) + template[1]
            level = source.packet.extensions.get(self._audio_level[0])  # type: ignore[index]
            if level is None:
                return self._mid_only
            if len(level) == 1:
                return template[0] + level + template[1]
        elements = []
        if self._mid_ext is not None:
            elements.append(self._mid_ext)
        if self._abs_send_time_id is not None:
            elements.append((self._abs_send_time_id, abs_send_time(now_ms / 1000.0)))
        if self._audio_level is not None:
            level = source.packet.extensions.get(self._audio_level[0])
            if level is not None:
                elements.append((self._audio_level[1], level))
        return build_extensions(elements)

    def forward(self, source: SourcePacket, now_ms: float) -> DropReason | None:
        """Forward one source packet (hot path). Returns the DropReason if dropped."""
        if not self._ready:
            if not self._connected():
                COUNTERS.dropped[DropReason.NOT_CONNECTED.value] += 1
                return DropReason.NOT_CONNECTED
            self._ready = True
        packet = source.packet
        result = self.forwarder.translate(
            source.sequence, source.timestamp, source.keyframe, packet.payload_end == packet.payload_offset
        )
        if result.__class__ is not Translation:
            COUNTERS.dropped[result.value] += 1
            if result is DropReason.WAITING_FOR_KEYFRAME:
                self.uptrack.request_keyframe(now_ms)
            return result
        data = write_packet(
            packet,
            self.ssrc,
            self.payload_type,
            result.sequence_number,
            result.timestamp,
            packet.marker,
            self._extensions(source, now_ms),
        )
        if self._send_rtp(data):
            self.packets_sent += 1
            self.octets_sent += packet.payload_end - packet.payload_offset
            counters = self._counters
            if counters is not None:
                counters.packets_sent += 1
                counters.bytes_sent += len(data)
        else:
            COUNTERS.dropped["send_failed"] += 1
        return None

    def on_nack(self, lost: list[int], now_ms: float) -> int:
        """Retransmit what the subscriber NACKed (16-bit output sequence numbers).

        Returns:
            how many packets were retransmitted (the rest were no longer cached).
        """
        sent = 0
        for out_seq in lost:
            src = self.forwarder.source_sequence(out_seq)
            if src is None:
                continue
            source = self.uptrack.cache.get(src)
            if source is None:
                continue
            timestamp = (source.timestamp + self.forwarder.timestamp_offset) & 0xFFFFFFFF
            ext = self._extensions(source, now_ms)
            if self.rtx_ssrc is not None and self.rtx_payload_type is not None:
                self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
                data = write_rtx_packet(
                    source.packet, self.rtx_ssrc, self.rtx_payload_type, self._rtx_sequence, timestamp, out_seq, ext
                )
            else:
                data = write_packet(source.packet, self.ssrc, self.payload_type, out_seq, timestamp, source.packet.marker, ext)
            if self._send_rtp(data):
                sent += 1
        COUNTERS.retransmissions_sent += sent
        return sent

    def stats_snapshot(self) -> dict[str, object]:
        """Per-DownTrack statistics for the admin endpoint (JSON-ready)."""
        return {
            "mid": self.mid,
            "trackId": self.uptrack.id,
            "publisherId": self.uptrack.publisher_id,
            "kind": self.kind,
            "ssrc": self.ssrc,
            "started": self.forwarder.started,
            "packetsSent": self.packets_sent,
            "octetsSent": self.octets_sent,
            "rttMs": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "fractionLost": self.fraction_lost,
        }

    def on_keyframe_request(self, now_ms: float) -> None:
        """The subscriber sent PLI or FIR: ask the publisher (coalesced upstream)."""
        self.uptrack.request_keyframe(now_ms)

    def on_report_block(self, block: ReportBlock) -> None:
        """A reception report from the subscriber about this DownTrack: loss and RTT."""
        self.fraction_lost = block.fraction_lost / 256.0
        rtt = rtt_from_report_ms(block, ntp_now())
        if rtt is not None:
            self.rtt_ms = rtt

    def on_source_sender_report(self, report: SenderReport) -> None:
        """Send the subscriber an SR derived from the publisher's (RFC 3550 §6.4.1).

        The NTP time is the publisher's and the RTP timestamp is shifted by this
        DownTrack's timestamp offset, so the subscriber keeps the publisher's
        audio/video synchronization.
        """
        if not self.forwarder.started or self.closed:
            return
        sr = SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=report.ntp_timestamp,
            rtp_timestamp=(report.rtp_timestamp + self.forwarder.timestamp_offset) & 0xFFFFFFFF,
            packet_count=self.packets_sent,
            octet_count=self.octets_sent,
        )
        self._send_rtcp(build_sr(sr))

    def close(self) -> None:
        """Stop forwarding (unsubscribed, unpublished, or a participant left)."""
        self.closed = True
        if self in self.uptrack.downtracks:
            self.uptrack.downtracks.remove(self)
