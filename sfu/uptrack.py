"""UpTrack: one track a participant publishes, as the server receives it.

A track arrives as one RTP stream, or as up to three simulcast layers (RFC 8853),
each its own stream: a :class:`Layer` with its SSRC, RID, packet cache, NACK
generator, reception statistics, keyframe requests and measured bitrate. Per arriving
packet (RFC 3550 §5.1): unwrap sequence number and timestamp, store the packet once in
the layer's cache, feed NACK generation and statistics, detect keyframes, and hand the
packet to the DownTracks on that layer. RTX packets from the publisher (RFC 4588) are
restored to their original sequence number first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from .core.codecs import is_keyframe, rtx_original_sequence, vp8_keyframe_size
from .core.extension_block import abs_send_time_at
from .core.keyframe import KeyframeRequester
from .core.nack import NackGenerator
from .core.packet_cache import PacketCache
from .core.receive_stats import ReceiveStats
from .core.rtcp import ReportBlock, SenderReport
from .core.rtp import URI_AUDIO_LEVEL, RtpPacket
from .core.seqnum import SequenceValidator, Unwrapper
from .metrics import COUNTERS, LATENCY_SAMPLE_EVERY
from .rtc import batch as _batch
from .rtc.adapter import CodecInfo

if TYPE_CHECKING:
    from .downtrack import DownTrack

__all__ = ["SourcePacket", "Layer", "UpTrack"]

VIDEO_CACHE_PACKETS = 512
AUDIO_CACHE_PACKETS = 64
LAYER_TIMEOUT_MS = 500.0  # a simulcast layer with no media for this long is "lost"
RATE_INTERVAL_MS = 500.0
DEFAULT_LAYER_BITRATES = (150_000, 500_000, 1_500_000)  # bit/s, before a layer is measured


UNPARSED = object()  # SourcePacket.vp8 before the first DownTrack that rewrites it asked


class SourcePacket:
    """A cached source packet: the parsed packet plus its unwrapped sequence number and
    timestamp, keyframe flag, arrival time (ms, monotonic) and layer index.

    ``vp8`` holds the VP8 payload descriptor's fields once a DownTrack parsed them
    (:func:`sfu.core.vp8_munger.descriptor_fields`), for every other subscriber."""

    __slots__ = ("packet", "sequence", "timestamp", "keyframe", "arrival_ms", "layer", "vp8")

    def __init__(
        self, packet: RtpPacket, sequence: int, timestamp: int, keyframe: bool, arrival_ms: float, layer: int = 0
    ) -> None:
        self.packet = packet
        self.sequence = sequence
        self.timestamp = timestamp
        self.keyframe = keyframe
        self.arrival_ms = arrival_ms
        self.layer = layer
        self.vp8: object = UNPARSED


class Layer:
    """One RTP stream of an UpTrack: a simulcast layer, or the only encoding.

    Attributes:
        index: 0 for the lowest layer.
        rid: the RTP stream id (RFC 8852), None for a single-encoding track.
        ssrc, rtx_ssrc: bound from the SDP or the first packets.
        downtracks: the DownTracks that receive this layer's packets now (forwarding
            it, or waiting for its keyframe to switch to it).
        bitrate: measured media bit/s (None before the first measurement).
        width, height: from the last VP8 keyframe (None if unknown).
        last_media_ms: arrival of the last packet with a payload (None: none yet).
    """

    def __init__(self, index: int, rid: str | None, clock_rate: int, video: bool) -> None:
        self.index = index
        self.rid = rid
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.cache: PacketCache[SourcePacket] = PacketCache(VIDEO_CACHE_PACKETS if video else AUDIO_CACHE_PACKETS)
        self.nack = NackGenerator() if video else None
        self.keyframes = KeyframeRequester()
        self.stats: ReceiveStats | None = None
        self.downtracks: list[DownTrack] = []
        self.last_sender_report: SenderReport | None = None
        self.keyframes_received = 0
        self.bytes_received = 0
        self.bitrate: int | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.last_media_ms: float | None = None
        self.seq = SequenceValidator(self._restarted)
        self.ts = Unwrapper(32)
        self.restarts = 0  # accepted restarts of the source numbering (RFC 3550 §A.1)
        self._rate_bytes = 0
        self._rate_ms: float | None = None

    def bind_ssrc(self, ssrc: int) -> None:
        """Bind the media SSRC (from SDP, or from the first packet's MID/RID)."""
        if self.ssrc != ssrc:
            self.ssrc = ssrc
            self.stats = ReceiveStats(ssrc, self.clock_rate)
            self.seq = SequenceValidator(self._restarted)
            self.ts = Unwrapper(32)

    def _restarted(self) -> None:
        """The publisher restarted this stream's numbering (two packets in sequence
        after a jump, RFC 3550 §A.1): reception statistics, NACK state and timestamps
        start over, and every DownTrack on this layer starts again at its next keyframe."""
        self.restarts += 1
        if self.ssrc is not None:
            self.stats = ReceiveStats(self.ssrc, self.clock_rate)
        if self.nack is not None:
            self.nack = NackGenerator()
        self.ts = Unwrapper(32)
        for downtrack in list(self.downtracks):
            downtrack.on_source_restart(self.index)

    def update_rate(self, now_ms: float) -> None:
        """Measure the bitrate over the time since the last call (every ~500 ms)."""
        if self._rate_ms is None:
            self._rate_ms, self._rate_bytes = now_ms, self.bytes_received
            return
        elapsed = now_ms - self._rate_ms
        if elapsed < RATE_INTERVAL_MS:
            return
        rate = (self.bytes_received - self._rate_bytes) * 8000.0 / elapsed
        self.bitrate = int(rate if self.bitrate is None else 0.5 * self.bitrate + 0.5 * rate)
        self._rate_ms, self._rate_bytes = now_ms, self.bytes_received

    def describe(self) -> dict[str, object]:
        """JSON-ready state for the admin endpoint."""
        stats = self.stats
        return {
            "rid": self.rid,
            "ssrc": self.ssrc,
            "rtxSsrc": self.rtx_ssrc,
            "bitrate": self.bitrate,
            "width": self.width,
            "height": self.height,
            "packetsReceived": stats.received if stats else 0,
            "packetsLost": stats.lost if stats else 0,
            "keyframesReceived": self.keyframes_received,
            "keyframeRequestsSent": self.keyframes.sent,
            "subscribers": len(self.downtracks),
        }


class UpTrack:
    """A published audio or video track.

    Args:
        track_id: the room-wide track id (``TR_...``).
        publisher_id: the publishing participant's id.
        kind: ``audio`` or ``video``.
        source: ``camera``, ``microphone``, ``screen``, ...
        mid: the publisher's m-line carrying it.
        codec: the negotiated codec (payload type, clock rate, RTX payload type).
        extensions: the publisher's header extension ids by URI.
        send_pli: called with the media SSRC when a PLI must go to the publisher.
        rids: the simulcast layers' RIDs, lowest first; None for one encoding.
    """

    def __init__(
        self,
        track_id: str,
        publisher_id: str,
        kind: str,
        source: str,
        mid: str,
        codec: CodecInfo,
        extensions: dict[str, int],
        send_pli: Callable[[int], None],
        rids: list[str] | None = None,
    ) -> None:
        self.id = track_id
        self.publisher_id = publisher_id
        self.kind = kind
        self.source = source
        self.mid = mid
        self.codec = codec
        self.extensions = extensions
        self.muted = False
        self.server_muted = False  # muted by the server API: nothing of it is forwarded
        self.is_video = kind == "video"
        self.simulcast = bool(rids)
        self.layers = [Layer(i, rid, codec.clock_rate, self.is_video) for i, rid in enumerate(rids or [None])]
        self.layers_by_rid = {layer.rid: layer for layer in self.layers if layer.rid is not None}
        self.downtracks: list[DownTrack] = []
        self._mime = codec.mime_type
        self._vp8 = codec.mime_type.lower() == "video/vp8"
        self._counters = COUNTERS.kinds[kind] if COUNTERS.per_packet else None
        self._send_pli = send_pli
        self._level_id = extensions.get(URI_AUDIO_LEVEL) if kind == "audio" else None
        self._ext_level_id = extensions.get(URI_AUDIO_LEVEL)  # what DownTracks map, of either kind
        self._level_min = 128  # loudest level since take_audio_level (128: none)

    # Single-encoding conveniences (layer 0).
    @property
    def ssrc(self) -> int | None:
        """The media SSRC of layer 0."""
        return self.layers[0].ssrc

    @property
    def cache(self) -> PacketCache[SourcePacket]:
        """Layer 0's packet cache."""
        return self.layers[0].cache

    def bind_ssrc(self, ssrc: int, layer: Layer | None = None) -> None:
        """Bind a layer's media SSRC (layer 0 by default)."""
        (layer or self.layers[0]).bind_ssrc(ssrc)

    def describe(self) -> dict[str, object]:
        """The protocol's track object: ``{"id", "kind", "source", "muted"[, "layers"]}``."""
        out: dict[str, object] = {"id": self.id, "kind": self.kind, "source": self.source, "muted": self.muted}
        if self.simulcast:
            out["layers"] = [layer.rid for layer in self.layers]
        return out

    def stats_snapshot(self) -> dict[str, object]:
        """Per-track statistics for the admin endpoint (JSON-ready)."""
        first = self.layers[0]
        stats = first.stats
        return {
            **self.describe(),
            "publisherId": self.publisher_id,
            "mid": self.mid,
            "codec": self.codec.mime_type,
            "ssrc": first.ssrc,
            "rtxSsrc": first.rtx_ssrc,
            "packetsReceived": sum(layer.stats.received for layer in self.layers if layer.stats),
            "packetsLost": sum(layer.stats.lost for layer in self.layers if layer.stats),
            "jitter": round(stats.jitter / self.codec.clock_rate, 6) if stats else 0.0,
            "keyframesReceived": sum(layer.keyframes_received for layer in self.layers),
            "keyframeRequestsSent": sum(layer.keyframes.sent for layer in self.layers),
            "subscribers": len(self.downtracks),
            "layers": [layer.describe() for layer in self.layers],
        }

    def on_rtp(self, packet: RtpPacket, now_ms: float, layer: Layer | None = None) -> None:
        """Handle one media packet of ``layer`` (layer 0 by default; hot path)."""
        if layer is None:
            layer = self.layers[0]
        if self.server_muted:  # before the cache: a NACK cannot bring a muted packet back
            COUNTERS.dropped["server_muted"] += 1
            return
        seq = layer.seq.accept(packet.sequence_number)
        if seq is None:
            COUNTERS.dropped["sequence_jump"] += 1  # on probation (RFC 3550 §A.1)
            return
        cache = layer.cache
        if seq in cache:
            COUNTERS.dropped["duplicate"] += 1
            return
        counters = self._counters
        if counters is not None:
            counters.packets_received += 1
            counters.bytes_received += len(packet.data)
        if layer.nack is not None:
            layer.nack.on_packet(seq, now_ms)
        stats = layer.stats
        if stats is not None:
            stats.on_packet(seq, packet.timestamp, now_ms)
        keyframe = False
        if self._level_id is not None:
            level = packet.extensions.get(self._level_id)
            if level:
                value = level[0] & 0x7F
                if value < self._level_min:
                    self._level_min = value
        if packet.payload_end > packet.payload_offset:
            layer.bytes_received += len(packet.data)
            layer.last_media_ms = now_ms
            if self.is_video:
                head = packet.data[packet.payload_offset : packet.payload_offset + 64]
                keyframe = is_keyframe(self._mime, head)
                if keyframe:
                    layer.keyframes.on_keyframe(now_ms)
                    layer.keyframes_received += 1
                    if self._vp8:
                        size = vp8_keyframe_size(head)
                        if size is not None:
                            layer.width, layer.height = size
        source = SourcePacket(packet, seq, layer.ts.unwrap(packet.timestamp), keyframe, now_ms, layer.index)
        cache.put(seq, source)
        batch = _batch.BATCH
        if batch is None:  # the pure-Python path: each DownTrack writes, protects and sends
            for downtrack in layer.downtracks:
                downtrack.forward(source, now_ms)
        elif layer.downtracks:
            # Batched: the compiled fan-out applies the common decision of every bound
            # DownTrack (the next packet of the layer it forwards); the others decide here
            # and add to the batch; the queue leaves at the end of the event-loop turn.
            batch.begin(packet.data, packet.payload_offset, packet.body_end, packet.marker, packet.padding)
            try:
                payload_len = packet.payload_end - packet.payload_offset
                level = packet.extensions.get(self._ext_level_id) if self._ext_level_id is not None else None
                packets, size, failed, rest = batch.fanout(
                    layer.downtracks, layer.index, seq, source.timestamp, payload_len == 0, payload_len,
                    abs_send_time_at(now_ms), level, now_ms,
                )
                if counters is not None and packets:
                    counters.packets_sent += packets
                    counters.bytes_sent += size
                if failed:
                    COUNTERS.dropped["send_failed"] += failed
                if rest is not None:
                    for downtrack in rest:
                        downtrack.forward(source, now_ms, batch)
            finally:
                _batch.finish(batch)  # sent at the end of the event-loop turn
        if seq % LATENCY_SAMPLE_EVERY == 0 and counters is not None and layer.downtracks:
            COUNTERS.forwarding_latency.observe(max(0.0, time.monotonic() - now_ms / 1000.0))

    def on_rtx(self, packet: RtpPacket, now_ms: float, layer: Layer | None = None) -> None:
        """Handle an RTX packet from the publisher (RFC 4588 §4): restore and forward it.

        Padding-only RTX packets (bandwidth probes) are dropped and counted.
        """
        if layer is None:
            layer = self.layers[0]
        if packet.payload_end - packet.payload_offset < 2:
            COUNTERS.dropped["padding"] += 1
            return
        osn = rtx_original_sequence(packet.data[packet.payload_offset : packet.payload_offset + 2])
        restored = RtpPacket(
            packet.data,
            self.codec.payload_type,
            packet.marker,
            osn,
            packet.timestamp,
            layer.ssrc or 0,
            packet.csrc,
            packet.extensions,
            packet.payload_offset + 2,
            packet.payload_end,
            False,
        )
        self.on_rtp(restored, now_ms, layer)

    def on_sender_report(self, report: SenderReport, now_ms: float, layer: Layer | None = None) -> None:
        """The publisher's SR for ``layer``: kept for RR (LSR/DLSR) and translated to the
        DownTracks forwarding that layer."""
        if layer is None:
            layer = self.layers[0]
        layer.last_sender_report = report
        if layer.stats is not None:
            layer.stats.on_sender_report(report.ntp_timestamp, now_ms)
        for downtrack in layer.downtracks:
            downtrack.on_source_sender_report(report, layer.index)

    def set_server_muted(self, muted: bool, now_ms: float) -> None:
        """Mute or unmute this track for everyone (the server API): while muted no
        packet of it is forwarded or cached; unmuting a video asks for keyframes."""
        self.server_muted = muted
        self.muted = muted
        if not muted and self.is_video:
            for layer in self.layers:
                self.request_keyframe(now_ms, layer.index)

    def request_keyframe(self, now_ms: float, layer: int = 0) -> None:
        """Ask the publisher for a keyframe of ``layer``: coalesced and throttled."""
        target = self.layers[layer]
        if self.is_video and target.ssrc is not None and target.keyframes.request(now_ms):
            self._send_pli(target.ssrc)

    def take_audio_level(self) -> float | None:
        """The loudest RFC 6464 audio level (0 loudest .. 127 silence) of the packets
        since the last call, or None when none carried one (speech comes in bursts: a
        mean of dBov values would drown it in the pauses between words)."""
        if self._level_min > 127:
            return None
        loudest, self._level_min = self._level_min, 128
        return float(loudest)

    def layer_bitrates(self, now_ms: float) -> list[int | None]:
        """What each layer needs (bit/s), lowest first, None for a simulcast layer the
        publisher is not sending (no media for ``LAYER_TIMEOUT_MS``). A single-encoding
        track always has its one layer."""
        out: list[int | None] = []
        for layer in self.layers:
            if self.simulcast and (layer.last_media_ms is None or now_ms - layer.last_media_ms > LAYER_TIMEOUT_MS):
                out.append(None)
            elif layer.bitrate is not None:
                out.append(layer.bitrate)
            else:
                out.append(DEFAULT_LAYER_BITRATES[min(layer.index, len(DEFAULT_LAYER_BITRATES) - 1)])
        return out

    def poll(self, now_ms: float, rtt_ms: float) -> list[tuple[int, list[int]]]:
        """Periodic work: retry keyframe requests, measure bitrates; returns
        ``[(media SSRC, 16-bit sequence numbers to NACK)]``."""
        out: list[tuple[int, list[int]]] = []
        for layer in self.layers:
            layer.update_rate(now_ms)
            if layer.ssrc is None:
                continue
            if self.is_video and layer.keyframes.poll(now_ms):
                self._send_pli(layer.ssrc)
            if layer.nack is not None:
                lost = [s & 0xFFFF for s in layer.nack.poll(now_ms, rtt_ms)]
                if lost:
                    out.append((layer.ssrc, lost))
        return out

    def report_blocks(self, now_ms: float) -> list[ReportBlock]:
        """Reception report blocks for every layer's media SSRC (RFC 3550 §6.4.1)."""
        blocks = []
        for layer in self.layers:
            if layer.stats is not None:
                block = layer.stats.report_block(now_ms)
                if block is not None:
                    blocks.append(block)
        return blocks

    def media_ssrcs(self) -> list[int]:
        """The bound media SSRCs of all layers."""
        return [layer.ssrc for layer in self.layers if layer.ssrc is not None]

    def close(self) -> None:
        """Detach every DownTrack (the track is unpublished)."""
        for downtrack in list(self.downtracks):
            downtrack.close()
        self.downtracks.clear()
        for layer in self.layers:
            layer.downtracks.clear()
