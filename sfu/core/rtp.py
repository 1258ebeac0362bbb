"""RTP packet parsing and per-subscriber header rewriting.

RFC 3550 §5.1 (fixed header), RFC 8285 (one- and two-byte header extensions),
RFC 5761 §4 (telling RTP from RTCP on one port).

Packets are parsed once on arrival into :class:`RtpPacket`, which keeps the original
bytes and the offsets of the payload; every DownTrack then writes its own header in
front of the unchanged payload with :func:`write_packet`, so payloads are never copied
per subscriber beyond the one ``bytes`` join (the payload is sliced once per source
packet, :attr:`RtpPacket.body`). The batched path (:mod:`sfu.rtc.batch`) writes the
same bytes in C.
"""

from __future__ import annotations

import struct

__all__ = [
    "RtpPacket",
    "parse_rtp",
    "is_rtcp",
    "build_extensions",
    "write_packet",
    "write_rtx_packet",
    "abs_send_time",
    "URI_MID",
    "URI_RID",
    "URI_RRID",
    "URI_ABS_SEND_TIME",
    "URI_AUDIO_LEVEL",
    "URI_TRANSPORT_CC",
]

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_TRANSPORT_CC = (
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
)

_HEADER = struct.Struct("!BBHII")
_ONE_BYTE_PROFILE = 0xBEDE
_TWO_BYTE_PROFILE_MASK = 0xFFF0
_TWO_BYTE_PROFILE = 0x1000


class RtpPacket:
    """One RTP packet as received, with its header fields decoded.

    Attributes:
        data: the packet bytes (after SRTP unprotect).
        payload_type: 7-bit payload type.
        marker: the M bit.
        sequence_number: 16-bit sequence number as on the wire.
        timestamp: 32-bit RTP timestamp (media clock ticks, e.g. 90 kHz for video).
        ssrc: 32-bit synchronization source.
        csrc: raw CSRC list bytes (4 bytes each), usually empty.
        extensions: header extension elements, id -> value bytes.
        payload_offset: index in ``data`` where the payload starts.
        payload_end: index in ``data`` where the payload ends (padding excluded).
        padding: True when the P bit is set.
    """

    __slots__ = (
        "data",
        "payload_type",
        "marker",
        "sequence_number",
        "timestamp",
        "ssrc",
        "csrc",
        "extensions",
        "payload_offset",
        "payload_end",
        "padding",
        "_body",
    )

    def __init__(
        self,
        data: bytes,
        payload_type: int,
        marker: bool,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        csrc: bytes,
        extensions: dict[int, bytes],
        payload_offset: int,
        payload_end: int,
        padding: bool,
    ) -> None:
        self.data = data
        self.payload_type = payload_type
        self.marker = marker
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.csrc = csrc
        self.extensions = extensions
        self.payload_offset = payload_offset
        self.payload_end = payload_end
        self.padding = padding
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        """What follows the header in every forwarded copy: the payload, with the
        padding when the P bit is set (RFC 3550 §5.1). Sliced once, then shared by all
        subscribers' :func:`write_packet`."""
        body = self._body
        if body is None:
            data = self.data
            body = self._body = data[self.payload_offset :] if self.padding else data[self.payload_offset : self.payload_end]
        return body

    @property
    def body_end(self) -> int:
        """Index in ``data`` where :attr:`body` ends (the packet's end with padding)."""
        return len(self.data) if self.padding else self.payload_end

    @property
    def payload(self) -> bytes:
        """The payload without header and padding (a copy)."""
        return self.data[self.payload_offset : self.payload_end]

    @property
    def payload_size(self) -> int:
        """Payload length in bytes, padding excluded; 0 for a padding-only packet."""
        return self.payload_end - self.payload_offset

    def __repr__(self) -> str:
        return (
            f"RtpPacket(ssrc={self.ssrc:#010x}, pt={self.payload_type}, "
            f"seq={self.sequence_number}, ts={self.timestamp}, m={int(self.marker)}, "
            f"payload={self.payload_size}B)"
        )


