"""Counting what a subscriber bot receives, straight from decrypted RTP: packets,
payload bytes, frames (marker bit), keyframes, VP8 keyframe size and losses, without
depayloading or decoding. ``RoomClient(count_rtp=True)`` wires an :class:`RtpCounter`
in through the SFU's aiortc adapter (``disable_media_engines`` / ``install_tap``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aiortc.sdp import SessionDescription

from sfu.core.codecs import is_keyframe, parse_vp8_descriptor
from sfu.core.rtp import parse_rtp
from sfu.core.seqnum import Unwrapper

__all__ = ["StreamStats", "RtpCounter"]


@dataclass(slots=True)
class StreamStats:
    """What one subscriber received on one SSRC, counted from decrypted RTP.

    Attributes:
        ssrc: the RTP stream's SSRC.
        kind: ``"audio"``, ``"video"`` or ``""`` when the payload type is unknown.
        mid: the m-line, when the SDP or the MID extension named it.
        packets: RTP packets received (duplicates included).
        bytes: RTP payload bytes received (headers and padding excluded).
        frames: video frames completed (packets with the marker bit); audio packets.
        keyframes: packets that start a keyframe.
        gaps: sequence-number jumps forward by more than one (each is one or more
            lost or reordered packets).
        width, height: size of the last VP8 keyframe, pixels (0 if none yet).
        first_seq, max_seq: lowest and highest unwrapped sequence number seen.
        first_arrival, last_arrival: arrival times of the first / last packet,
            ``time.monotonic()`` seconds.
    """

    ssrc: int
    kind: str = ""
    mid: str | None = None
    packets: int = 0
    bytes: int = 0
    frames: int = 0
    keyframes: int = 0
    gaps: int = 0
    width: int = 0
    height: int = 0
    first_seq: int = 0
    max_seq: int = 0
    first_arrival: float = 0.0
    last_arrival: float = 0.0

    @property
    def expected(self) -> int:
        """Packets expected from the sequence numbers (RFC 3550 §A.3)."""
        return self.max_seq - self.first_seq + 1 if self.packets else 0

    @property
    def lost(self) -> int:
        """Expected minus received, floored at 0 (duplicates can exceed expected)."""
        return max(0, self.expected - self.packets)


class _StreamState:
    """Per-SSRC counting state: the public :class:`StreamStats` and its unwrapper."""

    __slots__ = ("stats", "unwrapper", "mime")

    def __init__(self, ssrc: int, arrival: float) -> None:
        self.stats = StreamStats(ssrc=ssrc, first_arrival=arrival)
        self.unwrapper = Unwrapper(16)
        self.mime = ""


def _vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """Width and height from the start of a VP8 keyframe (RFC 6386 §9.1), else None."""
    try:
        offset = parse_vp8_descriptor(payload).size
    except ValueError:
        return None
    header = payload[offset : offset + 10]
    if len(header) < 10 or header[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", header, 6)
    return width & 0x3FFF, height & 0x3FFF


class RtpCounter:
    """Counts received RTP per SSRC without depayloading into frames or decoding.

    It is an ``sfu.rtc.adapter.RtcHandler``: feed it decrypted packets through
    :meth:`on_rtp` / :meth:`on_rtcp` and tell it what the SDP says with
    :meth:`update_from_sdp`. Cost: one RTP header parse per packet, plus a VP8
    descriptor peek per video packet.

    Attributes:
        rtcp_packets, rtcp_bytes: compound RTCP datagrams received and their size.
        rtx_packets, rtx_bytes: RTX packets (retransmissions, probing padding), not
            counted in any stream.
        malformed: datagrams that did not parse as RTP.
    """

    def __init__(self) -> None:
        self._streams: dict[int, _StreamState] = {}
        self._ssrc_mid: dict[int, str] = {}
        self._pt_mime: dict[int, str] = {}
        self._mid_ext_ids: set[int] = set()
        self.rtcp_packets = 0
        self.rtcp_bytes = 0
        self.rtx_packets = 0
        self.rtx_bytes = 0
        self.malformed = 0

    def update_from_sdp(self, sdp: str) -> None:
        """Learn SSRC -> mid, payload type -> codec and the MID extension id from an
        SDP (the remote answer: its ``a=ssrc`` lines name what the server sends)."""
        description = SessionDescription.parse(sdp)
        for media in description.media:
            if media.kind not in ("audio", "video"):
                continue
            mid = media.rtp.muxId
            for ssrc in media.ssrc:
                self._ssrc_mid[ssrc.ssrc] = mid
            for codec in media.rtp.codecs:
                self._pt_mime[codec.payloadType] = codec.mimeType
            for ext in media.rtp.headerExtensions:
                if ext.uri == "urn:ietf:params:rtp-hdrext:sdes:mid":
                    self._mid_ext_ids.add(ext.id)
        for state in self._streams.values():
            mid = self._ssrc_mid.get(state.stats.ssrc)
            if mid is not None:
                state.stats.mid = mid

    def on_rtp(self, data: bytes, arrival_ms: float) -> None:
        """Count one decrypted RTP packet that arrived at ``arrival_ms``
        (``time.monotonic()`` in milliseconds, as ``sfu.rtc.adapter`` reports it)."""
        arrival_time = arrival_ms / 1000.0
        try:
            packet = parse_rtp(data)
        except ValueError:
            self.malformed += 1
            return
        state = self._streams.get(packet.ssrc)
        if state is None:
            if self._pt_mime.get(packet.payload_type, "").lower().endswith("/rtx"):
                # Retransmissions and probing padding (RFC 4588) are not a stream.
                self.rtx_packets += 1
                self.rtx_bytes += len(data)
                return
            state = self._streams[packet.ssrc] = _StreamState(packet.ssrc, arrival_time)
            state.stats.mid = self._ssrc_mid.get(packet.ssrc)
        stats = state.stats
        if stats.mid is None:
            for ext_id in self._mid_ext_ids:
                value = packet.extensions.get(ext_id)
                if value:
                    stats.mid = self._ssrc_mid[packet.ssrc] = value.decode("ascii", "replace")
                    break
        if not state.mime:
            state.mime = self._pt_mime.get(packet.payload_type, "")
            stats.kind = state.mime.partition("/")[0].lower()
        seq = state.unwrapper.unwrap(packet.sequence_number)
        if stats.packets == 0:
            stats.first_seq = stats.max_seq = seq
        elif seq > stats.max_seq:
            if seq > stats.max_seq + 1:
                stats.gaps += 1
            stats.max_seq = seq
        elif seq < stats.first_seq:
            stats.first_seq = seq
        stats.packets += 1
        stats.bytes += packet.payload_size
        stats.last_arrival = arrival_time
        if stats.kind == "video":
            if packet.marker:
                stats.frames += 1
            if packet.payload_size and is_keyframe(state.mime, packet.payload):
                stats.keyframes += 1
                size = _vp8_keyframe_size(packet.payload) if state.mime.lower() == "video/vp8" else None
                if size:
                    stats.width, stats.height = size
        elif packet.payload_size:
            stats.frames += 1

    def on_rtcp(self, data: bytes, arrival_ms: float) -> None:
        """Count one decrypted compound RTCP datagram (``arrival_ms`` unused)."""
        self.rtcp_packets += 1
        self.rtcp_bytes += len(data)

    def packets_on(self, mid: str) -> int:
        """Packets received so far on the m-line ``mid``, over all its SSRCs."""
        return sum(s.stats.packets for s in self._streams.values() if s.stats.mid == mid)

    def snapshot(self) -> list[StreamStats]:
        """Copies of the per-SSRC counters, in order of first arrival."""
        return [
            StreamStats(**{name: getattr(s.stats, name) for name in StreamStats.__slots__})
            for s in self._streams.values()
        ]
