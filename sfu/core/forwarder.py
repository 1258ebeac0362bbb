"""The per-DownTrack forwarding decision and sequence/timestamp munging.

Decide, then apply: for every source packet :meth:`Forwarder.decide` returns one value,
a :class:`Translation` (the output sequence number and timestamp: send it), a
:class:`Switch` (this keyframe starts the target layer: the caller computes the output
timestamp, calls :meth:`Forwarder.switch` and :meth:`Forwarder.translate`, and sends
it) or a :class:`DropReason`. The caller only writes the header. Drops are values,
never exceptions.

Output numbering (RFC 3550 §5.1): each DownTrack starts at a random sequence number
and timestamp. Packets the forwarder drops on purpose at the head of the stream
(padding-only packets) close their slot, so the subscriber sees no sequence gap;
packets lost upstream keep their gap, so the subscriber's NACK maps back to them.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from typing import NamedTuple

__all__ = ["DropReason", "ForwardState", "Forwarder", "SourceRef", "Switch", "Translation"]


class DropReason(enum.Enum):
    """Why a packet was not forwarded to one subscriber (also a metric label)."""

    NOT_CONNECTED = "not_connected"
    WAITING_FOR_KEYFRAME = "waiting_for_keyframe"
    OTHER_LAYER = "other_layer"  # a simulcast layer not forwarded now (being left, or before its keyframe)
    PADDING = "padding"
    TOO_OLD = "too_old"
    DUPLICATE = "duplicate"


class Switch:
    """The decision that a keyframe of the target ``layer`` starts forwarding it (the
    first layer, a resume, or a simulcast layer switch)."""

    __slots__ = ("layer",)

    def __init__(self, layer: int) -> None:
        self.layer = layer

    def __repr__(self) -> str:
        return f"Switch(layer={self.layer})"


class Translation:
    """What to write in the subscriber's header: 16-bit sequence number, 32-bit timestamp."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self, sequence_number: int, timestamp: int) -> None:
        self.sequence_number = sequence_number
        self.timestamp = timestamp

    def __repr__(self) -> str:
        return f"Translation(seq={self.sequence_number}, ts={self.timestamp})"


class SourceRef(NamedTuple):
    """Where an output packet came from: source layer, unwrapped source sequence
    number, the timestamp offset then in force, and the epoch number (one per switch)."""

    layer: int
    sequence: int
    timestamp_offset: int
    epoch: int


class ForwardState:
    """The fields of one DownTrack that every forwarded packet reads and writes: the
    forwarder's position in the current epoch and the sent counters.

    The :class:`Forwarder` keeps them here (not in its epochs) so that the compiled
    fan-out (``sfu.rtc._fanout.Lane``, which has the same attributes and subclasses
    nothing) can apply the common decision itself: a packet of ``layer`` newer than
    ``highest_src`` goes out as ``seq + seq_offset`` (16 bit) and ``timestamp +
    ts_offset`` (32 bit), and these fields move on exactly as :meth:`Forwarder.decide`
    moves them. Every other packet goes through :meth:`Forwarder.decide`.

    Attributes:
        layer: the source layer forwarded, -1 for none.
        highest_src: the newest unwrapped source sequence number of the current epoch.
        seq_offset: output minus source sequence number of the current segment.
        ts_offset: output minus source timestamp (unwrapped, 90 kHz or 48 kHz ticks).
        last_out_ts: the newest output timestamp, unwrapped.
        packets_sent, octets_sent, bytes_sent: RTP packets, payload bytes and all
            bytes (padding included) sent to the subscriber.
        pid_offset, tl0_offset, last_pid, last_tl0: the VP8 PictureID and TL0PICIDX
            offsets and the last ones sent (-1: none yet), kept by
            :class:`~sfu.core.vp8_munger.Vp8Munger` for simulcast VP8.
        active: the compiled fan-out may forward for this DownTrack (its owner says).
    """

    __slots__ = (
        "active",
        "bytes_sent",
        "highest_src",
        "last_out_ts",
        "last_pid",
        "last_tl0",
        "layer",
        "octets_sent",
        "packets_sent",
        "pid_offset",
        "seq_offset",
        "tl0_offset",
        "ts_offset",
    )

    def __init__(self) -> None:
        self.active = False
        self.layer = -1
        self.highest_src = -1
        self.seq_offset = 0
        self.ts_offset = 0
        self.last_out_ts = 0
        self.packets_sent = 0
        self.octets_sent = 0
        self.bytes_sent = 0
        self.pid_offset = 0
        self.tl0_offset = 0
        self.last_pid = -1
        self.last_tl0 = -1


