"""Keep VP8 PictureID and TL0PICIDX continuous across simulcast layer switches.

Each simulcast layer numbers its pictures on its own (RFC 7741 §4.2: PictureID 7 or
15 bits, TL0PICIDX 8 bits). A subscriber sees one stream, so after a switch the
numbers continue from the last ones it got: a jump would look like lost pictures to
the receiver's frame-reference logic.
"""

from __future__ import annotations

from .forwarder import ForwardState

__all__ = ["Vp8Munger", "descriptor_fields"]


class Vp8Munger:
    """Rewrites the PictureID and TL0PICIDX of one DownTrack's VP8 packets.

    Call :meth:`on_switch` when the forwarder switches layers; the next packet (the
    keyframe that starts the new layer) then continues the numbering. Until the first
    switch after the start the numbers pass unchanged.

    Args:
        state: where the offsets and the last numbers sent live (attributes
            ``pid_offset``, ``tl0_offset``, ``last_pid``, ``last_tl0``; -1: none yet): the
            DownTrack's :class:`~sfu.core.forwarder.ForwardState` (or the compiled
            fan-out's ``Lane``, which rewrites the packets it forwards itself, as
            :meth:`rewrite` does); a new ForwardState by default.
    """

    __slots__ = ("_state", "_switch_pending")

    def __init__(self, state: ForwardState | None = None) -> None:
        st = self._state = state if state is not None else ForwardState()
        st.pid_offset = st.tl0_offset = 0
        st.last_pid = st.last_tl0 = -1
        self._switch_pending = False

    def on_switch(self) -> None:
        """The next packet is the first of a new source layer."""
        self._switch_pending = True

    @property
    def switch_pending(self) -> bool:
        """A switch was announced and no packet with a PictureID or TL0PICIDX has set
        the new offsets yet (the next :meth:`rewrite` will)."""
        return self._switch_pending

    @property
    def offsets(self) -> tuple[int, int]:
        """The (PictureID, TL0PICIDX) offsets in force now."""
        return self._state.pid_offset, self._state.tl0_offset

    def rewrite(self, payload: bytes, fields: DescriptorFields | None | bool = False) -> bytes | None:
        """The rewritten descriptor bytes for ``payload`` (the start of an RTP payload;
        8 bytes are enough), or None when nothing changes (no offsets, no extension
        fields, or a malformed descriptor).

        ``fields`` is :func:`descriptor_fields` of ``payload`` when the caller parsed it
        once for all subscribers (False: parse it here).

        The returned bytes replace ``payload[:len(returned)]``; the descriptor keeps
        its size (7-bit PictureIDs stay 7-bit).
        """
        if fields is False:
            fields = _fields(payload)
        if fields is None:
            return None
        size, pid, pid_mod, tl0 = fields
        st = self._state
        if self._switch_pending:
            self._switch_pending = False
            if pid is not None and st.last_pid >= 0:
                st.pid_offset = (st.last_pid + 1 - pid) % pid_mod
            if tl0 is not None and st.last_tl0 >= 0:
                st.tl0_offset = (st.last_tl0 + 1 - tl0) & 0xFF
        if pid is not None:
            out_pid = (pid + st.pid_offset) % pid_mod
            last = st.last_pid
            if last < 0 or (out_pid - last) % pid_mod < pid_mod // 2:
                st.last_pid = out_pid
        if tl0 is not None:
            out_tl0 = (tl0 + st.tl0_offset) & 0xFF
            last = st.last_tl0
            if last < 0 or (out_tl0 - last) & 0xFF < 0x80:
                st.last_tl0 = out_tl0
        if not (st.pid_offset or st.tl0_offset):
            return None
        return _write(payload, size, pid, pid_mod, tl0, st.pid_offset, st.tl0_offset)

    @staticmethod
    def rewrite_with(payload: bytes, offsets: tuple[int, int]) -> bytes | None:
        """Like :meth:`rewrite` with given (PictureID, TL0PICIDX) offsets and no state
        change (a retransmission from an earlier epoch)."""
        fields = _fields(payload)
        if fields is None or offsets == (0, 0):
            return None
        size, pid, pid_mod, tl0 = fields
        return _write(payload, size, pid, pid_mod, tl0, offsets[0], offsets[1])


DescriptorFields = tuple[int, "int | None", int, "int | None"]


def descriptor_fields(payload: bytes) -> DescriptorFields | None:
    """The VP8 payload descriptor's fields (RFC 7741 §4.2) that the munger rewrites:
    (bytes up to and including TL0PICIDX, PictureID, its modulus 2^7 or 2^15, TL0PICIDX),
    or None for a descriptor without the X bit or a truncated one."""
    return _fields(payload)


def _fields(payload: bytes) -> DescriptorFields | None:
    """(bytes up to TL0PICIDX, PictureID, its modulus, TL0PICIDX) or None."""
    n = len(payload)
    if n < 2 or not payload[0] & 0x80:
        return None
    x = payload[1]
    i = 2
    pid = None
    pid_mod = 0
    if x & 0x80:
        if n <= i:
            return None
        if payload[i] & 0x80:
            if n <= i + 1:
                return None
            pid = ((payload[i] & 0x7F) << 8) | payload[i + 1]
            pid_mod = 0x8000
            i += 2
        else:
            pid = payload[i] & 0x7F
            pid_mod = 0x80
            i += 1
    tl0 = None
    if x & 0x40:
        if n <= i:
            return None
        tl0 = payload[i]
        i += 1
    return i, pid, pid_mod, tl0


def _write(payload: bytes, size: int, pid: int | None, pid_mod: int, tl0: int | None, pid_offset: int, tl0_offset: int) -> bytes:
    out = bytearray(payload[:size])
    i = 2
    if pid is not None:
        value = (pid + pid_offset) % pid_mod
        if pid_mod == 0x8000:
            out[2] = 0x80 | (value >> 8)
            out[3] = value & 0xFF
            i = 4
        else:
            out[2] = value
            i = 3
    if tl0 is not None:
        out[i] = (tl0 + tl0_offset) & 0xFF
    return bytes(out)
