"""Unwrapping of RTP sequence numbers (16 bit) and timestamps (32 bit) to Python ints.

RFC 3550 §A.1 keeps a cycle count for the 16-bit sequence number; the same idea applies
to the 32-bit RTP timestamp. Values are unwrapped once, on arrival, and truncated only
when a packet is serialized.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Unwrapper", "SequenceValidator", "SEQ_BITS", "TS_BITS", "seq_newer", "MAX_DROPOUT", "MAX_MISORDER"]

SEQ_BITS = 16
TS_BITS = 32


class Unwrapper:
    """Extends a wrapping counter of ``bits`` bits to an unbounded int.

    Each value is placed in the cycle that puts it closest to the previous unwrapped
    value, so reordering by less than half the range (32768 sequence numbers, or
    2**31 timestamp ticks) is handled in both directions.

    >>> u = Unwrapper(16)
    >>> [u.unwrap(s) for s in (65534, 65535, 0, 65535, 1)]
    [65534, 65535, 65536, 65535, 65537]
    """

    __slots__ = ("_bits", "_range", "_half", "_mask", "_last")

    def __init__(self, bits: int = SEQ_BITS) -> None:
        self._bits = bits
        self._range = 1 << bits
        self._half = 1 << (bits - 1)
        self._mask = self._range - 1
        self._last: int | None = None

    def unwrap(self, value: int) -> int:
        """Return ``value`` (0 <= value < 2**bits) as an unwrapped int."""
        last = self._last
        if last is None:
            # Start one cycle up so that early reordering never goes negative.
            self._last = value + self._range
            return self._last
        delta = (value - last) & self._mask
        if delta >= self._half:
            delta -= self._range
        unwrapped = last + delta
        if unwrapped > last:
            self._last = unwrapped
        return unwrapped

    @property
    def last(self) -> int | None:
        """The highest unwrapped value so far, or None before the first."""
        return self._last


MAX_DROPOUT = 3000  # RFC 3550 §A.1: a forward jump up to this is a gap (lost packets)
MAX_MISORDER = 512  # ... and a packet up to this far behind is late (reordered, retransmitted);
# RFC 3550 suggests 100, here it covers the packet cache (NACKed packets come back late)


class SequenceValidator:
    """Unwraps the 16-bit sequence numbers of one RTP stream, with the probation of
    RFC 3550 §A.1 for jumps: one packet far ahead (>= ``MAX_DROPOUT``) or far behind
    (> ``MAX_MISORDER``) of the highest is not accepted (a stray, forged or corrupt
    packet must not move the stream), unless the next packet follows it in sequence:
    then the source has restarted, the new numbering is accepted from there and
    ``on_restart`` is called.

    Accepted values are unwrapped ints that keep growing across restarts (a restart
    continues above the old highest), so caches and maps keyed by them stay ordered.

    Args:
        on_restart: called with no argument when a restart is accepted.
    """

    __slots__ = ("_last", "_bad", "_on_restart", "restarts")

    def __init__(self, on_restart: Callable[[], None] | None = None) -> None:
        self._last: int | None = None  # the highest unwrapped value accepted
        self._bad: int | None = None  # the 16-bit value that would confirm a jump
        self._on_restart = on_restart
        self.restarts = 0

    def accept(self, value: int) -> int | None:
        """The unwrapped number of 16-bit sequence number ``value``, or None when the
        packet is on probation (a jump not yet confirmed: drop it)."""
        last = self._last
        if last is None:
            self._last = value + 0x10000  # one cycle up: early reordering never goes negative
            return self._last
        delta = (value - last) & 0xFFFF
        if delta < MAX_DROPOUT:
            self._bad = None
            if delta:
                last += delta
                self._last = last
            return last
        if delta >= 0x10000 - MAX_MISORDER:
            return last - (0x10000 - delta)  # late
        if value == self._bad:
            # Two in sequence: the source restarted. Its numbering continues above the
            # old one (placed ``delta`` ahead, so the low 16 bits stay the wire value).
            self._bad = None
            self._last = last + delta
            self.restarts += 1
            if self._on_restart is not None:
                self._on_restart()
            return self._last
        self._bad = (value + 1) & 0xFFFF
        return None

    @property
    def last(self) -> int | None:
        """The highest unwrapped value accepted so far, or None before the first."""
        return self._last


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number ``a`` is newer than ``b`` (RFC 1982 serial arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000
