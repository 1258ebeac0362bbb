"""Simulcast publishing for bots: three RID layers of pre-encoded VP8 sent as raw RTP.

aiortc sends one encoding per sender, so a simulcast bot offers one ``sendonly`` video
m-line with ``a=rid``/``a=simulcast`` lines and the RID header extension added to
aiortc's offer text (RFC 8851, RFC 8853, RFC 8852), and sends the layers itself:
RTP packets (RFC 3550 §5.1) with the VP8 payload descriptor (RFC 7741 §4.2), the MID
and RID header extensions (RFC 8285 one-byte form), one SSRC and sequence space per
layer, through :func:`sfu.rtc.adapter.client_send_path`. The layers are encoded once
(:func:`loadtest.media.encode_vp8_clip`) at full, half and quarter resolution and
looped; every loop starts on a keyframe, which is also when a subscriber can switch
to a layer (the clips cannot answer a PLI).
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
import time
from dataclasses import dataclass

from sfu.core.rtcp import SenderReport, build_sr
from sfu.core.rtp import URI_MID, URI_RID, build_extensions
from sfu.downtrack import ntp_now
from sfu.rtc.adapter import RtpSendPath

from .latency import FrameSendLog
from .media import EncodedClip, encode_vp8_clip

__all__ = ["RIDS", "SimulcastClips", "simulcast_clips", "add_simulcast_to_offer", "vp8_payloads", "SimulcastSender"]

RIDS = ("q", "h", "f")
MAX_PAYLOAD = 1100  # bytes of VP8 data per packet
_LAYER_SHARE = (0.15, 0.35, 1.0)  # bit rate of each layer against the top one


@dataclass(frozen=True, slots=True)
class SimulcastClips:
    """The layers' clips, lowest first, and one clip of all their frames (layer 0's
    frames, then layer 1's, ...) whose :class:`FrameSendLog` matches any layer."""

    layers: tuple[EncodedClip, ...]
    combined: EncodedClip

    def offset(self, layer: int) -> int:
        """Index of ``layer``'s first frame in :attr:`combined`."""
        return sum(len(clip.packets) for clip in self.layers[:layer])