def is_rtcp(data: bytes) -> bool:
    """True when a demultiplexed SRTP/RTP-range datagram is RTCP (RFC 5761 §4: PT 192-223)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def _parse_extensions(data: bytes, start: int, end: int, profile: int) -> dict[int, bytes]:
    """Parse an RFC 8285 extension block ``data[start:end]`` into id -> value."""
    out: dict[int, bytes] = {}
    i = start
    if profile == _ONE_BYTE_PROFILE:
        # RFC 8285 §4.2: ID (4 bits) | L (4 bits, length - 1); ID 0 is padding, 15 stops.
        while i < end:
            b = data[i]
            if b < 0x10:
                i += 1  # ID 0: a padding byte, whatever its length field says (as libwebrtc)
                continue
            ext_id = b >> 4
            if ext_id == 15:
                break
            length = (b & 0x0F) + 1
            i += 1
            if i + length > end:
                raise ValueError("RTP header extension element overruns its block")
            out[ext_id] = data[i : i + length]
            i += length
    elif (profile & _TWO_BYTE_PROFILE_MASK) == _TWO_BYTE_PROFILE:
        # RFC 8285 §4.3: ID (8 bits) | L (8 bits, length).
        while i < end:
            ext_id = data[i]
            if ext_id == 0:
                i += 1
                continue
            if i + 1 >= end:
                raise ValueError("RTP two-byte header extension truncated")
            length = data[i + 1]
            i += 2
            if i + length > end:
                raise ValueError("RTP header extension element overruns its block")
            out[ext_id] = data[i : i + length]
            i += length
    return out


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet (RFC 3550 §5.1, RFC 8285 extensions).

    Args:
        data: the whole packet, already SRTP-unprotected.

    Returns:
        an :class:`RtpPacket` referring to ``data``.

    Raises:
        ValueError: shorter than 12 bytes, version not 2, CSRC list, extension block or
            padding running past the end.
    """
    n = len(data)
    if n < 12:
        raise ValueError(f"RTP packet too short ({n} bytes)")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
    if b0 >> 6 != 2:
        raise ValueError(f"RTP version {b0 >> 6} is not 2")
    cc = b0 & 0x0F
    offset = 12 + 4 * cc
    if offset > n:
        raise ValueError("RTP CSRC list runs past the end")
    csrc = data[12:offset] if cc else b""
    extensions: dict[int, bytes] = {}
    if b0 & 0x10:
        if offset + 4 > n:
            raise ValueError("RTP extension header runs past the end")
        profile, words = struct.unpack_from("!HH", data, offset)
        ext_start = offset + 4
        ext_end = ext_start + 4 * words
        if ext_end > n:
            raise ValueError("RTP extension block runs past the end")
        extensions = _parse_extensions(data, ext_start, ext_end, profile)
        offset = ext_end
    end = n
    padding = bool(b0 & 0x20)
    if padding:
        pad = data[-1]
        if pad == 0 or offset + pad > n:
            raise ValueError("RTP padding length is invalid")
        end = n - pad
    return RtpPacket(
        data,
        b1 & 0x7F,
        bool(b1 & 0x80),
        seq,
        ts,
        ssrc,
        csrc,
        extensions,
        offset,
        end,
        padding,
    )


def build_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """Serialize header extension elements as an RFC 8285 block, profile included.

    Uses the one-byte form (§4.2) when every id is 1-14 and every value 1-16 bytes,
    else the two-byte form (§4.3). The block is zero-padded to 32 bits.

    Args:
        elements: (id, value) pairs in the order to write them.

    Returns:
        b"" for no elements, else the 4-byte profile/length word and the elements.
    """
    if not elements:
        return b""
    one_byte = all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements)
    if one_byte:
        body = b"".join(bytes(((i << 4) | (len(v) - 1),)) + v for i, v in elements)
        profile = _ONE_BYTE_PROFILE
    else:
        body = b"".join(bytes((i, len(v))) + v for i, v in elements)
        profile = _TWO_BYTE_PROFILE
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", profile, len(body) // 4) + body


def write_packet(
    packet: RtpPacket,
    ssrc: int,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    marker: bool,
    extensions: bytes,
    head: bytes | None = None,
) -> bytes:
    """Serialize ``packet`` with a new header and the original payload (and padding).

    Args:
        packet: the parsed source packet.
        ssrc, payload_type: the subscriber's values.
        sequence_number: 16-bit output sequence number (truncated here).
        timestamp: 32-bit output timestamp (truncated here).
        marker: the M bit to write.
        extensions: a block from :func:`build_extensions` (b"" for none).
        head: replaces the first ``len(head)`` payload bytes (a rewritten payload
            descriptor), or None.

    Returns:
        the new packet bytes (RFC 3550 §5.1 layout). The padding is kept when the P
        bit is set; bytes past ``payload_end`` are dropped otherwise.
    """
    b0 = 0x80 | (0x20 if packet.padding else 0) | (0x10 if extensions else 0)
    b0 |= len(packet.csrc) >> 2
    header = _HEADER.pack(
        b0,
        (0x80 if marker else 0) | payload_type,
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    if head is None:  # the common case: the body sliced once per source packet, one copy here
        return b"".join((header, packet.csrc, extensions, packet.body))
    start = packet.payload_offset + len(head)
    body = packet.data[start:] if packet.padding else packet.data[start : packet.payload_end]
    return b"".join((header, packet.csrc, extensions, head, body))


def write_rtx_packet(
    packet: RtpPacket,
    ssrc: int,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    original_sequence_number: int,
    extensions: bytes,
    head: bytes | None = None,
) -> bytes:
    """Serialize ``packet`` as an RTX retransmission (RFC 4588 §4).

    The payload is the 16-bit original sequence number (OSN, the sequence number the
    subscriber knows the packet by) followed by the original payload, padding dropped;
    ``head`` replaces the payload's first bytes as in :func:`write_packet`.
    """
    b0 = 0x80 | (0x10 if extensions else 0) | (len(packet.csrc) >> 2)
    header = _HEADER.pack(
        b0,
        (0x80 if packet.marker else 0) | payload_type,
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    osn = (original_sequence_number & 0xFFFF).to_bytes(2, "big")
    start = packet.payload_offset if head is None else packet.payload_offset + len(head)
    return b"".join((header, packet.csrc, extensions, osn, head or b"", packet.data[start : packet.payload_end]))


def abs_send_time(now_s: float) -> bytes:
    """The abs-send-time extension value: 24-bit 6.18 fixed-point seconds, wrapping at 64 s.

    See http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time.
    """
    value = int(now_s * (1 << 18)) & 0xFFFFFF
    return value.to_bytes(3, "big")
