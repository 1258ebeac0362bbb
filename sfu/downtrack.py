"""DownTrack: one UpTrack forwarded to one subscriber.

The hot path asks the :class:`~sfu.core.forwarder.Forwarder` what to do with a packet,
writes the subscriber's header (SSRC, payload type, sequence number, timestamp and
the subscriber's own header extensions: its MID, a fresh abs-send-time, the audio
level) in front of the cached payload, and sends it. With the compiled fan-out the
forwarder's state is the DownTrack's ``Lane``, bound after its first packet
(:meth:`DownTrack._bind_lane`): ``Batch.fanout`` then applies the common decision (the
next packet of the forwarded layer) in C and only the other packets come to
:meth:`DownTrack.forward` (see :mod:`sfu.rtc.batch`). Subscriber feedback is handled
here: NACK (RFC 4585 §6.2.1) answered from the UpTrack's cache, by RTX where
negotiated (RFC 4588); PLI/FIR passed upstream; receiver reports kept for loss and RTT.

Simulcast: the DownTrack forwards one layer of its UpTrack at a time. When the
subscriber's allocation picks another layer (:meth:`DownTrack.set_target`), it asks
for that layer's keyframe, keeps forwarding the current layer until the keyframe
arrives and switches there; sequence numbers, timestamps and VP8 PictureID/TL0PICIDX
continue without a gap. Probing pads the stream with redundant RTX retransmissions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .core.extension_block import ExtensionWriter
from .core.forwarder import DropReason, Forwarder, Switch, Translation
from .core.receive_stats import rtt_from_report_ms
from .core.rtcp import ReportBlock, SenderReport, build_sr
from .core.rtp import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    URI_TRANSPORT_CC,
    write_packet,
    write_rtx_packet,
)
from .core.vp8_munger import Vp8Munger, descriptor_fields
from .metrics import COUNTERS
from .rtc import batch as _batch
from .rtc.adapter import MediaInfo, RtpSendPath
from .uptrack import UNPARSED

if TYPE_CHECKING:
    from .core.send_history import SendHistory
    from .uptrack import SourcePacket, UpTrack

__all__ = ["DownTrack", "LayerListener", "ntp_now"]

LayerListener = Callable[["DownTrack", "int | None", "int | None", str], None]
"""Called with (DownTrack, previous layer, new layer, reason) when the layer forwarded
changes; a layer is an index, None when paused (or, as previous, before the start)."""

PADDING_PACKETS = 16  # how far back redundant padding retransmissions reach
NACK_MAX_PER_PACKET = 128  # sequence numbers of one NACK handled at most
RESEND_PER_S = 400.0  # retransmissions per second per DownTrack at most (a 4 Mbit/s video's packet rate)
RESEND_BURST = 200  # ... with bursts up to this many
RESEND_SLOTS_MASK = 1023  # when each of the last 1,024 output numbers was resent
RESEND_MIN_INTERVAL_MS = 10.0  # never resend one packet sooner than this ...
RESEND_DEFAULT_RTT_MS = 100.0  # ... nor within a round trip (this until one is measured)

_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def ntp_now() -> int:
    """The current wall-clock time as a 64-bit NTP timestamp (RFC 3550 §4)."""
    t = time.time() + _NTP_EPOCH_OFFSET
    return int(t * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


class DownTrack:
    """Forwards ``uptrack`` on the subscriber's m-line ``media``.

    Args:
        uptrack: the published track.
        subscriber_id: the subscribing participant's id.
        media: the negotiated ``sendonly`` m-line (SSRCs, payload types, extension ids).
        send_rtp: sends one RTP packet to the subscriber (returns False if it could not).
        send_rtcp: sends one RTCP compound packet to the subscriber.
        connected: tells whether the subscriber's transport can send yet; nothing is
            forwarded before (so a video DownTrack never starts on a keyframe that
            cannot be delivered).
        on_layer_change: told of every change of the layer a video DownTrack forwards
            (the first one, switches, pause and resume), with the reason given to
            :meth:`set_target`.
        transport_cc: the subscriber connection's transport-wide sequence numbers
            (:class:`~sfu.core.send_history.SendHistory`), when the m-line negotiated the
            extension: every packet sent (media, RTX, padding) is stamped with the next
            one and recorded with its send time and size
            (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2). Without it the
            packets carry abs-send-time instead, for the subscriber's REMB.

    A single-encoding track starts on its only layer; a simulcast DownTrack forwards
    nothing until :meth:`set_target` picks a layer.

    Raises:
        ValueError: the m-line did not negotiate the UpTrack's codec.
    """

    def __init__(
        self,
        uptrack: UpTrack,
        subscriber_id: str,
        media: MediaInfo,
        send_rtp: Callable[[bytes], bool],
        send_rtcp: Callable[[bytes], bool],
        connected: Callable[[], bool] = lambda: True,
        on_layer_change: LayerListener | None = None,
        transport_cc: SendHistory | None = None,
    ) -> None:
        codec = next(
            (c for c in media.codecs if c.mime_type.lower() == uptrack.codec.mime_type.lower()), None
        )
        if codec is None:
            raise ValueError(f"m-line {media.mid} has no {uptrack.codec.mime_type}")
        self.uptrack = uptrack
        self.subscriber_id = subscriber_id
        self.mid = media.mid
        self.ssrc = media.ssrc
        self.payload_type = codec.payload_type
        self.rtx_payload_type = codec.rtx_payload_type
        self.rtx_ssrc = media.rtx_ssrc if codec.rtx_payload_type is not None else None
        self.kind = uptrack.kind
        # The compiled fan-out's Lane when built (sfu.rtc.batch): the forwarder's state,
        # and where Batch.fanout applies its common decision once bound (_bind_lane).
        self._lane = _batch.new_lane()
        self.forwarder = Forwarder(
            needs_keyframe=uptrack.is_video,
            initial_sequence=random.randrange(0x10000),
            initial_timestamp=random.randrange(0x100000000),
            state=self._lane,
        )
        self._state = self.forwarder.state  # the sent counters live there too
        mid_ext = (media.extensions[URI_MID], media.mid.encode()) if URI_MID in media.extensions else None
        self._ext = ExtensionWriter(
            mid_ext,
            media.extensions.get(URI_TRANSPORT_CC),
            media.extensions.get(URI_ABS_SEND_TIME),
            media.extensions.get(URI_AUDIO_LEVEL),
            uptrack.extensions.get(URI_AUDIO_LEVEL),
            transport_cc,
        )
        self._history = self._ext.history
        self.transport_cc = self._history is not None  # packets carry transport-wide sequence numbers
        self._send_rtp = send_rtp
        # The batched apply step (sfu.rtc.batch): the send path's socket route, or a route
        # that calls send_rtp (test doubles, bots' paths the batch cannot write to).
        path = getattr(send_rtp, "__self__", None)
        self._path = path if isinstance(path, RtpSendPath) and send_rtp == path.send_rtp else None
        self._callback_route = _batch.callback_route(send_rtp) if self._path is None else None
        self._connected = connected
        self._ready = False
        self._send_rtcp = send_rtcp
        self._counters = COUNTERS.kinds[uptrack.kind] if COUNTERS.per_packet else None
        self._rtx_sequence = random.randrange(0x10000)
        self.padding_bytes_sent = 0
        self.rtt_ms: float | None = None
        self.fraction_lost = 0.0
        self.closed = False
        self.clock_rate = uptrack.codec.clock_rate
        self.target_layer: int | None = None
        self.paused = False
        self.reason = "bandwidth"
        self.layer_switches = 0
        self._reported_layer: int | None = None
        self._on_layer_change = on_layer_change
        self._munger = Vp8Munger(self._state) if uptrack.codec.mime_type.lower() == "video/vp8" and uptrack.simulcast else None
        self._epoch_munging: dict[int, tuple[int, int]] = {}
        self._registered: list[int] = []
        self._left_at_ms = 0.0  # arrival of the last packet of a layer left (paused, dropped)
        self._last_layer: int | None = None  # the layer of the newest epoch
        self._first_epoch = 0  # epochs before it forwarded an UpTrack this one replaced (rebind)
        self._last_ts_offset = 0
        self._munging_pending = False
        self._padding_credit = 0.0
        self._resend_tokens = float(RESEND_BURST)
        self._resend_refill_ms = 0.0
        self._resent_at: list[tuple[int, float]] = [(-1, 0.0)] * (RESEND_SLOTS_MASK + 1)  # by out seq & mask
        self._lane_eligible = self._can_use_lane()
        if not uptrack.simulcast:
            self.set_target(0, "bandwidth", 0.0, request=False)

    @property
    def packets_sent(self) -> int:
        """RTP packets forwarded to the subscriber (retransmissions and padding not counted)."""
        return self._state.packets_sent

    @property
    def octets_sent(self) -> int:
        """Payload bytes of those packets (the SR's octet count, RFC 3550 §6.4.1)."""
        return self._state.octets_sent

    @property
    def bytes_sent(self) -> int:
        """All RTP bytes sent to the subscriber, retransmissions and padding included."""
        return self._state.bytes_sent

    def _can_use_lane(self) -> bool:
        """Whether the compiled fan-out can apply this DownTrack's common decision: it
        has a Lane and a one-byte extension block (RFC 8285 §4.2)."""
        return self._lane is not None and self._ext.lane_blocks() is not None and not self.closed

    def _munging_settled(self) -> bool:
        """No VP8 offsets left to set after a switch (the Lane applies them as they are)."""
        munger = self._munger
        return munger is None or not (self._munging_pending or munger.switch_pending)

    def _bind_lane(self, route: Any) -> None:
        """Let ``Batch.fanout`` apply the common decision from now on, sending through
        ``route`` while the ICE connection's nominated pair stays the one it was made
        for (the fan-out unbinds it otherwise, and the next packet comes back here)."""
        value_len, block, value_off, level_block, level_value_off, level_off = self._ext.lane_blocks()  # type: ignore[misc]
        path = self._path
        nominated, pair = (path._nominated, path._route_pair) if path is not None else (None, None)
        self._lane.bind(route, nominated, pair, self.ssrc, self.payload_type, value_len, block, value_off,
                        level_block, level_value_off, level_off, self._history, self._munger is not None)

    @property
    def layer(self) -> int | None:
        """The layer being forwarded (None before the first packet or while paused)."""
        return self.forwarder.layer

    def _register(self, layers: list[int]) -> None:
        """Receive exactly ``layers``' packets from the UpTrack."""
        for index in self._registered:
            if index not in layers:
                lst = self.uptrack.layers[index].downtracks
                if self in lst:
                    lst.remove(self)
        for index in layers:
            lst = self.uptrack.layers[index].downtracks
            if self not in lst:
                lst.append(self)
        self._registered = layers

    def set_target(self, layer: int | None, reason: str, now_ms: float, request: bool = True) -> None:
        """Forward ``layer`` from its next keyframe on (None: pause now).

        Until the keyframe arrives the current layer goes on; a keyframe request is
        sent to the publisher for the target layer (``request``). Pausing takes effect
        at once and is reported at once.
        """
        if self.closed:
            return
        self.reason = reason
        if layer == self.target_layer and (layer is not None or self.paused):
            return
        self.target_layer = layer
        self.forwarder.target = layer
        self.paused = layer is None
        current = self.forwarder.layer
        if layer is None:
            self._register([])
            self._leave_layer()  # resuming needs a keyframe
            self._changed(None)
            return
        if current is not None and layer < current and reason == "bandwidth":
            # The link is short: stop the current layer now so the target's keyframe
            # is not stuck behind it (the subscriber sees the switch at the keyframe).
            self._leave_layer()
            current = None
        self._register([layer] if current is None or current == layer else [current, layer])
        if request and layer != current:
            self.uptrack.request_keyframe(now_ms, layer)

    def _leave_layer(self) -> None:
        """Stop forwarding the current layer now; remember when its last packet came
        (the next layer's timestamps go on from there)."""
        layer = self.forwarder.layer
        if layer is not None:
            self._left_at_ms = self.uptrack.layers[layer].last_media_ms or 0.0
        self.forwarder.layer = None

    def _changed(self, layer: int | None) -> None:
        previous = self._reported_layer
        self._reported_layer = layer
        self.layer_switches += 1
        if self._on_layer_change is not None and self.uptrack.is_video:
            self._on_layer_change(self, previous, layer, self.reason)

    def _switch(self, source: SourcePacket) -> None:
        """Start forwarding ``source``'s layer at this packet (a keyframe)."""
        fwd = self.forwarder
        if not fwd.started:
            fwd.switch(source.layer, source.sequence, source.timestamp)
        else:
            fwd.switch(source.layer, source.sequence, source.timestamp, self._switch_timestamp(source))
        self._last_layer = source.layer
        self._last_ts_offset = fwd.timestamp_offset
        if self._munger is not None:
            self._munger.on_switch()
            self._munging_pending = True
            if self._lane is not None:
                self._lane.unbind()  # Python rewrites until the new offsets are set
        self._register([source.layer])
        self._changed(source.layer)

    def _switch_timestamp(self, source: SourcePacket) -> int:
        """The output timestamp for the first packet of a new layer (unwrapped).

        From both layers' sender reports when there are (the NTP wall clock maps the new
        layer's timestamp onto the old one's, RFC 3550 §6.4.1), checked against the
        arrival time since the last packet forwarded; from the arrival time alone
        otherwise. Always after the last output timestamp.
        """
        fwd = self.forwarder
        last_out = fwd.last_out_timestamp
        # The old layer was forwarded up to its last packet, or up to when it was left.
        last_ms = self.uptrack.layers[fwd.layer].last_media_ms if fwd.layer is not None else self._left_at_ms
        elapsed = max(1, round((source.arrival_ms - (last_ms or 0.0)) * self.clock_rate / 1000.0))
        layers = self.uptrack.layers
        old_sr = layers[self._last_layer].last_sender_report if self._last_layer is not None else None
        new_sr = layers[source.layer].last_sender_report
        if old_sr is not None and new_sr is not None:
            clock = self.clock_rate
            rtp_delta = ((source.packet.timestamp - new_sr.rtp_timestamp + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            wall = new_sr.ntp_timestamp / 2**32 + rtp_delta / clock
            old_ts = old_sr.rtp_timestamp + round((wall - old_sr.ntp_timestamp / 2**32) * clock)
            out32 = (old_ts + self._last_ts_offset) & 0xFFFFFFFF
            delta = ((out32 - last_out + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if 0 < delta and abs(delta - elapsed) < clock // 5:
                return last_out + delta
        return last_out + elapsed

    def forward(self, source: SourcePacket, now_ms: float, batch: Any = None) -> DropReason | None:
        """Forward one source packet. Returns the DropReason if dropped.

        Decide (:meth:`Forwarder.decide`), then apply: with ``batch`` (the fan-out's
        :class:`sfu.rtc.batch` Batch, between its ``begin`` and ``flush``) the header,
        SRTP protect and datagram are added to it, and the Lane is bound if it is not
        (its next common packets are applied by ``Batch.fanout`` without coming here);
        without, the packet is written (:func:`~sfu.core.rtp.write_packet`) and sent
        here. Both send the same bytes.
        """
        if not self._ready:
            if not self._connected():
                COUNTERS.dropped[DropReason.NOT_CONNECTED.value] += 1
                return DropReason.NOT_CONNECTED
            self._ready = True
        fwd = self.forwarder
        packet = source.packet
        padding_only = packet.payload_end == packet.payload_offset
        result = fwd.decide(source.layer, source.sequence, source.timestamp, source.keyframe, padding_only)
        if result.__class__ is not Translation:
            if result.__class__ is Switch:
                self._switch(source)
                result = fwd.translate(source.sequence, source.timestamp, source.keyframe, padding_only)
            if result.__class__ is not Translation:
                COUNTERS.dropped[result.value] += 1  # type: ignore[union-attr]
                if result is DropReason.WAITING_FOR_KEYFRAME:
                    self.uptrack.request_keyframe(now_ms, source.layer)
                return result  # type: ignore[return-value]
        head = None
        munger = self._munger
        if munger is not None and not padding_only:
            start = packet.payload_offset
            fields = source.vp8
            if fields is UNPARSED:  # parsed once per source packet, for every subscriber
                fields = source.vp8 = descriptor_fields(packet.data[start : start + 8])
            if fields is not None:
                head = munger.rewrite(packet.data[start : start + 8], fields)
            if self._munging_pending:
                self._munging_pending = False
                self._remember_munging(fwd.epoch)
        extensions = self._ext.block(packet.extensions, now_ms)
        if batch is not None:
            path = self._path
            if path is None:
                route = self._callback_route
            else:  # RtpSendPath.batch_route() without the call while its pair stays nominated
                route = path._batch_route
                if route is None or path._nominated.get(1) is not path._route_pair:
                    route = path.batch_route()
            size = -1 if route is None else batch.add(
                route, self.payload_type, result.sequence_number, result.timestamp, self.ssrc, extensions, head
            )
        else:
            data = write_packet(
                packet, self.ssrc, self.payload_type, result.sequence_number, result.timestamp, packet.marker,
                extensions, head,
            )
            size = len(data) if self._send_rtp(data) else -1
        if size >= 0:
            self._ext.sent(size)
            state = self._state
            state.packets_sent += 1
            state.octets_sent += packet.payload_end - packet.payload_offset
            state.bytes_sent += size
            counters = self._counters
            if counters is not None:
                counters.packets_sent += 1
                counters.bytes_sent += size
            if batch is not None and self._lane_eligible and not self._lane.active and self._munging_settled():
                self._bind_lane(route)
        else:
            COUNTERS.dropped["send_failed"] += 1
        return None

    def _remember_munging(self, epoch: int) -> None:
        """Keep the VP8 offsets of an epoch, for retransmissions from it later."""
        munger = self._munger
        if munger is None:
            return
        self._epoch_munging[epoch] = munger.offsets
        if len(self._epoch_munging) > Forwarder.EPOCHS_KEPT + 1:
            del self._epoch_munging[min(self._epoch_munging)]

    def _retransmission(
        self, out_seq: int, now_ms: float, layer: int, src: int, ts_offset: int, epoch: int, cluster: int | None = None
    ) -> bytes | None:
        source = self.uptrack.layers[layer].cache.get(src)
        if source is None:
            return None
        packet = source.packet
        timestamp = (source.timestamp + ts_offset) & 0xFFFFFFFF
        ext = self._ext.block(packet.extensions, now_ms, cluster)
        head = None
        if self._munger is not None and packet.payload_end > packet.payload_offset:
            offsets = self._epoch_munging.get(epoch)
            if offsets is not None and offsets != (0, 0):
                head = Vp8Munger.rewrite_with(packet.data[packet.payload_offset : packet.payload_offset + 8], offsets)
        if self.rtx_ssrc is not None and self.rtx_payload_type is not None:
            self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
            return write_rtx_packet(
                packet, self.rtx_ssrc, self.rtx_payload_type, self._rtx_sequence, timestamp, out_seq, ext, head
            )
        return write_packet(packet, self.ssrc, self.payload_type, out_seq, timestamp, packet.marker, ext, head)

    def on_nack(self, lost: list[int], now_ms: float, omitted: int = 0) -> int:
        """Retransmit what the subscriber NACKed (16-bit output sequence numbers).

        Video packets from before the last switch or resume are not resent (the
        keyframe that started the current epoch supersedes them), nor anything while
        the DownTrack waits for a keyframe. Work is bounded: the first
        ``NACK_MAX_PER_PACKET`` numbers of a NACK, ``RESEND_PER_S`` retransmissions a
        second (bursts of ``RESEND_BURST``), and none of a packet already resent within
        a round trip; the rest are counted (``sfu_rtcp_nack_refused_total``).

        Args:
            lost: the NACKed sequence numbers, in the NACK's order.
            now_ms: arrival time, ms.
            omitted: how many more the NACK named (:attr:`sfu.core.rtcp.Nack.omitted`):
                refused and counted.

        Returns:
            how many packets were retransmitted (the rest were refused or no longer cached).
        """
        sent = 0
        fwd = self.forwarder
        if fwd.layer is None and fwd.needs_keyframe:
            return 0  # paused or waiting for a keyframe: it supersedes what was lost
        # Bounded work (a hostile NACK may name every sequence number, or the same one
        # again and again): at most NACK_MAX_PER_PACKET per NACK, a budget of
        # retransmissions per second, and no packet again within a round trip.
        elapsed = now_ms - self._resend_refill_ms
        self._resend_refill_ms = now_ms
        self._resend_tokens = min(RESEND_BURST, self._resend_tokens + elapsed * RESEND_PER_S / 1000.0)
        guard = max(self.rtt_ms or RESEND_DEFAULT_RTT_MS, RESEND_MIN_INTERVAL_MS)
        resent = self._resent_at
        refused = 0
        for out_seq in lost[:NACK_MAX_PER_PACKET]:
            slot = out_seq & RESEND_SLOTS_MASK
            previous = resent[slot]
            if previous[0] == out_seq and now_ms - previous[1] < guard:
                refused += 1
                continue  # resent within a round trip: that copy is still on its way
            if self._resend_tokens < 1.0:
                refused += 1
                continue
            ref = fwd.source_sequence(out_seq)
            if ref is None or (fwd.needs_keyframe and ref.epoch != fwd.epoch) or ref.epoch < self._first_epoch:
                continue  # video from before a switch (the new layer's keyframe supersedes it), or another source's
            data = self._retransmission(out_seq, now_ms, ref.layer, ref.sequence, ref.timestamp_offset, ref.epoch)
            if data is not None and self._send_rtp(data):
                self._ext.sent(len(data))
                self._state.bytes_sent += len(data)
                self._resend_tokens -= 1.0
                resent[slot] = (out_seq, now_ms)
                sent += 1
        refused += max(0, len(lost) - NACK_MAX_PER_PACKET) + omitted
        if refused:
            COUNTERS.nack_refused += refused
        COUNTERS.retransmissions_sent += sent
        return sent

    def send_padding(self, budget_bytes: float, now_ms: float, cluster: int | None = None) -> int:
        """Send about ``budget_bytes`` of padding (bandwidth probing): redundant RTX
        retransmissions of the newest packets sent (RFC 4588 §4; the subscriber drops
        them as duplicates, its bandwidth estimator counts them), stamped as probe
        ``cluster`` in the transport-wide send history. Unused budget carries over to
        the next call while under one packet.

        Returns:
            bytes sent. Nothing without RTX, before the first packet, or while paused.
        """
        if self.rtx_ssrc is None or self.forwarder.layer is None or self.closed:
            self._padding_credit = 0.0
            return 0
        self._padding_credit = min(self._padding_credit + budget_bytes, 20_000.0)
        fwd = self.forwarder
        sent = 0
        for src, out_seq in fwd.recent(PADDING_PACKETS):
            if self._padding_credit <= 0:
                break
            ref = fwd.source_sequence(out_seq)
            if ref is None:
                continue
            data = self._retransmission(out_seq, now_ms, ref.layer, src, ref.timestamp_offset, ref.epoch, cluster)
            if data is None:
                continue
            if self._send_rtp(data):
                self._ext.sent(len(data))
                sent += len(data)
                self._padding_credit -= len(data)
        self._state.bytes_sent += sent
        self.padding_bytes_sent += sent
        COUNTERS.padding_bytes_sent += sent
        return sent

    def stats_snapshot(self) -> dict[str, object]:
        """Per-DownTrack statistics for the admin endpoint (JSON-ready)."""
        return {
            "mid": self.mid,
            "trackId": self.uptrack.id,
            "publisherId": self.uptrack.publisher_id,
            "kind": self.kind,
            "ssrc": self.ssrc,
            "started": self.forwarder.started,
            "layer": self.forwarder.layer,
            "targetLayer": self.target_layer,
            "rid": self.rid,
            "reason": self.reason,
            "layerSwitches": self.layer_switches,
            "packetsSent": self.packets_sent,
            "octetsSent": self.octets_sent,
            "rttMs": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "fractionLost": self.fraction_lost,
        }

    @property
    def layer_label(self) -> str:
        """``0``/``1``/``2`` (simulcast layer), ``single``, ``paused`` or ``starting``."""
        if self.paused:
            return "paused"
        layer = self.forwarder.layer
        if layer is None:
            return "starting"
        return str(layer) if self.uptrack.simulcast else "single"

    @property
    def rid(self) -> str | None:
        """The RID of the layer forwarded (None for a single encoding or paused)."""
        layer = self.forwarder.layer
        return self.uptrack.layers[layer].rid if layer is not None else None

    def on_source_restart(self, layer: int) -> None:
        """The publisher restarted the numbering of ``layer``: if it is the one
        forwarded, stop and start it again as a new epoch at its next keyframe (the
        subscriber's numbering goes on without a jump)."""
        if self.forwarder.layer == layer and not self.closed:
            self._leave_layer()
            self.uptrack.request_keyframe(self._left_at_ms, layer)

    def rebind(self, uptrack: UpTrack, now_ms: float) -> None:
        """Forward ``uptrack`` from now on instead of the current UpTrack: its publisher
        reconnected and publishes the same track again on a new PeerConnection (same
        track id, new SSRCs and numbering). The subscriber sees one continuous stream:
        the new source starts a new epoch (at its first keyframe for video, which is
        requested at once) whose sequence numbers follow the last ones sent and whose
        timestamps advance by the time the track was away (RFC 3550 §5.1). Packets of
        the old source are never retransmitted from the new one's cache.

        Args:
            uptrack: the replacing UpTrack (same kind and codec).
            now_ms: now, monotonic ms (for the keyframe request).

        Raises:
            ValueError: ``uptrack`` has another kind or codec (the subscriber's m-line
                negotiated this one's).
        """
        old = self.uptrack
        if uptrack.kind != old.kind or uptrack.codec.mime_type.lower() != old.codec.mime_type.lower():
            raise ValueError(f"cannot forward {uptrack.codec.mime_type} in place of {old.codec.mime_type}")
        if self.closed:
            return
        self._leave_layer()  # _left_at_ms: the old source's last packet
        self._register([])
        if self in old.downtracks:
            old.downtracks.remove(self)
        self.uptrack = uptrack
        uptrack.downtracks.append(self)
        self._last_layer = None  # no sender report maps the new source onto the old one
        self._first_epoch = self.forwarder.epoch + 1
        self._ext.set_source_level(uptrack.extensions.get(URI_AUDIO_LEVEL))
        if self._munger is None and uptrack.simulcast and uptrack.codec.mime_type.lower() == "video/vp8":
            self._munger = Vp8Munger(self._state)
        if self._munger is not None:
            self._munging_pending = True
        if self._lane is not None:
            self._lane.unbind()  # the templates may have changed: bound again at the next packet
        self._lane_eligible = self._can_use_lane()
        target = self.target_layer
        if target is None and not uptrack.simulcast:
            target = 0
        self.target_layer = None
        if target is not None and not self.paused:
            self.set_target(min(target, len(uptrack.layers) - 1), self.reason, now_ms)

    def on_keyframe_request(self, now_ms: float) -> None:
        """The subscriber sent PLI or FIR: ask the publisher for a keyframe of the layer
        forwarded (coalesced upstream)."""
        layer = self.forwarder.layer
        self.uptrack.request_keyframe(now_ms, layer if layer is not None else (self.target_layer or 0))

    def on_report_block(self, block: ReportBlock) -> float | None:
        """A reception report from the subscriber about this DownTrack: loss and RTT.

        Returns:
            the RTT it gives (ms), or None when it echoes no SR of ours.
        """
        self.fraction_lost = block.fraction_lost / 256.0
        rtt = rtt_from_report_ms(block, ntp_now())
        if rtt is not None:
            self.rtt_ms = rtt
        return rtt

    def on_source_sender_report(self, report: SenderReport, layer: int = 0) -> None:
        """Send the subscriber an SR derived from the publisher's (RFC 3550 §6.4.1).

        The NTP time is the publisher's and the RTP timestamp is shifted by this
        DownTrack's timestamp offset, so the subscriber keeps the publisher's
        audio/video synchronization.
        """
        if self.forwarder.layer != layer or self.closed:
            return
        sr = SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=report.ntp_timestamp,
            rtp_timestamp=(report.rtp_timestamp + self.forwarder.timestamp_offset) & 0xFFFFFFFF,
            packet_count=self.packets_sent,
            octet_count=self.octets_sent,
        )
        self._send_rtcp(build_sr(sr))

    def close(self) -> None:
        """Stop forwarding (unsubscribed, unpublished, or a participant left)."""
        self.closed = True
        self._lane_eligible = False
        if self._lane is not None:
            self._lane.unbind()
        self._register([])
        if self in self.uptrack.downtracks:
            self.uptrack.downtracks.remove(self)
