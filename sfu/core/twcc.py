"""Transport-wide congestion control plumbing: feedback packets, send history, receiver.

draft-holmer-rmcat-transport-wide-cc-extensions-01: §2 (one transport-wide sequence
number per packet sent on a transport, carried in a header extension), §3.1 (the
transport feedback message, RTCP RTPFB PT=205 FMT=15).

- :func:`parse_twcc` / :func:`build_twcc`: the §3.1 FCI and the whole RTCP packet.
- :class:`~sfu.core.send_history.SendHistory` (its own module): the sender side.
- :class:`TwccReceiver`: the receiver side, one per publisher connection; records the
  arrival of every packet and builds the feedback the server sends back.

Units: arrival times inside a :class:`TwccFeedback` are µs on the receiver's clock (the
wire carries a 64 ms reference time and 250 µs receive deltas); every other time is in
ms, on whatever clock the caller passes (nothing here reads a clock).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "DELTA_UNIT_US",
    "FMT_TWCC",
    "REFERENCE_RANGE_US",
    "REFERENCE_UNIT_US",
    "TwccFeedback",
    "TwccReceiver",
    "build_twcc",
    "parse_twcc",
]

# rtcp.py imports this module (its parser returns TwccFeedback), so the two RTCP header
# constants are repeated here rather than imported: same values as rtcp.FMT_TWCC / PT_RTPFB.
FMT_TWCC = 15
"""RTPFB feedback message type (FMT) of transport-cc (§3.1)."""
_PT_RTPFB = 205

DELTA_UNIT_US = 250
"""One receive delta tick (§3.1.5), µs."""
REFERENCE_UNIT_US = 64_000
"""One reference time tick (§3.1: 24-bit signed, multiples of 64 ms), µs."""
REFERENCE_RANGE_US = (1 << 24) * REFERENCE_UNIT_US  # where the reference time wraps

# Packet status symbols (§3.1.1); the value is also the receive delta's size in bytes.
_NOT_RECEIVED = 0
_SMALL_DELTA = 1  # 1 byte, unsigned: 0 .. 63.75 ms
_LARGE_DELTA = 2  # 2 bytes, signed: -8192 .. 8191.75 ms
# 3 (binary 11) is reserved: malformed.

_MAX_RUN = 0x1FFF  # 13-bit run length (§3.1.3)
_MAX_STATUS_COUNT = 0xFFFF  # 16-bit packet status count
MAX_PARSED_STATUSES = 2048
"""Statuses read from one transport feedback at most: a hostile subscriber's feedback
naming 65,535 (a few run length chunks) would cost ~5 ms to expand; Chrome's cover
tens to hundreds of packets."""
_HEADER = struct.Struct("!BBHII")  # RTCP header, SSRC of packet sender, SSRC of media source
_FCI_HEADER = struct.Struct("!HHI")  # base sequence, status count, reference time << 8 | fb count
_OVERHEAD = _HEADER.size + _FCI_HEADER.size  # 20 bytes before the first packet chunk
_MIN_PACKET_BYTES = _OVERHEAD + 4  # room for one chunk and one large delta


@dataclass(slots=True)
class TwccFeedback:
    """One transport feedback message (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1).

    Attributes:
        sender_ssrc: SSRC of the packet sender (the feedback's author).
        media_ssrc: SSRC of the media source (informational for transport-cc).
        base_sequence: 16-bit transport sequence number of the first status.
        feedback_count: 8-bit feedback packet count (increments per feedback sent).
        reference_time_us: the 24-bit signed reference time × 64000, µs on the receiver's
            clock (so it wraps every 2**24 × 64 ms, about 12.4 days).
        packets: one (16-bit transport sequence number, arrival µs or None when not
            received) per packet status, in sequence order; the arrival is
            ``reference_time_us`` plus the receive deltas so far.
    """

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    feedback_count: int
    reference_time_us: int
    packets: list[tuple[int, int | None]] = field(default_factory=list)


def parse_twcc(sender_ssrc: int, media_ssrc: int, fci: bytes) -> TwccFeedback:
    """Decode the FCI of a transport feedback message (§3.1).

    ``fci`` is the RTCP packet body after the two SSRCs (RTCP padding already removed);
    bytes after the last receive delta (the zero padding to 32 bits) are ignored, and so
    are symbols of the last chunk beyond the packet status count. At most
    :data:`MAX_PARSED_STATUSES` statuses are read (the first ones).

    Raises:
        ValueError: the FCI is truncated (header, chunks or receive deltas) or uses the
            reserved symbol 11. The chunks and the delta bytes are checked against the
            bytes present before anything is allocated per status, so a large status
            count with a short body costs no more than the body.
    """
    n = len(fci)
    if n < _FCI_HEADER.size:
        raise ValueError("transport-cc feedback truncated")
    base, count, word = _FCI_HEADER.unpack_from(fci, 0)
    # A run length chunk names up to 8,191 statuses in 2 bytes: read at most
    # MAX_PARSED_STATUSES (the first ones; the rest of a longer feedback is ignored).
    count = min(count, MAX_PARSED_STATUSES)
    reference = word >> 8
    if reference & 0x800000:
        reference -= 1 << 24

    # Pass 1: walk the packet chunks (§3.1.3, §3.1.4) into (symbol, run) pairs, counting
    # the receive delta bytes they call for. Bounded by the chunk bytes present.
    runs: list[tuple[int, int]] = []
    pos = _FCI_HEADER.size
    remaining = count
    delta_bytes = 0
    while remaining > 0:
        if pos + 2 > n:
            raise ValueError("transport-cc packet chunks truncated")
        chunk = (fci[pos] << 8) | fci[pos + 1]
        pos += 2
        if not chunk & 0x8000:  # run length chunk: T=0, S (2 bits), run length (13 bits)
            symbol = chunk >> 13
            if symbol == 3:
                raise ValueError("transport-cc run length chunk with reserved symbol 11")
            run = min(chunk & _MAX_RUN, remaining)
            if run:
                runs.append((symbol, run))
                remaining -= run
                delta_bytes += symbol * run
        elif not chunk & 0x4000:  # status vector chunk, S=0: 14 one-bit symbols
            take = min(14, remaining)
            for shift in range(13, 13 - take, -1):
                symbol = (chunk >> shift) & 1
                runs.append((symbol, 1))
                delta_bytes += symbol
            remaining -= take
        else:  # status vector chunk, S=1: 7 two-bit symbols
            take = min(7, remaining)
            for shift in range(12, 12 - 2 * take, -2):
                symbol = (chunk >> shift) & 3
                if symbol == 3:
                    raise ValueError("transport-cc status vector with reserved symbol 11")
                runs.append((symbol, 1))
                delta_bytes += symbol
            remaining -= take
    if pos + delta_bytes > n:
        raise ValueError("transport-cc receive deltas truncated")

    # Pass 2: the statuses, with arrival times accumulated from the receive deltas (§3.1.5).
    packets: list[tuple[int, int | None]] = []
    append = packets.append
    seq = base
    arrival = reference * REFERENCE_UNIT_US
    for symbol, run in runs:
        if symbol == _NOT_RECEIVED:
            for _ in range(run):
                append((seq, None))
                seq = (seq + 1) & 0xFFFF
        elif symbol == _SMALL_DELTA:
            for _ in range(run):
                arrival += fci[pos] * DELTA_UNIT_US
                pos += 1
                append((seq, arrival))
                seq = (seq + 1) & 0xFFFF
        else:
            for _ in range(run):
                delta = (fci[pos] << 8) | fci[pos + 1]
                if delta & 0x8000:
                    delta -= 0x10000
                arrival += delta * DELTA_UNIT_US
                pos += 2
                append((seq, arrival))
                seq = (seq + 1) & 0xFFFF
    return TwccFeedback(
        sender_ssrc, media_ssrc, base, word & 0xFF, reference * REFERENCE_UNIT_US, packets
    )


class _Statuses:
    """The packet status symbols of one feedback packet under construction.

    Computed lazily from ``ticks[start]`` on, as the chunk encoder looks ahead, because
    the first received packet's delta depends on the packet's own reference time.
    ``end`` (exclusive) shrinks to the first received packet whose delta from the
    previous one does not fit 16 signed bits: that packet starts the next feedback.
    """

    __slots__ = ("deltas", "end", "prev", "reference", "start", "symbols", "ticks")

    def __init__(self, ticks: list[int | None], start: int, reference: int) -> None:
        self.ticks = ticks
        self.start = start
        self.end = min(len(ticks), start + _MAX_STATUS_COUNT)
        self.symbols: list[int] = []  # symbols[k] is the status of ticks[start + k]
        self.deltas: list[int] = []  # receive delta of ticks[start + k], 250 µs (0 if lost)
        self.prev: int | None = None  # arrival of the previous received packet, 250 µs
        self.reference = reference  # 64 ms units, set by the first received packet

    def available(self, upto: int) -> int:
        """Compute the statuses up to offset ``upto`` (exclusive) if the packet reaches
        that far; return how many are known."""
        symbols = self.symbols
        deltas = self.deltas
        ticks = self.ticks
        want = min(upto, self.end - self.start)
        k = len(symbols)
        while k < want:
            t = ticks[self.start + k]
            if t is None:
                symbols.append(_NOT_RECEIVED)
                deltas.append(0)
            else:
                prev = self.prev
                if prev is None:
                    self.reference = t >> 8  # floor to 64 ms (256 ticks)
                    prev = self.reference << 8
                delta = t - prev
                if 0 <= delta <= 0xFF:
                    symbols.append(_SMALL_DELTA)
                elif -0x8000 <= delta <= 0x7FFF:
                    symbols.append(_LARGE_DELTA)
                else:
                    self.end = self.start + k
                    break
                deltas.append(delta)
                self.prev = t
            k += 1
        return k


def _encode_one(
    ticks: list[int | None],
    start: int,
    base_sequence: int,
    sender_ssrc: int,
    media_ssrc: int,
    feedback_count: int,
    max_total: int,
    reference: int,
) -> tuple[bytes, int, int]:
    """Build one feedback packet from ``ticks[start]`` on, at most ``max_total`` bytes
    (a multiple of 4). Returns (packet, index of the first status left out, reference)."""
    st = _Statuses(ticks, start, reference)
    symbols = st.symbols
    chunks = bytearray()
    body = bytearray()
    budget = max_total - _OVERHEAD  # bytes for chunks and receive deltas
    used = 0
    p = 0
    full = False
    while not full:
        known = st.available(p + 14)
        if p >= known:
            break
        symbol = symbols[p]
        run = 1
        while run < _MAX_RUN:
            q = p + run
            if q >= len(symbols) and st.available(q + 256) <= q:
                break
            if symbols[q] != symbol:
                break
            run += 1
        window = symbols[p : p + 14]
        one_bit = _LARGE_DELTA not in window
        vector = len(window) if one_bit else min(7, len(window))
        if run >= vector:  # run length chunk (§3.1.3)
            kind = 0
            cover = run
            cost = symbol * run
        else:  # status vector chunk (§3.1.4), one-bit when no large delta is among the 14
            kind = 1 if one_bit else 2
            cover = vector
            cost = sum(symbols[p : p + cover])
        room = budget - used - 2  # delta bytes that still fit after this chunk
        if cost > room:
            full = True  # this chunk, shortened to fit, is the packet's last
            if room <= 0:
                break
            if kind == 0:  # cost > room > 0, so symbol > 0
                cover = room // symbol
                cost = symbol * cover
            else:
                cover = cost = 0
                for s in symbols[p : p + vector]:
                    if cost + s > room:
                        break
                    cost += s
                    cover += 1
            if cover == 0:
                break
        if kind == 0:
            word = (symbol << 13) | cover
        elif kind == 1:
            word = 0x8000
            for q, s in enumerate(symbols[p : p + cover]):
                word |= s << (13 - q)
        else:
            word = 0xC000
            for q, s in enumerate(symbols[p : p + cover]):
                word |= s << (12 - 2 * q)
        chunks += word.to_bytes(2, "big")
        deltas = st.deltas
        for q in range(p, p + cover):
            s = symbols[q]
            if s == _SMALL_DELTA:
                body.append(deltas[q])
            elif s == _LARGE_DELTA:
                body += (deltas[q] & 0xFFFF).to_bytes(2, "big")
        used += 2 + cost
        p += cover
    total = _OVERHEAD + len(chunks) + len(body)
    pad = -total % 4
    packet = (
        _HEADER.pack(0x80 | FMT_TWCC, _PT_RTPFB, (total + pad) // 4 - 1, sender_ssrc, media_ssrc)
        + _FCI_HEADER.pack(
            base_sequence & 0xFFFF, p, ((st.reference & 0xFFFFFF) << 8) | (feedback_count & 0xFF)
        )
        + chunks
        + body
        + bytes(pad)
    )
    return packet, start + p, st.reference


def _encode(
    sender_ssrc: int,
    media_ssrc: int,
    feedback_count: int,
    packets: Sequence[tuple[int, int | float | None]],
    max_packet_bytes: int,
) -> list[bytes]:
    """:func:`build_twcc` without its checks: ``packets`` may start with a lost packet."""
    ticks = [None if us is None else int((us + 125) // DELTA_UNIT_US) for _, us in packets]
    first_seq = packets[0][0]
    max_total = max_packet_bytes & ~3
    out: list[bytes] = []
    start = 0
    reference = next((t >> 8 for t in ticks if t is not None), 0)
    while start < len(ticks):
        packet, start, reference = _encode_one(
            ticks,
            start,
            first_seq + start,
            sender_ssrc,
            media_ssrc,
            feedback_count + len(out),
            max_total,
            reference,
        )
        out.append(packet)
    return out


def build_twcc(
    sender_ssrc: int,
    media_ssrc: int,
    feedback_count: int,
    packets: Sequence[tuple[int, int | None]],
    max_packet_bytes: int = 1200,
) -> list[bytes]:
    """Build transport feedback RTCP packets (§3.1), header included.

    Args:
        sender_ssrc: SSRC of the packet sender (ours).
        media_ssrc: SSRC of the media source.
        feedback_count: feedback packet count of the first packet built; each next one
            takes the next value (mod 256).
        packets: (unwrapped transport sequence number, arrival µs on our clock or None
            when not received), for consecutive sequence numbers (seq, seq + 1, ...);
            the first must be received. Arrivals are rounded to 250 µs; a float is
            accepted too.
        max_packet_bytes: size limit of each packet built (at least 24).

    Returns:
        the RTCP packets, usually one. A new one starts (with the next feedback count)
        when a receive delta does not fit 16 signed bits of 250 µs (about ±8.19 s), when
        the size limit is reached, or after 65535 statuses. Each packet's reference time
        is the arrival of its first received packet floored to 64 ms, encoded modulo
        2**24. Chunks: run length for a run at least as long as a status vector would
        cover (so for ≥ 14 equal statuses, or 7 when a large delta is near), else a
        one-bit vector of 14 when none of them needs a large delta, else a two-bit
        vector of 7.

    Raises:
        ValueError: ``packets`` is empty, its first packet was not received, its
            sequence numbers are not consecutive, or ``max_packet_bytes`` < 24.
    """
    if not packets:
        raise ValueError("build_twcc needs at least one packet")
    first_seq, first_arrival = packets[0]
    if first_arrival is None:
        raise ValueError("build_twcc: the first packet must be received")
    for k, (seq, _) in enumerate(packets):
        if seq != first_seq + k:
            raise ValueError("build_twcc: sequence numbers must be consecutive")
    if max_packet_bytes < _MIN_PACKET_BYTES:
        raise ValueError(f"max_packet_bytes must be at least {_MIN_PACKET_BYTES}")
    return _encode(sender_ssrc, media_ssrc, feedback_count, packets, max_packet_bytes)


class TwccReceiver:
    """Records the transport-wide sequence numbers arriving from one sender (§2) and
    builds the transport feedback (§3.1) to send it back every 50-100 ms.

    State is a ring of ``max_window`` slots: at most the ``max_window`` newest sequence
    numbers are tracked, a forward jump forgets the older ones (not yet reported, they
    are never reported), and a feedback covers at most ``max_window`` statuses.

    Args:
        sender_ssrc: our SSRC, written as the feedback's packet sender.
        max_window: sequence numbers tracked (a power of two, at most 32768). The
            default, 1,024, is 17,000 packets a second at one feedback per 60 ms, and
            bounds what one feedback costs to build (~0.5 ms when a hostile sender
            jumps its sequence numbers by a window every time; 2 ms at 4,096).
        max_packet_bytes: size limit of each feedback packet built.
    """

    __slots__ = (
        "_arrivals",
        "_feedback_count",
        "_mask",
        "_newest",
        "_reported",
        "_seqs",
        "_start",
        "_window",
        "max_packet_bytes",
        "sender_ssrc",
    )

    def __init__(
        self, sender_ssrc: int, max_window: int = 1024, *, max_packet_bytes: int = 1200
    ) -> None:
        if max_window <= 0 or max_window & (max_window - 1) or max_window > 0x8000:
            raise ValueError("TwccReceiver max_window must be a power of two <= 32768")
        if max_packet_bytes < _MIN_PACKET_BYTES:
            raise ValueError(f"max_packet_bytes must be at least {_MIN_PACKET_BYTES}")
        self.sender_ssrc = sender_ssrc
        self.max_packet_bytes = max_packet_bytes
        self._window = max_window
        self._mask = max_window - 1
        self._seqs: list[int] = [-1] * max_window  # unwrapped sequence number in each slot
        self._arrivals: list[float] = [0.0] * max_window  # its arrival, ms
        self._newest: int | None = None  # newest unwrapped sequence number received
        self._start = 0  # first unwrapped sequence number not yet reported
        self._reported = False  # a feedback has been built
        self._feedback_count = 0

    def on_packet(self, seq16: int, arrival_ms: float) -> None:
        """Record the arrival at ``arrival_ms`` (ms, our clock) of the packet carrying
        transport sequence number ``seq16``. A duplicate keeps its first arrival; a
        packet older than what a feedback already covered is ignored."""
        newest = self._newest
        if newest is None:
            seq = seq16 + 0x10000  # one cycle up, so early reordering stays positive
            self._newest = self._start = seq
        else:
            delta = (seq16 - newest) & 0xFFFF
            if delta >= 0x8000:
                delta -= 0x10000
            seq = newest + delta
            if delta > 0:
                self._newest = seq
                if seq - self._start >= self._window:
                    self._start = seq - self._window + 1
            elif seq < self._start:
                if self._reported or newest - seq >= self._window:
                    return
                self._start = seq  # reordered before the first feedback
        i = seq & self._mask
        seqs = self._seqs
        if seqs[i] == seq:
            return
        seqs[i] = seq
        self._arrivals[i] = arrival_ms

    def feedback(self, media_ssrc: int) -> list[bytes]:
        """Transport feedback RTCP packets for every sequence number from the first not
        yet reported to the newest received (those missing as not received), or [] when
        nothing new arrived; afterwards these count as reported."""
        newest = self._newest
        start = self._start
        if newest is None or start > newest:
            return []
        seqs = self._seqs
        arrivals = self._arrivals
        mask = self._mask
        statuses: list[tuple[int, int | float | None]] = []
        for seq in range(start, newest + 1):
            i = seq & mask
            statuses.append((seq, arrivals[i] * 1000.0 if seqs[i] == seq else None))
        packets = _encode(
            self.sender_ssrc, media_ssrc, self._feedback_count, statuses, self.max_packet_bytes
        )
        self._feedback_count = (self._feedback_count + len(packets)) & 0xFF
        self._start = newest + 1
        self._reported = True
        return packets