def simulcast_clips(width: int, height: int, fps: int, bitrate: int) -> SimulcastClips:
    """Encode the three layers: ``width x height`` at ``bitrate`` bit/s, then half and
    quarter size at 35 % and 15 % of it (sizes rounded down to even pixels)."""
    layers = []
    for scale, share in zip((4, 2, 1), _LAYER_SHARE):
        w, h = max(16, width // scale // 2 * 2), max(16, height // scale // 2 * 2)
        layers.append(encode_vp8_clip(w, h, fps, bitrate=int(bitrate * share)))
    combined = EncodedClip(
        packets=tuple(p for clip in layers for p in clip.packets),
        pts=tuple(range(sum(len(c.packets) for c in layers))),
        time_base=layers[0].time_base,
        duration=sum(c.duration for c in layers),
        keyframes=tuple(k for clip in layers for k in clip.keyframes),
    )
    return SimulcastClips(tuple(layers), combined)


def _extension_ids(section: str) -> dict[str, int]:
    return {uri: int(i) for i, uri in re.findall(r"a=extmap:(\d+)(?:/\S+)? (\S+)", section)}


def add_simulcast_to_offer(sdp: str, mid: str, rids: tuple[str, ...] = RIDS) -> tuple[str, int, int, int]:
    """Make the video m-line ``mid`` of an aiortc offer a simulcast one.

    Returns:
        (the new SDP, the MID extension id, the RID extension id, the VP8 payload type).

    Raises:
        ValueError: no such video m-line, or it has no MID extension or no VP8.
    """
    parts = re.split(r"(?=\r\nm=)", sdp)
    for i, section in enumerate(parts):
        if not section.startswith("\r\nm=video") or f"\r\na=mid:{mid}\r\n" not in section + "\r\n":
            continue
        ids = _extension_ids(section)
        if URI_MID not in ids:
            raise ValueError(f"m-line {mid} offers no MID extension")
        vp8 = re.search(r"a=rtpmap:(\d+) VP8/90000", section)
        if vp8 is None:
            raise ValueError(f"m-line {mid} offers no VP8")
        rid_id = next(n for n in range(1, 15) if n not in ids.values())
        # aiortc's own SSRC lines would describe a stream nobody sends.
        lines = [line for line in section.split("\r\n") if not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
        lines.append(f"a=extmap:{rid_id} {URI_RID}")
        lines += [f"a=rid:{rid} send" for rid in rids]
        lines.append("a=simulcast:send " + ";".join(rids))
        parts[i] = "\r\n".join(lines)
        return "".join(parts), ids[URI_MID], rid_id, int(vp8.group(1))
    raise ValueError(f"no video m-line {mid} in the offer")


def vp8_payloads(frame: bytes, picture_id: int, max_size: int = MAX_PAYLOAD) -> list[bytes]:
    """Packetize one VP8 frame (RFC 7741 §4): a descriptor with a 15-bit PictureID on
    every packet, S=1 on the first, partition index 0."""
    chunks = [frame[i : i + max_size] for i in range(0, len(frame), max_size)] or [b""]
    pid = struct.pack("!H", 0x8000 | (picture_id & 0x7FFF))
    return [bytes((0x90 if n == 0 else 0x80, 0x80)) + pid + chunk for n, chunk in enumerate(chunks)]


class SimulcastSender:
    """Sends the layers of ``clips`` on one m-line until cancelled.

    Args:
        clips: the encoded layers.
        path: the raw send path of the bot's PeerConnection.
        mid: the m-line's mid; ``mid_ext_id``/``rid_ext_id``: header extension ids.
        payload_type: VP8's payload type.
        log: records each frame's send time for latency matching (``clips.combined``).

    Attributes:
        packets_sent, bytes_sent, frames_sent: totals over all layers (``bytes_sent``
            whole RTP packets, ``payload_bytes_sent`` the encoded frames only).
        started_at: when the first frame went out (monotonic s), None before.
    """

    def __init__(
        self,
        clips: SimulcastClips,
        path: RtpSendPath,
        mid: str,
        mid_ext_id: int,
        rid_ext_id: int,
        payload_type: int,
        log: FrameSendLog | None = None,
        rids: tuple[str, ...] = RIDS,
    ) -> None:
        self.clips = clips
        self.path = path
        self.payload_type = payload_type
        self.log = log
        self.ssrcs = [random.randrange(1, 2**32) for _ in clips.layers]
        self._seq = [random.randrange(0x10000) for _ in clips.layers]
        self._ts0 = [random.randrange(2**32) for _ in clips.layers]
        self._pid = [random.randrange(0x8000) for _ in clips.layers]
        self._ext = [build_extensions([(mid_ext_id, mid.encode()), (rid_ext_id, rid.encode())]) for rid in rids]
        self._offsets = [clips.offset(k) for k in range(len(clips.layers))]
        self._layer_packets = [0] * len(clips.layers)
        self._layer_octets = [0] * len(clips.layers)
        self._last_ts = list(self._ts0)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.payload_bytes_sent = 0
        self.frames_sent = 0
        self.started_at: float | None = None

    def _send_frame(self, layer: int, frame_number: int) -> None:
        clip = self.clips.layers[layer]
        index = frame_number % len(clip.packets)
        ticks = frame_number * 90000 * clip.time_base.numerator // clip.time_base.denominator
        timestamp = (self._ts0[layer] + ticks) & 0xFFFFFFFF
        payloads = vp8_payloads(clip.packets[index], self._pid[layer] + frame_number)
        ext = self._ext[layer]
        for n, payload in enumerate(payloads):
            marker = 0x80 if n == len(payloads) - 1 else 0
            seq = self._seq[layer]
            self._seq[layer] = (seq + 1) & 0xFFFF
            header = struct.pack("!BBHII", 0x90, marker | self.payload_type, seq, timestamp, self.ssrcs[layer])
            data = header + ext + payload
            if self.path.send_rtp(data):
                self.packets_sent += 1
                self.bytes_sent += len(data)
                self._layer_packets[layer] += 1
                self._layer_octets[layer] += len(payload)
        self._last_ts[layer] = timestamp
        if self.log is not None:
            self.log.record(self._offsets[layer] + index, time.monotonic())
        self.frames_sent += 1
        self.payload_bytes_sent += len(clip.packets[index])

    def send_reports(self) -> None:
        """One SR per layer (RFC 3550 §6.4.1): the server's receiver reports, its RTT
        and its SRs to subscribers (whose RTT drives probing) build on them."""
        ntp = ntp_now()
        packet = b"".join(
            build_sr(SenderReport(ssrc, ntp, self._last_ts[k], self._layer_packets[k], self._layer_octets[k]))
            for k, ssrc in enumerate(self.ssrcs)
        )
        self.path.send_rtcp(packet)

    async def run(self) -> None:
        """Send one frame per layer every frame interval (on a schedule that does not
        drift) and sender reports every second, until cancelled."""
        interval = float(self.clips.layers[0].time_base)
        per_second = max(1, round(1 / interval))
        start = self.started_at = time.monotonic()
        frame = 0
        while True:
            for layer in range(len(self.clips.layers)):
                self._send_frame(layer, frame)
            if frame % per_second == 0:
                self.send_reports()
            frame += 1
            await asyncio.sleep(max(0.0, start + frame * interval - time.monotonic()))