class _Epoch:
    """The numbering of one stretch of one source layer: offset segments (from source
    seq ``seg_start[i]`` on, ``out = src + seg_offset[i]``), closed padding slots, the
    newest source seq and the timestamp offset. For the current epoch the newest source
    seq, the last segment's offset and the timestamp offset live in the
    :class:`ForwardState`; ``highest_src`` here is synchronised from it before use."""

    __slots__ = ("closed", "highest_src", "index", "layer", "seg_offset", "seg_start", "ts_offset")

    def __init__(self, index: int, layer: int, seq: int, out_seq: int, ts_offset: int) -> None:
        self.index = index
        self.layer = layer
        self.seg_start = [seq]
        self.seg_offset = [out_seq - seq]
        self.closed: set[int] = set()
        self.highest_src = seq - 1
        self.ts_offset = ts_offset

    def offset_for(self, seq: int) -> int:
        if seq >= self.seg_start[-1]:
            return self.seg_offset[-1]
        i = bisect_right(self.seg_start, seq) - 1
        return self.seg_offset[max(i, 0)]

    def source_of(self, out: int) -> int | None:
        """The source seq sent as unwrapped output number ``out`` in this epoch, if any."""
        for i in range(len(self.seg_start) - 1, -1, -1):
            src = out - self.seg_offset[i]
            if src >= self.seg_start[i]:
                if src > self.highest_src or src in self.closed:
                    return None
                return src
        return None


