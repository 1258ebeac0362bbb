"""The per-DownTrack forwarding decision and sequence/timestamp munging.

Decide, then apply: :meth:`Forwarder.translate` returns a :class:`Translation` (the
output sequence number and timestamp) or a :class:`DropReason`; the caller only
writes the header. Drops are values, never exceptions.

Output numbering (RFC 3550 §5.1): each DownTrack starts at a random sequence number
and timestamp. Packets the forwarder drops on purpose at the head of the stream
(padding-only packets) close their slot, so the subscriber sees no sequence gap;
packets lost upstream keep their gap, so the subscriber's NACK maps back to them.
"""

from __future__ import annotations

import enum
from bisect import bisect_right

__all__ = ["DropReason", "Translation", "Forwarder"]


class DropReason(enum.Enum):
    """Why a packet was not forwarded to one subscriber (also a metric label)."""

    NOT_CONNECTED = "not_connected"
    WAITING_FOR_KEYFRAME = "waiting_for_keyframe"
    PADDING = "padding"
    PAUSED = "paused"
    TOO_OLD = "too_old"
    DUPLICATE = "duplicate"


class Translation:
    """What to write in the subscriber's header: 16-bit sequence number, 32-bit timestamp."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self, sequence_number: int, timestamp: int) -> None:
        self.sequence_number = sequence_number
        self.timestamp = timestamp

    def __repr__(self) -> str:
        return f"Translation(seq={self.sequence_number}, ts={self.timestamp})"


class Forwarder:
    """Sequence and timestamp munger of one DownTrack for one source stream.

    Args:
        needs_keyframe: video starts forwarding only at a keyframe; audio at once.
        initial_sequence: first output sequence number (16 bit; random per DownTrack).
        initial_timestamp: first output timestamp (32 bit; random per DownTrack).
        history: how many offset segments (one per closed slot) to remember for
            mapping late packets and NACKs.
        max_late: a packet more than this many sequence numbers behind the newest
            forwarded one is dropped as too old.

    Sequence numbers given to :meth:`translate` are unwrapped source numbers; the
    output is kept unwrapped internally and truncated in :class:`Translation`.
    """

    def __init__(
        self,
        needs_keyframe: bool,
        initial_sequence: int,
        initial_timestamp: int,
        history: int = 64,
        max_late: int = 1000,
    ) -> None:
        self.needs_keyframe = needs_keyframe
        self._next_out_seq = initial_sequence & 0xFFFF
        self._out_ts_start = initial_timestamp & 0xFFFFFFFF
        self._history = history
        self._max_late = max_late
        self.started = False
        self.paused = False
        # Offset segments: from source seq _seg_start[i] on, out = src + _seg_offset[i].
        self._seg_start: list[int] = []
        self._seg_offset: list[int] = []
        self._ts_offset = 0
        self._highest_src: int = -1
        self._closed: set[int] = set()

    def translate(self, seq: int, timestamp: int, keyframe: bool, padding_only: bool) -> Translation | DropReason:
        """Decide for one source packet.

        Args:
            seq: unwrapped source sequence number.
            timestamp: unwrapped source RTP timestamp.
            keyframe: the packet starts a keyframe.
            padding_only: the payload is empty (RTP padding only).

        Returns:
            a Translation to send, or the DropReason.
        """
        if self.paused:
            return DropReason.PAUSED
        if not self.started:
            if padding_only:
                return DropReason.PADDING
            if self.needs_keyframe and not keyframe:
                return DropReason.WAITING_FOR_KEYFRAME
            self.started = True
            self._seg_start.append(seq)
            self._seg_offset.append(self._next_out_seq - seq)
            self._ts_offset = self._out_ts_start - timestamp
            self._highest_src = seq
            return self._emit(seq, timestamp)

        if seq > self._highest_src:
            if padding_only:
                # Close the slot: everything after it shifts down by one.
                self._highest_src = seq
                self._push_segment(seq + 1, self._seg_offset[-1] - 1)
                return DropReason.PADDING
            self._highest_src = seq
            return self._emit(seq, timestamp)

        # Late (reordered or retransmitted upstream) packet.
        if self._highest_src - seq > self._max_late or seq < self._seg_start[0]:
            return DropReason.TOO_OLD
        if seq == self._highest_src or seq in self._closed:
            return DropReason.DUPLICATE
        if padding_only:
            return DropReason.PADDING
        return self._emit(seq, timestamp)

    @property
    def timestamp_offset(self) -> int:
        """Output timestamp minus source timestamp (apply modulo 2**32); 0 before start."""
        return self._ts_offset

    def _emit(self, seq: int, timestamp: int) -> Translation:
        return Translation((seq + self._offset_for(seq)) & 0xFFFF, (timestamp + self._ts_offset) & 0xFFFFFFFF)

    def _push_segment(self, start: int, offset: int) -> None:
        self._closed.add(start - 1)
        self._seg_start.append(start)
        self._seg_offset.append(offset)
        if len(self._seg_start) > self._history:
            dropped = self._seg_start[0]
            del self._seg_start[0]
            del self._seg_offset[0]
            self._closed = {s for s in self._closed if s >= dropped}

    def _offset_for(self, seq: int) -> int:
        if seq >= self._seg_start[-1]:
            return self._seg_offset[-1]
        i = bisect_right(self._seg_start, seq) - 1
        return self._seg_offset[max(i, 0)]

    def source_sequence(self, out_seq: int) -> int | None:
        """Map a 16-bit output sequence number (from a subscriber's NACK) to the source.

        Returns:
            the unwrapped source sequence number, or None if it is not one this
            forwarder sent (closed slot, before the start, or too old).
        """
        if not self.started:
            return None
        # Unwrap the output number near the newest output.
        newest_out = self._highest_src + self._seg_offset[-1]
        delta = (out_seq - newest_out) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        out = newest_out + delta
        for i in range(len(self._seg_start) - 1, -1, -1):
            src = out - self._seg_offset[i]
            if src >= self._seg_start[i]:
                if src > self._highest_src or src in self._closed:
                    return None
                return src
        return None
