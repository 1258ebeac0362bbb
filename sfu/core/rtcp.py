"""RTCP parsing and building.

RFC 3550 §6.4 (SR, RR, report blocks), §6.6 (BYE); RFC 4585 §6.2.1 (generic NACK),
§6.3.1 (PLI); RFC 5104 §4.3.1 (FIR); draft-alvestrand-rmcat-remb §2.2 (REMB);
draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1 (transport-cc feedback, RTPFB
FMT 15, decoded by :func:`sfu.core.twcc.parse_twcc` into :class:`~sfu.core.twcc.TwccFeedback`).
Other packet types (SDES, APP, XR, other RTPFB/PSFB formats) are returned as
:class:`UnknownRtcp`.

NTP timestamps are 64-bit ints (32.32 fixed point seconds since 1900).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .twcc import TwccFeedback, parse_twcc

__all__ = [
    "NACK_MAX_LOST",
    "Bye",
    "Fir",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpPacket",
    "SenderReport",
    "TwccFeedback",
    "UnknownRtcp",
    "build_fir",
    "build_nack",
    "build_pli",
    "build_remb",
    "build_rr",
    "build_sr",
    "nack_pairs",
    "parse_rtcp",
]

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_RTPFB = 205
PT_PSFB = 206
FMT_NACK = 1
FMT_TWCC = 15  # transport-cc (twcc.FMT_TWCC; twcc.py does not import this module)
FMT_PLI = 1
FMT_FIR = 4
FMT_AFB = 15
NACK_MAX_LOST = 1024  # sequence numbers a parsed NACK lists at most (Nack.omitted counts the rest)

_REPORT_BLOCK = struct.Struct("!IB3sIIII")


@dataclass(slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1).

    ``fraction_lost`` is 0-255 (loss fraction × 256); ``jitter`` in RTP clock ticks;
    ``lsr`` the middle 32 bits of the last SR's NTP time; ``dlsr`` in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int


@dataclass(slots=True)
class SenderReport:
    """RTCP SR (RFC 3550 §6.4.1). ``ntp_timestamp`` 64-bit; ``rtp_timestamp`` 32-bit."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    """RTCP RR (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class Bye:
    """RTCP BYE (RFC 3550 §6.6)."""

    sources: list[int]


@dataclass(slots=True)
class Nack:
    """Generic NACK (RFC 4585 §6.2.1): the lost 16-bit sequence numbers of ``media_ssrc``.

    ``omitted``: sequence numbers the packet named beyond the first
    :data:`NACK_MAX_LOST` (a parsed NACK lists at most that many; the rest are only
    counted, so that a hostile NACK naming thousands costs no more than a normal one).
    """

    sender_ssrc: int
    media_ssrc: int
    lost: list[int]
    omitted: int = 0


@dataclass(slots=True)
class Pli:
    """Picture Loss Indication (RFC 4585 §6.3.1)."""

    sender_ssrc: int
    media_ssrc: int


@dataclass(slots=True)
class Fir:
    """Full Intra Request (RFC 5104 §4.3.1): (media SSRC, command sequence number) pairs."""

    sender_ssrc: int
    entries: list[tuple[int, int]]


@dataclass(slots=True)
class Remb:
    """Receiver Estimated Max Bitrate (draft-alvestrand-rmcat-remb §2.2), ``bitrate`` in bit/s."""

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int]


@dataclass(slots=True)
class UnknownRtcp:
    """An RTCP packet this module does not decode (SDES, APP, XR, other feedback formats, ...)."""

    packet_type: int
    fmt: int
    data: bytes


RtcpPacket = (
    SenderReport | ReceiverReport | Bye | Nack | Pli | Fir | Remb | TwccFeedback | UnknownRtcp
)


def _parse_report_blocks(data: bytes, offset: int, count: int, end: int) -> list[ReportBlock]:
    blocks = []
    for _ in range(count):
        if offset + 24 > end:
            raise ValueError("RTCP report block truncated")
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        cumulative = int.from_bytes(lost, "big", signed=True)
        blocks.append(ReportBlock(ssrc, fraction, cumulative, highest, jitter, lsr, dlsr))
        offset += 24
    return blocks


