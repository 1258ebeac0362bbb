"""Header-extension blocks a DownTrack writes on every packet (RFC 8285 §4.2, the
one-byte form), prepared once: the bytes around the per-packet value, shared by the
DownTracks with the same ids and MID, and abs-send-time computed once per send time, so
that the subscribers of one fan-out reuse one block."""

from __future__ import annotations

from .rtp import abs_send_time

__all__ = ["SharedBlock", "abs_send_time_at", "extension_templates", "shared_block"]

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
