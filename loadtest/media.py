"""Publishing media for bots: a short synthetic clip encoded once, then looped.

:class:`PreEncodedVideoTrack` (VP8) and :class:`PreEncodedAudioTrack` (Opus, 20 ms
packets at 48 kHz) return ``av.Packet`` objects, which aiortc's ``RTCRtpSender``
only packetizes, so a publishing bot costs almost no CPU.

Units: times are seconds unless a name says otherwise; bit rates are bits per second.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

__all__ = ["EncodedClip", "encode_vp8_clip", "encode_opus_clip", "PreEncodedVideoTrack", "PreEncodedAudioTrack"]


@dataclass(frozen=True, slots=True)
class EncodedClip:
    """A short encoded clip that a track loops.

    Attributes:
        packets: the encoded frames (one ``bytes`` per VP8 frame or Opus packet).
        pts: presentation time of each packet in ``time_base`` units, from 0.
        time_base: seconds per pts tick.
        duration: length of one loop in ``time_base`` ticks; loop ``k`` adds
            ``k * duration`` to every pts.
        keyframes: True for packets that are keyframes (every Opus packet is).
    """

    packets: tuple[bytes, ...]
    pts: tuple[int, ...]
    time_base: fractions.Fraction
    duration: int
    keyframes: tuple[bool, ...]

    @property
    def bitrate(self) -> float:
        """Average payload bit rate of the clip, bits per second."""
        seconds = float(self.duration * self.time_base)
        return sum(len(p) for p in self.packets) * 8 / seconds


def _synthetic_video(width: int, height: int, index: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB frame (``height x width x 3``, uint8): moving gradients and a checker
    board with 8x8 blocks of noise, so that a video encoder needs a real bit rate."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx + 4 * index) % 256
    img[..., 1] = (yy + 2 * index) % 256
    img[..., 2] = ((xx // 16 + yy // 16 + index) % 2) * 255
    noise = rng.integers(0, 64, (height // 8 + 1, width // 8 + 1), dtype=np.uint8)
    img[..., 2] ^= noise.repeat(8, 0).repeat(8, 1)[:height, :width]
    return img


@functools.lru_cache(maxsize=8)
def encode_vp8_clip(
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    seconds: float = 2.0,
    bitrate: int = 1_000_000,
    keyframe_interval: int = 30,
) -> EncodedClip:
    """Encode a synthetic VP8 clip once (cached per argument set).

    Args:
        width, height: frame size in pixels (even numbers).
        fps: frames per second.
        seconds: clip length; the number of frames is rounded to a whole multiple of
            ``keyframe_interval`` so that every loop starts on a keyframe.
        bitrate: target bit rate, bits per second (libvpx CBR).
        keyframe_interval: frames between keyframes (a new subscriber waits at most
            this long for a picture).

    Returns:
        the clip, ``time_base`` = 1/fps.
    """
    frames = max(1, round(seconds * fps / keyframe_interval)) * keyframe_interval
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps, 1)
    codec.gop_size = keyframe_interval
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "static-thresh": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    rng = np.random.default_rng(1)
    encoded: list[av.Packet] = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(_synthetic_video(width, height, i, rng), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = codec.time_base
        # Force a keyframe at each interval: libvpx's own placement may drift.
        frame.pict_type = av.video.frame.PictureType.I if i % keyframe_interval == 0 else av.video.frame.PictureType.NONE
        encoded.extend(codec.encode(frame))
    encoded.extend(codec.encode(None))
    if len(encoded) != frames:
        raise RuntimeError(f"VP8 encoder returned {len(encoded)} packets for {frames} frames")
    return EncodedClip(
        packets=tuple(bytes(p) for p in encoded),
        pts=tuple(range(frames)),
        time_base=fractions.Fraction(1, fps),
        duration=frames,
        keyframes=tuple(bool(p.is_keyframe) for p in encoded),
    )


@functools.lru_cache(maxsize=8)
def encode_opus_clip(
    seconds: float = 2.0, bitrate: int = 64_000, tone_hz: float = 440.0
) -> EncodedClip:
    """Encode a stereo sine tone once as 20 ms Opus packets at 48 kHz (cached).

    Args:
        seconds: clip length, rounded to whole 20 ms packets; a tone of whole cycles per
            clip loops without a click (440 Hz over 2 s does).
        bitrate: Opus target bit rate, bits per second.
        tone_hz: tone frequency, hertz.

    Returns:
        the clip, ``time_base`` = 1/48000, 960 ticks per packet.
    """
    rate, samples_per_packet = 48_000, 960
    count = max(1, round(seconds * rate / samples_per_packet))
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = rate
    codec.format = "s16"
    codec.layout = "stereo"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, rate)
    codec.options = {"application": "audio", "frame_duration": "20"}
    t = np.arange(count * samples_per_packet) / rate
    mono = (0.3 * 32767 * np.sin(2 * np.pi * tone_hz * t)).astype(np.int16)
    interleaved = np.repeat(mono, 2).reshape(1, -1)
    encoded: list[av.Packet] = []
    for i in range(count):
        chunk = interleaved[:, i * samples_per_packet * 2 : (i + 1) * samples_per_packet * 2]
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = rate
        frame.pts = i * samples_per_packet
        frame.time_base = codec.time_base
        encoded.extend(codec.encode(frame))
    encoded.extend(codec.encode(None))
    # The encoder's pre-skip adds a trailing packet: keep one packet per input frame.
    packets = tuple(bytes(p) for p in encoded[:count])
    return EncodedClip(
        packets=packets,
        pts=tuple(i * samples_per_packet for i in range(count)),
        time_base=fractions.Fraction(1, rate),
        duration=count * samples_per_packet,
        keyframes=(True,) * count,
    )


class _ClipTrack(MediaStreamTrack):
    """Loops an :class:`EncodedClip` as ``av.Packet`` objects paced in real time."""

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self.clip = clip
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:  # type: ignore[override]
        """The next packet, returned when its presentation time is due.

        Pts keep increasing across loops, so RTP timestamps never jump back.
        """
        if self.readyState != "live":
            raise MediaStreamError
        clip = self.clip
        loops, i = divmod(self._index, len(clip.packets))
        pts = loops * clip.duration + clip.pts[i]
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + float(pts * clip.time_base) - now
        if delay > 0:
            await asyncio.sleep(delay)
        self._index += 1
        packet = av.Packet(clip.packets[i])
        packet.pts = pts
        packet.time_base = clip.time_base
        return packet


class PreEncodedVideoTrack(_ClipTrack):
    """A video track that loops a pre-encoded VP8 clip (no encoding per frame).

    Publish it with :meth:`RoomClient.publish`; the peer must negotiate VP8 (aiortc
    offers VP8 first). Keyframe requests (PLI) are not honoured: the clip has a
    keyframe every ``keyframe_interval`` frames instead.
    """

    kind = "video"

    def __init__(self, clip: EncodedClip | None = None) -> None:
        """``clip`` defaults to :func:`encode_vp8_clip` (640x480, 30 fps, 1 Mbit/s)."""
        super().__init__(clip or encode_vp8_clip())


class PreEncodedAudioTrack(_ClipTrack):
    """An audio track that loops pre-encoded 20 ms Opus packets (48 kHz, stereo)."""

    kind = "audio"

    def __init__(self, clip: EncodedClip | None = None) -> None:
        """``clip`` defaults to :func:`encode_opus_clip` (2 s, 64 kbit/s, 440 Hz)."""
        super().__init__(clip or encode_opus_clip())