def _parse_one(pt: int, fmt: int, body: bytes) -> RtcpPacket:
    n = len(body)
    if pt == PT_SR:
        if n < 24:
            raise ValueError("RTCP SR truncated")
        ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body, 0)
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _parse_report_blocks(body, 24, fmt, n))
    if pt == PT_RR:
        if n < 4:
            raise ValueError("RTCP RR truncated")
        (ssrc,) = struct.unpack_from("!I", body, 0)
        return ReceiverReport(ssrc, _parse_report_blocks(body, 4, fmt, n))
    if pt == PT_BYE:
        if n < 4 * fmt:
            raise ValueError("RTCP BYE truncated")
        return Bye(list(struct.unpack_from(f"!{fmt}I", body, 0)))
    if pt in (PT_RTPFB, PT_PSFB):
        if n < 8:
            raise ValueError("RTCP feedback truncated")
        sender, media = struct.unpack_from("!II", body, 0)
        fci = body[8:]
        if pt == PT_RTPFB and fmt == FMT_NACK:
            lost: list[int] = []
            omitted = 0
            for pid, blp in struct.iter_unpack("!HH", fci[: len(fci) & ~3]):
                if len(lost) >= NACK_MAX_LOST:
                    omitted += 1 + blp.bit_count()
                    continue
                lost.append(pid)
                for bit in range(16):
                    if blp & (1 << bit):
                        lost.append((pid + bit + 1) & 0xFFFF)
            if len(lost) > NACK_MAX_LOST:
                omitted += len(lost) - NACK_MAX_LOST
                del lost[NACK_MAX_LOST:]
            return Nack(sender, media, lost, omitted)
        if pt == PT_RTPFB and fmt == FMT_TWCC:
            return parse_twcc(sender, media, fci)
        if pt == PT_PSFB and fmt == FMT_PLI:
            return Pli(sender, media)
        if pt == PT_PSFB and fmt == FMT_FIR:
            entries = []
            for i in range(0, len(fci) - 7, 8):
                ssrc, seqnr = struct.unpack_from("!IB", fci, i)
                entries.append((ssrc, seqnr))
            return Fir(sender, entries)
        if pt == PT_PSFB and fmt == FMT_AFB and fci[:4] == b"REMB":
            if len(fci) < 8:
                raise ValueError("REMB truncated")
            num = fci[4]
            exp = fci[5] >> 2
            mantissa = ((fci[5] & 0x03) << 16) | (fci[6] << 8) | fci[7]
            if len(fci) < 8 + 4 * num:
                raise ValueError("REMB SSRC list truncated")
            ssrcs = list(struct.unpack_from(f"!{num}I", fci, 8))
            return Remb(sender, mantissa << exp, ssrcs)
    return UnknownRtcp(pt, fmt, body)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a (compound or reduced-size) RTCP datagram, already SRTCP-unprotected.

    Returns:
        the packets in order.

    Raises:
        ValueError: a header is malformed or a length runs past the datagram; nothing
            partial is returned in that case.
    """
    packets: list[RtcpPacket] = []
    offset = 0
    n = len(data)
    while offset < n:
        if offset + 4 > n:
            raise ValueError("RTCP header truncated")
        b0, pt, words = struct.unpack_from("!BBH", data, offset)
        if b0 >> 6 != 2:
            raise ValueError(f"RTCP version {b0 >> 6} is not 2")
        end = offset + 4 + 4 * words
        if end > n:
            raise ValueError("RTCP length runs past the datagram")
        body = data[offset + 4 : end]
        if b0 & 0x20 and body:
            pad = body[-1]
            if pad == 0 or pad > len(body):
                raise ValueError("RTCP padding invalid")
            body = body[:-pad]
        packets.append(_parse_one(pt, b0 & 0x1F, body))
        offset = end
    return packets


def _header(fmt: int, pt: int, body_len: int) -> bytes:
    return struct.pack("!BBH", 0x80 | fmt, pt, body_len // 4)


def _pack_blocks(reports: list[ReportBlock]) -> bytes:
    return b"".join(
        _REPORT_BLOCK.pack(
            r.ssrc,
            r.fraction_lost,
            max(-0x800000, min(0x7FFFFF, r.cumulative_lost)).to_bytes(3, "big", signed=True),
            r.highest_sequence & 0xFFFFFFFF,
            r.jitter,
            r.lsr,
            r.dlsr,
        )
        for r in reports
    )


def build_sr(sr: SenderReport) -> bytes:
    """Serialize an SR (RFC 3550 §6.4.1); up to 31 report blocks."""
    body = struct.pack(
        "!IQIII",
        sr.ssrc,
        sr.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
        sr.rtp_timestamp & 0xFFFFFFFF,
        sr.packet_count & 0xFFFFFFFF,
        sr.octet_count & 0xFFFFFFFF,
    ) + _pack_blocks(sr.reports[:31])
    return _header(len(sr.reports[:31]), PT_SR, len(body)) + body


def build_rr(rr: ReceiverReport) -> bytes:
    """Serialize an RR (RFC 3550 §6.4.2); up to 31 report blocks."""
    body = struct.pack("!I", rr.ssrc) + _pack_blocks(rr.reports[:31])
    return _header(len(rr.reports[:31]), PT_RR, len(body)) + body


def nack_pairs(lost: list[int]) -> list[tuple[int, int]]:
    """Pack 16-bit sequence numbers into (PID, BLP) pairs (RFC 4585 §6.2.1).

    ``lost`` should be in sending order (ascending in unwrapped terms, so a list that
    crosses the wrap reads 65534, 65535, 0, 1); duplicates are ignored.
    """
    pairs: list[tuple[int, int]] = []
    for seq in dict.fromkeys(s & 0xFFFF for s in lost):
        if pairs:
            pid, blp = pairs[-1]
            delta = (seq - pid) & 0xFFFF
            if 1 <= delta <= 16:
                pairs[-1] = (pid, blp | (1 << (delta - 1)))
                continue
        pairs.append((seq, 0))
    return pairs


def build_nack(nack: Nack) -> bytes:
    """Serialize a generic NACK (RFC 4585 §6.2.1)."""
    fci = b"".join(struct.pack("!HH", pid, blp) for pid, blp in nack_pairs(nack.lost))
    body = struct.pack("!II", nack.sender_ssrc, nack.media_ssrc) + fci
    return _header(FMT_NACK, PT_RTPFB, len(body)) + body


def build_pli(pli: Pli) -> bytes:
    """Serialize a PLI (RFC 4585 §6.3.1)."""
    body = struct.pack("!II", pli.sender_ssrc, pli.media_ssrc)
    return _header(FMT_PLI, PT_PSFB, len(body)) + body


def build_fir(fir: Fir) -> bytes:
    """Serialize a FIR (RFC 5104 §4.3.1); the media SSRC field of the header is 0."""
    fci = b"".join(struct.pack("!IB3x", ssrc, seqnr & 0xFF) for ssrc, seqnr in fir.entries)
    body = struct.pack("!II", fir.sender_ssrc, 0) + fci
    return _header(FMT_FIR, PT_PSFB, len(body)) + body


def build_remb(remb: Remb) -> bytes:
    """Serialize a REMB (draft-alvestrand-rmcat-remb §2.2): 6-bit exponent, 18-bit mantissa."""
    bitrate = max(0, int(remb.bitrate))
    exp = 0
    while bitrate >= (1 << 18):
        bitrate >>= 1
        exp += 1
    fci = b"REMB" + struct.pack(
        "!BBH", len(remb.ssrcs), (exp << 2) | (bitrate >> 16), bitrate & 0xFFFF
    ) + b"".join(struct.pack("!I", s) for s in remb.ssrcs)
    body = struct.pack("!II", remb.sender_ssrc, 0) + fci
    return _header(FMT_AFB, PT_PSFB, len(body)) + body
