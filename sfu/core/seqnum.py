"""Unwrapping of RTP sequence numbers (16 bit) and timestamps (32 bit) to Python ints.

RFC 3550 §A.1 keeps a cycle count for the 16-bit sequence number; the same idea applies
to the 32-bit RTP timestamp. Values are unwrapped once, on arrival, and truncated only
when a packet is serialized.
"""

from __future__ import annotations

__all__ = ["Unwrapper", "SEQ_BITS", "TS_BITS", "seq_newer"]

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


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number ``a`` is newer than ``b`` (RFC 1982 serial arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000
