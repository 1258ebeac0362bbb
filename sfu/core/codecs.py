"""Keyframe detection in VP8 and H.264 RTP payloads, and RTX payload handling.

VP8: RFC 7741 §4.2 (payload descriptor) and §4.3 (payload header, P bit).
H.264: RFC 6184 §5.6 (single NAL unit), §5.7.1 (STAP-A), §5.8 (FU-A).
RTX: RFC 4588 §4 (original sequence number in the first two payload bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Vp8Descriptor",
    "parse_vp8_descriptor",
    "vp8_is_keyframe",
    "vp8_keyframe_size",
    "h264_is_keyframe",
    "is_keyframe",
    "rtx_original_sequence",
]


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """The fields of a VP8 payload descriptor (RFC 7741 §4.2).

    ``picture_id`` is None when absent, else 7 or 15 bits (``picture_id_bits``);
    ``tl0_pic_idx``, ``tid`` and ``key_idx`` are None when absent. ``size`` is the
    descriptor length in bytes, i.e. where the VP8 payload header starts.
    """

    start_of_partition: bool
    partition_index: int
    picture_id: int | None
    picture_id_bits: int
    tl0_pic_idx: int | None
    tid: int | None
    layer_sync: bool
    key_idx: int | None
    size: int


def parse_vp8_descriptor(payload: bytes) -> Vp8Descriptor:
    """Parse the VP8 payload descriptor at the start of an RTP payload.

    Raises:
        ValueError: the payload ends inside the descriptor.
    """
    n = len(payload)
    if n < 1:
        raise ValueError("empty VP8 payload")
    b0 = payload[0]
    i = 1
    picture_id = tl0 = tid = key_idx = None
    pid_bits = 0
    layer_sync = False
    if b0 & 0x80:  # X: extended control bits present
        if n < 2:
            raise ValueError("VP8 descriptor truncated (X)")
        x = payload[1]
        i = 2
        if x & 0x80:  # I: PictureID present
            if n < i + 1:
                raise ValueError("VP8 descriptor truncated (PictureID)")
            if payload[i] & 0x80:  # M: 15-bit PictureID
                if n < i + 2:
                    raise ValueError("VP8 descriptor truncated (PictureID)")
                picture_id = ((payload[i] & 0x7F) << 8) | payload[i + 1]
                pid_bits = 15
                i += 2
            else:
                picture_id = payload[i] & 0x7F
                pid_bits = 7
                i += 1
        if x & 0x40:  # L: TL0PICIDX present
            if n < i + 1:
                raise ValueError("VP8 descriptor truncated (TL0PICIDX)")
            tl0 = payload[i]
            i += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX byte present
            if n < i + 1:
                raise ValueError("VP8 descriptor truncated (TID/KEYIDX)")
            b = payload[i]
            if x & 0x20:
                tid = b >> 6
                layer_sync = bool(b & 0x20)
            if x & 0x10:
                key_idx = b & 0x1F
            i += 1
    return Vp8Descriptor(
        start_of_partition=bool(b0 & 0x10),
        partition_index=b0 & 0x0F,
        picture_id=picture_id,
        picture_id_bits=pid_bits,
        tl0_pic_idx=tl0,
        tid=tid,
        layer_sync=layer_sync,
        key_idx=key_idx,
        size=i,
    )


def vp8_is_keyframe(payload: bytes) -> bool:
    """True when this packet starts a VP8 key frame (RFC 7741 §4.3).

    The first packet of a frame has S=1 and partition index 0; the P bit of the VP8
    payload header that follows the descriptor is 0 for a key frame. Malformed
    payloads are not keyframes.
    """
    try:
        d = parse_vp8_descriptor(payload)
    except ValueError:
        return False
    if not d.start_of_partition or d.partition_index != 0 or len(payload) <= d.size:
        return False
    return (payload[d.size] & 0x01) == 0


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels of the VP8 key frame this packet starts, else None.

    The key frame header (RFC 6386 §9.1) follows the 3-byte frame tag: start code
    ``9d 01 2a``, then 14-bit little-endian width and height (scaling bits dropped).
    """
    try:
        d = parse_vp8_descriptor(payload)
    except ValueError:
        return None
    i = d.size
    if len(payload) < i + 10 or payload[i] & 0x01 or payload[i + 3 : i + 6] != b"\x9d\x01\x2a":
        return None
    width = (payload[i + 6] | (payload[i + 7] << 8)) & 0x3FFF
    height = (payload[i + 8] | (payload[i + 9] << 8)) & 0x3FFF
    return width, height


_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def h264_is_keyframe(payload: bytes) -> bool:
    """True when this packet carries (the start of) an IDR slice or an SPS (RFC 6184).

    Looks into single NAL unit packets, STAP-A aggregation units and the first FU-A
    fragment. Malformed payloads are not keyframes.
    """
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == _H264_STAP_A:
        i = 1
        n = len(payload)
        while i + 2 < n:
            size = (payload[i] << 8) | payload[i + 1]
            i += 2
            if size == 0 or i + size > n:
                return False
            if payload[i] & 0x1F in (_H264_IDR, _H264_SPS):
                return True
            i += size
        return False
    if nal_type == _H264_FU_A:
        if len(payload) < 2:
            return False
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) in (_H264_IDR, _H264_SPS)
    return False


def is_keyframe(mime_type: str, payload: bytes) -> bool:
    """Keyframe detection by codec; ``mime_type`` like ``"video/VP8"`` (case-insensitive).

    Audio and unknown codecs never have keyframes (returns False).
    """
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_is_keyframe(payload)
    if mime == "video/h264":
        return h264_is_keyframe(payload)
    return False


def rtx_original_sequence(payload: bytes) -> int:
    """The original sequence number (OSN) of an RTX packet payload (RFC 4588 §4).

    Raises:
        ValueError: payload shorter than 2 bytes.
    """
    if len(payload) < 2:
        raise ValueError("RTX payload has no original sequence number")
    return (payload[0] << 8) | payload[1]
