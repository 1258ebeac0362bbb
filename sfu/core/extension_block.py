"""Header-extension blocks a DownTrack writes on every packet (RFC 8285 §4.2, the
one-byte form), prepared once: the bytes around the per-packet value, shared by the
DownTracks with the same ids and MID, and abs-send-time computed once per send time, so
that the subscribers of one fan-out reuse one block. :class:`ExtensionWriter` is one
subscriber m-line's block: written per packet, or handed to the compiled fan-out as
templates (:meth:`ExtensionWriter.lane_blocks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .rtp import abs_send_time, build_extensions

if TYPE_CHECKING:
    from .send_history import SendHistory

__all__ = ["ExtensionWriter", "SharedBlock", "abs_send_time_at", "extension_templates", "shared_block"]

_cached_ms = -1.0  # now_ms of the cached abs-send-time value ...
_cached_value = b""  # ... shared by every subscriber of a packet sent at that time


def abs_send_time_at(now_ms: float) -> bytes:
    """abs-send-time for ``now_ms`` (monotonic ms), computed once per distinct time: the
    same bytes object for every subscriber of one fan-out."""
    global _cached_ms, _cached_value
    if now_ms != _cached_ms:
        _cached_value = abs_send_time(now_ms / 1000.0)
        _cached_ms = now_ms
    return _cached_value


class SharedBlock:
    """The bytes around the per-packet value of an extension block (one-byte form,
    RFC 8285 §4.2), shared by the DownTracks with the same ids and MID, with the block
    built last: subscribers of one fan-out with the same abs-send-time reuse it."""

    __slots__ = ("block", "head", "tail", "value")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head = head
        self.tail = tail
        self.value: bytes | None = None
        self.block = b""


_blocks: dict[tuple[bytes, bytes], SharedBlock] = {}


def shared_block(head: bytes, tail: bytes) -> SharedBlock:
    """The one :class:`SharedBlock` for (head, tail) (a few hundred distinct at most: ids x MIDs)."""
    block = _blocks.get((head, tail))
    if block is None:
        if len(_blocks) >= 4096:
            _blocks.clear()
        block = _blocks[(head, tail)] = SharedBlock(head, tail)
    return block


def extension_templates(
    twcc_id: int | None, abs_send_time_id: int | None, mid_ext: tuple[int, bytes] | None, level_id: int | None
) -> tuple[SharedBlock, tuple[bytes, bytes, bytes]] | None:
    """Precomputed bytes around the per-packet values of a subscriber's block: the MID
    element (``mid_ext``: id and value), then one value that changes per packet (the
    transport-wide sequence number under ``twcc_id``, else abs-send-time under
    ``abs_send_time_id``, else none), then the audio level (under ``level_id``) when the
    source packet has one.

    Returns:
        ``(block, (head, middle, tail))`` for a packet without and with the audio level,
        so the hot path writes ``head + value + tail`` (``block``: the shared
        :class:`SharedBlock` of head and tail); None when ids need the two-byte form
        (every id must be 1-14 and the MID 1-16 bytes).
    """
    ids = [i for i in (twcc_id, abs_send_time_id) if i is not None]
    if mid_ext is not None:
        ids.append(mid_ext[0])
    if level_id is not None:
        ids.append(level_id)
    if any(not 1 <= i <= 14 for i in ids) or (mid_ext is not None and not 1 <= len(mid_ext[1]) <= 16):
        return None
    mid = bytes(((mid_ext[0] << 4) | (len(mid_ext[1]) - 1),)) + mid_ext[1] if mid_ext else b""
    if twcc_id is not None:
        value_header, value_size = bytes(((twcc_id << 4) | 1,)), 2
    elif abs_send_time_id is not None:
        value_header, value_size = bytes(((abs_send_time_id << 4) | 2,)), 3
    else:
        value_header, value_size = b"", 0
    level_header = bytes((level_id << 4,)) if level_id is not None else b""

    def block(body_size: int) -> tuple[bytes, bytes]:
        padding = -body_size % 4
        return b"\xbe\xde" + ((body_size + padding) >> 2).to_bytes(2, "big"), b"\x00" * padding

    plain_size = len(mid) + len(value_header) + value_size
    word, pad = block(plain_size)
    plain = shared_block(word + mid + value_header, pad) if plain_size else shared_block(b"", b"")
    word, pad = block(plain_size + 2)
    return plain, (word + mid + value_header, level_header, pad)


LaneBlocks = tuple[int, bytes, int, "bytes | None", int, int]


class ExtensionWriter:
    """The extension block of one subscriber's m-line (RFC 8285): its MID, then the
    next transport-wide sequence number of the subscriber's connection (recorded in its
    send history, draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) or, without
    transport-cc, abs-send-time, then the publisher's audio level (RFC 6464) when the
    subscriber negotiated it too. Ids are the subscriber's.

    Args:
        mid: ``(id, MID bytes)`` of the subscriber's MID extension, or None.
        twcc_id: the transport-wide sequence number's id (with ``history``), or None.
        abs_send_time_id: abs-send-time's id (used only without ``twcc_id``), or None.
        level_out: the subscriber's audio-level id, or None.
        level_in: the publisher's audio-level id (read from the source packets), or None.
        history: the connection's :class:`~sfu.core.send_history.SendHistory` (with ``twcc_id``).

    Attributes:
        twcc_seq: the transport-wide sequence number (16 bit) of the block written last.
    """

    __slots__ = ("_level_map", "_templates", "abs_send_time_id", "history", "level_out", "mid", "twcc_id", "twcc_seq")

    def __init__(
        self,
        mid: tuple[int, bytes] | None,
        twcc_id: int | None,
        abs_send_time_id: int | None,
        level_out: int | None,
        level_in: int | None,
        history: SendHistory | None,
    ) -> None:
        self.mid = mid
        self.twcc_id = twcc_id if history is not None else None
        self.history = history if self.twcc_id is not None else None
        self.abs_send_time_id = abs_send_time_id if self.twcc_id is None else None
        self.level_out = level_out
        self.twcc_seq = 0
        self.set_source_level(level_in)

    def set_source_level(self, level_in: int | None) -> None:
        """The publisher's audio-level id changed (a rebound source), or None."""
        self._level_map = (level_in, self.level_out) if level_in and self.level_out else None
        self._templates = extension_templates(
            self.twcc_id, self.abs_send_time_id, self.mid, self._level_map[1] if self._level_map else None
        )

    def block(self, source_extensions: dict[int, bytes], now_ms: float, cluster: int | None = None) -> bytes:
        """The block for one packet sent at ``now_ms`` (ms) whose source carried
        ``source_extensions`` (id -> value); takes the next transport-wide sequence
        number (recorded as sent at ``now_ms`` in probe ``cluster``) when negotiated."""
        history = self.history
        if history is not None:
            seq = self.twcc_seq = history.next(now_ms, cluster)
            value = seq.to_bytes(2, "big")
        elif self.abs_send_time_id is not None:
            value = abs_send_time_at(now_ms)
        else:
            value = b""
        level = source_extensions.get(self._level_map[0]) if self._level_map is not None else None
        templates = self._templates
        if templates is not None:
            if level is None:
                shared = templates[0]
                if value is shared.value:  # another subscriber of this fan-out built it
                    return shared.block
                shared.value = value
                block = shared.block = shared.head + value + shared.tail if shared.head else b""
                return block
            if len(level) == 1:
                head, middle, tail = templates[1]
                return head + value + middle + level + tail
        elements = []
        if self.mid is not None:
            elements.append(self.mid)
        if history is not None:
            elements.append((self.twcc_id, value))
        elif self.abs_send_time_id is not None:
            elements.append((self.abs_send_time_id, value))
        if level is not None and self._level_map is not None:
            elements.append((self._level_map[1], level))
        return build_extensions(elements)

    def sent(self, size: int) -> None:
        """Record ``size`` bytes as the size of the packet whose block was written last
        (in the send history, when transport-cc is negotiated)."""
        if self.history is not None:
            self.history.set_size(self.twcc_seq, size)

    def lane_blocks(self) -> LaneBlocks | None:
        """The block as templates for ``sfu.rtc._fanout.Lane.bind``: ``(value_len,
        plain, plain_value_off, level_block, level_value_off, level_off)``, the value (2
        bytes: transport-wide sequence number; 3: abs-send-time; 0: none) zeroed at its
        offset, ``level_block`` None when the level is not mapped; None when the ids need
        the two-byte form (the block is then built per packet)."""
        if self._templates is None:
            return None
        plain, (head, middle, tail) = self._templates
        value_len = 2 if self.history is not None else 3 if self.abs_send_time_id is not None else 0
        value = bytes(value_len)
        block = plain.head + value + plain.tail if plain.head else b""
        if self._level_map is not None:
            return value_len, block, len(plain.head), head + value + middle + b"\x00" + tail, len(head), len(head) + value_len + len(middle)
        return value_len, block, len(plain.head), None, len(head), -1
