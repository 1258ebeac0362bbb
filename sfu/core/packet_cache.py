"""The packet cache of an UpTrack: each packet stored once, at arrival, for retransmission.

A ring of ``capacity`` slots (a power of two) indexed by the unwrapped sequence number;
a slot holds the packet with that exact unwrapped number or nothing. DownTracks keep
only sequence-number mappings into it, never their own copies (RFC 4585 §6.2.1 NACKs
are answered from here).
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["PacketCache"]

T = TypeVar("T")


class PacketCache(Generic[T]):
    """Fixed-size cache of packets keyed by unwrapped sequence number.

    Args:
        capacity: number of slots, rounded up to a power of two (e.g. 512 holds ~4 s of
            a 720p layer at 130 packets/s).

    Memory is bounded by ``capacity`` packets whatever arrives.
    """

    __slots__ = ("_mask", "_seqs", "_items")

    def __init__(self, capacity: int = 512) -> None:
        size = 1
        while size < capacity:
            size <<= 1
        self._mask = size - 1
        self._seqs: list[int] = [-1] * size
        self._items: list[T | None] = [None] * size

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self._mask + 1

    def put(self, seq: int, item: T) -> None:
        """Store ``item`` under unwrapped sequence number ``seq`` (evicts what held the slot)."""
        i = seq & self._mask
        self._seqs[i] = seq
        self._items[i] = item

    def get(self, seq: int) -> T | None:
        """The item stored under unwrapped ``seq``, or None if never stored or evicted."""
        i = seq & self._mask
        if self._seqs[i] == seq:
            return self._items[i]
        return None

    def __contains__(self, seq: int) -> bool:
        return self._seqs[seq & self._mask] == seq