class Forwarder:
    """Sequence and timestamp munger of one DownTrack.

    Args:
        needs_keyframe: video starts forwarding only at a keyframe; audio at once.
        initial_sequence: first output sequence number (16 bit; random per DownTrack).
        initial_timestamp: first output timestamp (32 bit; random per DownTrack).
        history: how many offset segments (one per closed slot) to remember for
            mapping late packets and NACKs.
        max_late: a packet more than this many sequence numbers behind the newest
            forwarded one is dropped as too old.
        state: where the per-packet fields live (:class:`ForwardState`, or the
            compiled fan-out's ``Lane``); a new ForwardState by default.

    Sequence numbers and timestamps given to it are unwrapped source numbers of the
    current source ``layer``; the output is kept unwrapped internally and truncated in
    :class:`Translation`. A simulcast layer switch (:meth:`switch`) starts a new epoch
    on another source stream: the output sequence continues at the next number and the
    output timestamp at the value the caller computed, so the subscriber sees one
    continuous stream (RFC 3550 §5.1). Older epochs are kept for NACK mapping.
    """

    EPOCHS_KEPT = 4

    def __init__(
        self,
        needs_keyframe: bool,
        initial_sequence: int,
        initial_timestamp: int,
        history: int = 64,
        max_late: int = 1000,
        state: ForwardState | None = None,
    ) -> None:
        self.needs_keyframe = needs_keyframe
        self._next_out_seq = initial_sequence & 0xFFFF
        self._out_ts_start = initial_timestamp & 0xFFFFFFFF
        self._history = history
        self._max_late = max_late
        self.started = False
        self.target: int | None = None  # the layer wanted: forwarded from its next keyframe
        self._switches: dict[int, Switch] = {}
        self._epoch = _Epoch(0, 0, 0, self._next_out_seq, 0)
        self._old: list[_Epoch] = []
        st = self.state = state if state is not None else ForwardState()
        st.layer = -1
        st.highest_src = self._epoch.highest_src
        st.seq_offset = self._epoch.seg_offset[-1]
        st.ts_offset = 0
        st.last_out_ts = self._out_ts_start

    @property
    def layer(self) -> int | None:
        """The source layer forwarded now (None before the start or while paused)."""
        layer = self.state.layer
        return None if layer < 0 else layer

    @layer.setter
    def layer(self, layer: int | None) -> None:
        self.state.layer = -1 if layer is None else layer

    @property
    def last_out_timestamp(self) -> int:
        """The newest output timestamp, unwrapped."""
        return self.state.last_out_ts

    def _current(self) -> _Epoch:
        """The current epoch with its newest source seq brought up from the state."""
        epoch = self._epoch
        epoch.highest_src = self.state.highest_src
        return epoch

    def switch(self, layer: int, seq: int, timestamp: int, out_timestamp: int | None = None) -> None:
        """Start forwarding source ``layer`` from its packet ``seq`` (call at a keyframe).

        Args:
            layer: the source layer index the next packets come from.
            seq: unwrapped sequence number of its first packet to forward.
            timestamp: unwrapped RTP timestamp of that packet.
            out_timestamp: the output timestamp to give it (unwrapped, after
                :attr:`last_out_timestamp`); None at the start uses the initial one.

        The packet's output sequence number is the one after the last sent.
        """
        epoch = self._current()
        st = self.state
        if self.started:
            next_out = epoch.highest_src + 1 + epoch.seg_offset[-1]
            self._old.append(epoch)
            if len(self._old) > self.EPOCHS_KEPT:
                del self._old[0]
        else:
            next_out = self._next_out_seq
            self.started = True
        if out_timestamp is None:
            out_timestamp = self._out_ts_start if not self._old else st.last_out_ts + 1
        new = self._epoch = _Epoch(epoch.index + 1, layer, seq, next_out, out_timestamp - timestamp)
        st.layer = layer
        st.highest_src = new.highest_src
        st.seq_offset = new.seg_offset[-1]
        st.ts_offset = new.ts_offset

    def decide(
        self, layer: int, seq: int, timestamp: int, keyframe: bool, padding_only: bool
    ) -> Translation | Switch | DropReason:
        """The whole forwarding decision for one source packet of ``layer`` (hot path).

        A packet of the current layer is translated (:meth:`translate`). A packet of
        :attr:`target` starts it when it is a keyframe (or when no keyframe is needed,
        audio): :class:`Switch`. Before that, the target's packets are dropped with
        ``WAITING_FOR_KEYFRAME`` while nothing is forwarded (the caller asks the
        publisher for a keyframe) and ``OTHER_LAYER`` while the current layer goes on;
        so are the last packets of a layer being left.
        """
        st = self.state
        if layer == st.layer:
            if seq > st.highest_src and not padding_only:
                # The common case, inline (the compiled fan-out does the same): the next
                # packet of the current layer.
                st.highest_src = seq
                out_ts = st.last_out_ts = timestamp + st.ts_offset
                return Translation((seq + st.seq_offset) & 0xFFFF, out_ts & 0xFFFFFFFF)
            return self.translate(seq, timestamp, keyframe, padding_only)
        if layer != self.target:
            return DropReason.OTHER_LAYER
        if padding_only:
            return DropReason.PADDING
        if self.needs_keyframe and not keyframe:
            return DropReason.WAITING_FOR_KEYFRAME if self.layer is None else DropReason.OTHER_LAYER
        switch = self._switches.get(layer)
        if switch is None:
            switch = self._switches[layer] = Switch(layer)
        return switch

    def translate(self, seq: int, timestamp: int, keyframe: bool, padding_only: bool) -> Translation | DropReason:
        """Decide for one source packet of the current layer.

        Args:
            seq: unwrapped source sequence number.
            timestamp: unwrapped source RTP timestamp.
            keyframe: the packet starts a keyframe.
            padding_only: the payload is empty (RTP padding only).

        Returns:
            a Translation to send, or the DropReason. Before the first :meth:`switch`,
            a keyframe (any packet for audio) starts layer 0.
        """
        if not self.started:
            if padding_only:
                return DropReason.PADDING
            if self.needs_keyframe and not keyframe:
                return DropReason.WAITING_FOR_KEYFRAME
            self.switch(0, seq, timestamp)
        epoch = self._current()
        st = self.state

        if seq > epoch.highest_src:
            st.highest_src = epoch.highest_src = seq
            if padding_only:
                # Close the slot: everything after it shifts down by one.
                self._push_segment(epoch, seq + 1, epoch.seg_offset[-1] - 1)
                return DropReason.PADDING
            out_ts = st.last_out_ts = timestamp + epoch.ts_offset
            return Translation((seq + epoch.seg_offset[-1]) & 0xFFFF, out_ts & 0xFFFFFFFF)

        # Late (reordered or retransmitted upstream) packet.
        if epoch.highest_src - seq > self._max_late or seq < epoch.seg_start[0]:
            return DropReason.TOO_OLD
        if seq == epoch.highest_src or seq in epoch.closed:
            return DropReason.DUPLICATE
        if padding_only:
            return DropReason.PADDING
        return Translation((seq + epoch.offset_for(seq)) & 0xFFFF, (timestamp + epoch.ts_offset) & 0xFFFFFFFF)

    @property
    def epoch(self) -> int:
        """The current epoch's number (it grows by one per :meth:`switch`)."""
        return self._epoch.index

    def recent(self, count: int) -> list[tuple[int, int]]:
        """Up to ``count`` of the newest packets sent in the current epoch, newest
        first, as ``(unwrapped source seq, 16-bit output seq)`` (for padding with
        redundant retransmissions)."""
        epoch = self._current()
        out: list[tuple[int, int]] = []
        seq = epoch.highest_src
        while len(out) < count and seq >= epoch.seg_start[0] and self.started:
            if seq not in epoch.closed:
                out.append((seq, (seq + epoch.offset_for(seq)) & 0xFFFF))
            seq -= 1
        return out

    @property
    def timestamp_offset(self) -> int:
        """Output timestamp minus source timestamp of the current layer (apply modulo
        2**32); 0 before start."""
        return self._epoch.ts_offset

    def _push_segment(self, epoch: _Epoch, start: int, offset: int) -> None:
        epoch.closed.add(start - 1)
        epoch.seg_start.append(start)
        epoch.seg_offset.append(offset)
        self.state.seq_offset = offset
        if len(epoch.seg_start) > self._history:
            dropped = epoch.seg_start[0]
            del epoch.seg_start[0]
            del epoch.seg_offset[0]
            epoch.closed = {s for s in epoch.closed if s >= dropped}

    def source_sequence(self, out_seq: int) -> SourceRef | None:
        """Map a 16-bit output sequence number (from a subscriber's NACK) to the source.

        Returns:
            the :class:`SourceRef`, or None if it is not a packet this forwarder sent
            (closed slot, before the start, or too old).
        """
        if not self.started:
            return None
        epoch = self._current()
        # Unwrap the output number near the newest output.
        newest_out = epoch.highest_src + epoch.seg_offset[-1]
        delta = (out_seq - newest_out) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        out = newest_out + delta
        for e in (epoch, *reversed(self._old)):
            src = e.source_of(out)
            if src is not None:
                return SourceRef(e.layer, src, e.ts_offset, e.index)
            if out >= e.seg_start[0] + e.seg_offset[0]:
                return None  # in this epoch's range but not sent
        return None
