"""Participant: one member of a room and its single PeerConnection to the server.

The participant owns what it publishes (UpTracks) and what it receives (DownTracks),
routes its incoming RTP by SSRC, or by the MID header extension for SSRCs the SDP did
not declare (RFC 8843 §9.2) and the RID/repaired-RID extensions for simulcast layers
(RFC 8852), remembering the binding since Chrome stops sending them. It handles its
RTCP and sends its publisher-side RTCP: receiver reports per layer SSRC and REMB every
second (Chrome stays at its lowest rate without them), NACKs and PLIs as they come due.

As a subscriber it estimates its downlink (:class:`~sfu.core.bandwidth.BandwidthEstimator`
from its REMB and receiver-report loss, raised by probes) and, every
``ALLOCATE_INTERVAL_MS``, lets the :class:`~sfu.core.allocator.LayerSelector` pick a
layer for each of its video DownTracks.

Negotiation follows docs/PROTOCOL.md: the client always offers; offers are applied
one at a time per participant.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .core.allocator import (
    PRIORITY_OTHER,
    PRIORITY_SCREEN,
    PRIORITY_SPEAKER,
    UP_MARGIN,
    LayerSelector,
    TrackDemand,
    covering_layer,
)
from .core.bandwidth import LOSS_HIGH, BandwidthEstimator, ProbeController
from .core.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    SenderReport,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    parse_rtcp,
)
from .core.rtp import URI_MID, parse_rtp
from .core.simulcast_sdp import SimulcastOffer, parse_simulcast_offers
from .datachannel import DataChannels
from .downtrack import DownTrack
from .metrics import COUNTERS
from .rtc.adapter import MediaInfo, OfferMedia, SfuPeerConnection, parse_offer
from .uptrack import Layer, UpTrack

if TYPE_CHECKING:
    from .room import Room

__all__ = ["Participant", "OfferError", "SOURCES"]

logger = logging.getLogger(__name__)

SOURCES = ("camera", "microphone", "screen", "screen_audio", "custom")
TICK_MS = 20.0
REPORT_INTERVAL_MS = 1000.0
ALLOCATE_INTERVAL_MS = 250.0
AUDIO_BITRATE = 40_000  # bit/s set aside per audio DownTrack

SEND_RATE_WINDOW_MS = 1000.0
PEAK_WINDOW_MS = 1500.0  # covers one receiver-report interval of Chrome
SETTLE_MS = 1000.0  # no probe this long after a layer change
NACK_WINDOW_MS = 300.0  # loss measured from NACKs over this window
NACK_MIN_PACKETS = 20  # ... when at least this many video packets went out in it
MAX_DECLARED_RTX = 8  # FID groups taken from one simulcast m-line


class OfferError(Exception):
    """An offer could not be applied; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class TrackSettings:
    """A subscriber's preferences for one subscribed track (``track_settings``): the
    size it shows the video at, ``max_width`` x ``max_height`` device pixels (None: not
    capped; the layer that covers it is forwarded at most), and ``paused``."""

    max_height: int | None = None
    max_width: int | None = None
    paused: bool = False


@dataclass(slots=True)
class _Binding:
    """What the client said a mid is for: publish (with source/muted) or subscribe."""

    publish: bool
    source: str = ""
    muted: bool = False
    track_id: str = ""


def new_id(prefix: str) -> str:
    """A random id like ``PA_3f9a0c1d``."""
    return f"{prefix}_{secrets.token_hex(4)}"


class Participant:
    """A participant of ``room`` named ``name``.

    Args:
        room: the room it belongs to.
        name: display name.
        send_event: delivers a protocol event (a JSON-ready dict) to this participant.
        on_failed: called once if the PeerConnection fails or closes by itself.
        publisher_bitrate: the REMB value sent to this participant as a publisher (bit/s).
        hidden: the others are not told of this participant (a WHEP player): it
            receives, but is never listed or announced.

    Attributes:
        can_publish: False answers every m-line the client sends on inactive,
            except those bound to a subscription (a player that only receives).
    """

    def __init__(
        self,
        room: Room,
        name: str,
        send_event: Callable[[dict[str, Any]], None],
        on_failed: Callable[[], None] | None = None,
        publisher_bitrate: int = 2_500_000,
        hidden: bool = False,
    ) -> None:
        self.id = new_id("PA")
        self.name = name
        self.hidden = hidden
        self.can_publish = True
        self.room = room
        self.send_event = send_event
        self.publisher_bitrate = publisher_bitrate
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self.uptracks: dict[str, UpTrack] = {}  # by track id
        self.downtracks: dict[str, DownTrack] = {}  # by mid
        self.bandwidth_estimate: int | None = None  # the subscriber's REMB, bit/s
        self.connection = SfuPeerConnection(self)
        self.connection.on_state_change(self._on_state_change)
        self.data = DataChannels(self.id, self.connection.open_data_channel, room.on_data, send_event)
        self.connection.on_datachannel(self.data.add)
        self._on_failed = on_failed
        self._bindings: dict[str, _Binding] = {}
        self._uptracks_by_mid: dict[str, UpTrack] = {}
        self._routes: dict[int, tuple[UpTrack, Layer, bool]] = {}  # SSRC -> (UpTrack, layer, is RTX)
        self._downtracks_by_ssrc: dict[int, DownTrack] = {}
        self._mid_extension_id: int | None = None
        self._rid_extension_id: int | None = None
        self._rrid_extension_id: int | None = None
        self._simulcast: dict[str, SimulcastOffer] = {}
        # by mid of a simulcast UpTrack: media SSRC -> RTX SSRC (its offer's FID groups)
        self._declared_rtx: dict[str, dict[int, int]] = {}
        self._negotiation = asyncio.Lock()
        self._last_report_ms = 0.0
        # Subscriber side: downlink estimate, probing, layer selection.
        self.bwe = BandwidthEstimator()
        self.probe = ProbeController()
        self.selector = LayerSelector()
        self.track_settings: dict[str, TrackSettings] = {}  # by track id
        self.sent_bps = 0.0
        self.peak_sent_bps = 0.0  # the highest sent_bps of the last PEAK_WINDOW_MS
        self.media_bps = 0.0  # sent_bps without probing padding
        self._sent_samples: list[tuple[float, int, int]] = []
        self._rate_history: list[tuple[float, float]] = []
        self._nacked: list[tuple[float, int]] = []  # (arrival ms, sequence numbers NACKed)
        self._video_sent: list[tuple[float, int]] = []  # (ms, video packets sent so far)
        self._last_allocate_ms = -ALLOCATE_INTERVAL_MS
        self.closed = False

    # -- description ------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The protocol's participant object: ``{"id", "name", "tracks"}``."""
        return {"id": self.id, "name": self.name, "tracks": [t.describe() for t in self.uptracks.values()]}

    def stats_snapshot(self) -> dict[str, Any]:
        """This participant with per-track statistics, for the admin endpoint."""
        return {
            "id": self.id,
            "name": self.name,
            "hidden": self.hidden,
            "connectionState": self.connection.connection_state,
            "bandwidthEstimate": self.bandwidth_estimate,
            "downlinkEstimate": self.bwe.estimate,
            "sentBitrate": round(self.sent_bps),
            "probing": self.probe.probing,
            "published": [up.stats_snapshot() for up in self.uptracks.values()],
            "subscribed": [dt.stats_snapshot() for dt in self.downtracks.values()],
            "dataChannels": self.data.labels,
        }

    # -- negotiation ------------------------------------------------------------------

    async def handle_offer(self, sdp: str, tracks: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any], list[UpTrack]]:
        """Apply a client offer (docs/PROTOCOL.md ``offer``) and build the answer.

        Args:
            sdp: the offer SDP.
            tracks: mid -> ``{"publish": {"source", "muted"}}`` or ``{"subscribe": trackId}``
                (already validated for shape by the signaling layer).

        Returns:
            (answer SDP, the answer's ``tracks`` map, UpTracks newly published).

        Raises:
            OfferError: ``bad_sdp`` when the offer cannot be parsed or applied.
        """
        async with self._negotiation:
            if self.closed:
                raise OfferError("bad_sdp", "participant is closed")
            try:
                offer = parse_offer(sdp)
            except ValueError as exc:
                raise OfferError("bad_sdp", str(exc)) from exc
            for mid, spec in tracks.items():
                if "subscribe" in spec:
                    self._bindings[mid] = _Binding(publish=False, track_id=spec["subscribe"])
                else:
                    pub = spec.get("publish") or {}
                    self._bindings[mid] = _Binding(
                        publish=True, source=pub.get("source", ""), muted=bool(pub.get("muted", False))
                    )
            simulcast = {
                mid: o
                for mid, o in parse_simulcast_offers(sdp).items()
                if (b := self._bindings.get(mid)) is None or b.publish
            }
            self._simulcast = simulcast
            subscriptions = self._prepare(offer)
            try:
                answer = await self.connection.answer(sdp, simulcast)
            except ValueError as exc:
                raise OfferError("bad_sdp", str(exc)) from exc
            published = self._apply(offer, subscriptions)
            tracks_out = self._answer_tracks()
            for mid in self.connection.rejected_mids:
                self._bindings.pop(mid, None)
                tracks_out[mid] = {"rejected": "no codec the server can forward"}
            return answer, tracks_out, published

    def playback_tracks(self, sdp: str, publisher: Participant) -> dict[str, dict[str, Any]]:
        """The ``tracks`` map that subscribes an offer's receiving m-lines to what
        ``publisher`` publishes: each recvonly/sendrecv audio or video m-line, in
        order, gets the first of ``publisher``'s tracks of its kind not taken yet
        (cameras and microphones before screen shares). For players that name no
        tracks themselves (WHEP).

        Raises:
            OfferError: ``bad_sdp`` when the offer cannot be parsed.
        """
        try:
            offer = parse_offer(sdp)
        except ValueError as exc:
            raise OfferError("bad_sdp", str(exc)) from exc
        order = {"camera": 0, "microphone": 0}
        free = sorted(publisher.uptracks.values(), key=lambda up: order.get(up.source, 1))
        tracks: dict[str, dict[str, Any]] = {}
        for m in offer:
            if m.direction not in ("recvonly", "sendrecv"):
                continue
            up = next((u for u in free if u.kind == m.kind), None)
            if up is not None:
                free.remove(up)
                tracks[m.mid] = {"subscribe": up.id}
        return tracks

    def _prepare(self, offer: list[OfferMedia]) -> dict[str, UpTrack]:
        """Bind subscribed m-lines to sendonly transceivers before applying the offer."""
        subscriptions: dict[str, UpTrack] = {}
        for m in offer:
            binding = self._bindings.get(m.mid)
            wants_receive = m.direction in ("recvonly", "sendrecv")
            if binding is not None and not binding.publish and wants_receive:
                up = self.room.find_track(binding.track_id)
                if up is not None and up.publisher_id != self.id and up.kind == m.kind:
                    current = self.downtracks.get(m.mid)
                    new_stream = current is None or current.uptrack is not up
                    if self.connection.prepare_send(m, up.codec.mime_type, up.publisher_id, up.id, new_stream):
                        subscriptions[m.mid] = up
                        continue
                    logger.info("participant %s: mid %s offers no %s for %s", self.id, m.mid, up.codec.mime_type, up.id)
                else:
                    logger.info("participant %s: mid %s subscribes to unknown track %s", self.id, m.mid, binding.track_id)
                self.connection.prepare_inactive(m)
            elif binding is None and (m.direction == "recvonly" or not self.can_publish):
                # Nothing to send on it, or nothing this participant may publish.
                self.connection.prepare_inactive(m)
        return subscriptions

    def _apply(self, offer: list[OfferMedia], subscriptions: dict[str, UpTrack]) -> list[UpTrack]:
        """After the answer: create UpTracks and DownTracks, drop what went inactive."""
        published: list[UpTrack] = []
        media = self.connection.media
        for m in offer:
            info = media.get(m.mid)
            if info is None:
                continue
            # Subscriptions.
            current = self.downtracks.get(m.mid)
            up = subscriptions.get(m.mid)
            if current is not None and (up is None or current.uptrack is not up or info.direction != "sendonly"):
                self._remove_downtrack(m.mid)
                current = None
            if up is not None and current is None:
                if info.direction == "sendonly":
                    self._add_downtrack(up, info)
                else:
                    logger.warning("participant %s: mid %s negotiated %s, not sendonly", self.id, m.mid, info.direction)
            # Publications.
            existing = self._uptracks_by_mid.get(m.mid)
            if info.direction == "recvonly":
                if existing is None and info.codecs:
                    published.append(self._add_uptrack(m, info))
            elif existing is not None:
                self.unpublish(existing.id)
        return published

    def _answer_tracks(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for mid, up in self._uptracks_by_mid.items():
            out[mid] = {"trackId": up.id, "direction": "publish"}
        for mid, dt in self.downtracks.items():
            out[mid] = {"trackId": dt.uptrack.id, "direction": "subscribe", "participantId": dt.uptrack.publisher_id}
        return out

    def _add_uptrack(self, m: OfferMedia, info: MediaInfo) -> UpTrack:
        binding = self._bindings.get(m.mid)
        source = binding.source if binding and binding.source else ("camera" if m.kind == "video" else "microphone")
        simulcast = self._simulcast.get(m.mid) if m.kind == "video" else None
        if simulcast is not None:
            self._rid_extension_id = simulcast.rid_extension_id
            self._rrid_extension_id = simulcast.rrid_extension_id
            if simulcast.rejected:
                logger.info("participant %s: mid %s simulcast rids %s not received", self.id, m.mid, simulcast.rejected)
            # Firefox declares its layers' SSRCs with FID groups but no RIDs: a layer's
            # RTX SSRC follows its media SSRC once RID routing has bound that.
            declared = list(m.rtx_ssrcs.items())[:MAX_DECLARED_RTX]
            self._declared_rtx[m.mid] = {media_ssrc: rtx for rtx, media_ssrc in declared}
        up = UpTrack(
            track_id=new_id("TR"),
            publisher_id=self.id,
            kind=m.kind,
            source=source,
            mid=m.mid,
            codec=info.codecs[0],
            extensions=info.extensions,
            send_pli=self._send_pli,
            rids=simulcast.rids if simulcast is not None else None,
        )
        up.muted = bool(binding.muted) if binding else False
        if URI_MID in info.extensions:
            self._mid_extension_id = info.extensions[URI_MID]
        if m.ssrcs and simulcast is None:
            layer = up.layers[0]
            layer.bind_ssrc(m.ssrcs[0])
            self._routes[m.ssrcs[0]] = (up, layer, False)
            for rtx, media_ssrc in m.rtx_ssrcs.items():
                if media_ssrc == layer.ssrc:
                    layer.rtx_ssrc = rtx
                    self._routes[rtx] = (up, layer, True)
        self.uptracks[up.id] = up
        self._uptracks_by_mid[m.mid] = up
        return up

    def _add_downtrack(self, up: UpTrack, info: MediaInfo) -> None:
        try:
            dt = DownTrack(
                up,
                self.id,
                info,
                self.connection.send_rtp,
                self.connection.send_rtcp,
                lambda: self.connection.connected,
                self._on_layer_change,
            )
        except ValueError:
            logger.warning("participant %s: m-line %s cannot carry %s", self.id, info.mid, up.codec.mime_type)
            return
        self.downtracks[info.mid] = dt
        self._downtracks_by_ssrc[dt.ssrc] = dt
        if dt.rtx_ssrc is not None:
            self._downtracks_by_ssrc[dt.rtx_ssrc] = dt
        up.downtracks.append(dt)
        now_ms = time.monotonic() * 1000.0
        if up.simulcast:
            self.allocate(now_ms)
        else:
            up.request_keyframe(now_ms)

    def _remove_downtrack(self, mid: str) -> None:
        dt = self.downtracks.pop(mid, None)
        if dt is None:
            return
        dt.close()
        self.selector.forget(mid)
        self._downtracks_by_ssrc.pop(dt.ssrc, None)
        if dt.rtx_ssrc is not None:
            self._downtracks_by_ssrc.pop(dt.rtx_ssrc, None)

    def drop_subscriptions_to(self, track_id: str) -> None:
        """Stop receiving ``track_id`` (it was unpublished); the m-line stays for reuse."""
        for mid, dt in list(self.downtracks.items()):
            if dt.uptrack.id == track_id:
                self._remove_downtrack(mid)

    # -- publishing control -----------------------------------------------------------

    def set_muted(self, track_id: str, muted: bool) -> UpTrack:
        """Mark one of this participant's tracks muted or unmuted.

        Raises:
            KeyError: not a track this participant publishes.
        """
        up = self.uptracks[track_id]
        up.muted = muted
        return up

    def unpublish(self, track_id: str) -> UpTrack | None:
        """Stop publishing ``track_id`` and detach every subscriber. None if unknown."""
        up = self.uptracks.pop(track_id, None)
        if up is None:
            return None
        self._uptracks_by_mid.pop(up.mid, None)
        self._declared_rtx.pop(up.mid, None)
        for ssrc, route in list(self._routes.items()):
            if route[0] is up:
                del self._routes[ssrc]
        up.close()
        self.room.on_track_unpublished(self, up)
        return up

    # -- media in ---------------------------------------------------------------------

    def on_rtp(self, data: bytes, arrival_ms: float) -> None:
        """A decrypted RTP packet from this participant (hot path). Malformed: dropped, counted."""
        try:
            packet = parse_rtp(data)
        except ValueError:
            COUNTERS.dropped["malformed"] += 1
            return
        route = self._routes.get(packet.ssrc)
        if route is None:
            route = self._route_new_ssrc(packet)
            if route is None:
                COUNTERS.dropped["unknown_ssrc"] += 1
                return
        up, layer, is_rtx = route
        if is_rtx:
            up.on_rtx(packet, arrival_ms, layer)
        else:
            up.on_rtp(packet, arrival_ms, layer)

    def _route_new_ssrc(self, packet: Any) -> tuple[UpTrack, Layer, bool] | None:
        """Bind an SSRC the SDP did not declare: by MID extension (RFC 8843 §9.2) and,
        for simulcast, RID or repaired RID (RFC 8852); else by payload type."""
        up: UpTrack | None = None
        if self._mid_extension_id is not None:
            mid = packet.extensions.get(self._mid_extension_id)
            if mid is not None:
                up = self._uptracks_by_mid.get(mid.decode(errors="replace"))
        if up is not None and up.simulcast:
            return self._route_layer(up, packet)
        if up is None:
            # A single published track of a payload type can be found without MID.
            candidates = [
                u
                for u in self._uptracks_by_mid.values()
                if packet.payload_type in (u.codec.payload_type, u.codec.rtx_payload_type)
            ]
            if len(candidates) != 1:
                return None
            up = candidates[0]
            if up.simulcast:
                return self._route_layer(up, packet)
        layer = up.layers[0]
        is_rtx = packet.payload_type == up.codec.rtx_payload_type and packet.payload_type != up.codec.payload_type
        return self._bind(up, layer, is_rtx, packet.ssrc)

    def _route_layer(self, up: UpTrack, packet: Any) -> tuple[UpTrack, Layer, bool] | None:
        """Find the simulcast layer of a new SSRC from its RID or repaired-RID extension."""
        for ext_id, is_rtx in ((self._rid_extension_id, False), (self._rrid_extension_id, True)):
            if ext_id is None:
                continue
            rid = packet.extensions.get(ext_id)
            if rid is None:
                continue
            layer = up.layers_by_rid.get(rid.decode(errors="replace"))
            if layer is None:
                return None  # a RID the answer did not accept
            if not is_rtx and packet.payload_type == up.codec.rtx_payload_type:
                is_rtx = True
            return self._bind(up, layer, is_rtx, packet.ssrc)
        return None

    def _bind(self, up: UpTrack, layer: Layer, is_rtx: bool, ssrc: int) -> tuple[UpTrack, Layer, bool]:
        """Remember that ``ssrc`` carries ``layer`` of ``up`` (media or RTX)."""
        old = layer.rtx_ssrc if is_rtx else layer.ssrc
        if old is not None and old != ssrc:
            self._routes.pop(old, None)
        if is_rtx:
            layer.rtx_ssrc = ssrc
        else:
            layer.bind_ssrc(ssrc)
        route = (up, layer, is_rtx)
        self._routes[ssrc] = route
        rtx = None if is_rtx else self._declared_rtx.get(up.mid, {}).get(ssrc)
        if rtx is not None and rtx not in self._routes:
            self._bind(up, layer, True, rtx)
        return route

    def on_rtcp(self, data: bytes, arrival_ms: float) -> None:
        """A decrypted RTCP datagram from this participant. Malformed: dropped, counted."""
        try:
            packets = parse_rtcp(data)
        except ValueError:
            COUNTERS.rtcp_malformed += 1
            return
        for p in packets:
            if isinstance(p, (SenderReport, ReceiverReport)):
                if isinstance(p, SenderReport):
                    route = self._routes.get(p.ssrc)
                    if route is not None and not route[2]:
                        route[0].on_sender_report(p, arrival_ms, route[1])
                for block in p.reports:
                    dt = self._downtracks_by_ssrc.get(block.ssrc)
                    if dt is not None and block.ssrc == dt.ssrc:
                        rtt = dt.on_report_block(block)
                        if dt.kind == "video":
                            self.bwe.on_loss(dt.fraction_lost, self.peak_sent_bps, arrival_ms)
                            if rtt is not None:
                                self.bwe.on_rtt(rtt, arrival_ms)
            elif isinstance(p, Nack):
                COUNTERS.nacks_received += 1
                dt = self._downtracks_by_ssrc.get(p.media_ssrc)
                if dt is not None:
                    dt.on_nack(p.lost, arrival_ms)
                    if dt.kind == "video":
                        self.bwe.on_nack(arrival_ms)
                        self._nacked.append((arrival_ms, len(p.lost)))
            elif isinstance(p, Pli):
                COUNTERS.plis_received += 1
                dt = self._downtracks_by_ssrc.get(p.media_ssrc)
                if dt is not None:
                    dt.on_keyframe_request(arrival_ms)
            elif isinstance(p, Fir):
                COUNTERS.firs_received += 1
                for ssrc, _ in p.entries:
                    dt = self._downtracks_by_ssrc.get(ssrc)
                    if dt is not None:
                        dt.on_keyframe_request(arrival_ms)
            elif isinstance(p, Remb):
                self.bandwidth_estimate = p.bitrate
                self.bwe.on_remb(p.bitrate, self.sent_bps, arrival_ms)
                COUNTERS.subscriber_bitrate.observe(p.bitrate)
            elif isinstance(p, Bye):
                pass  # leaving is signaled over the WebSocket

    # -- media out (publisher-side RTCP) ----------------------------------------------

    def _send_pli(self, media_ssrc: int) -> None:
        COUNTERS.plis_sent += 1
        self.connection.send_rtcp(
            build_rr(ReceiverReport(self.rtcp_ssrc)) + build_pli(Pli(self.rtcp_ssrc, media_ssrc))
        )

    def tick(self, now_ms: float) -> None:
        """Periodic publisher-side RTCP at ``now_ms`` (monotonic ms); the room registry
        calls it every ``TICK_MS``: due NACKs and PLI retries, and every
        ``REPORT_INTERVAL_MS`` an RR + REMB. As a subscriber: probing padding, and
        every ``ALLOCATE_INTERVAL_MS`` the layer allocation."""
        if self.downtracks:
            self._subscriber_tick(now_ms)
        if not self.uptracks:
            return
        rtt = self._publisher_rtt_ms()
        for up in list(self.uptracks.values()):
            for media_ssrc, lost in up.poll(now_ms, rtt):
                COUNTERS.nacks_sent += 1
                self.connection.send_rtcp(
                    build_rr(ReceiverReport(self.rtcp_ssrc)) + build_nack(Nack(self.rtcp_ssrc, media_ssrc, lost))
                )
        if now_ms - self._last_report_ms >= REPORT_INTERVAL_MS:
            self._last_report_ms = now_ms
            self.send_receiver_reports(now_ms)

    def _publisher_rtt_ms(self) -> float:
        rtts = [dt.rtt_ms for dt in self.downtracks.values() if dt.rtt_ms is not None]
        return min(rtts) if rtts else 50.0

    def send_receiver_reports(self, now_ms: float) -> None:
        """RR for every published SSRC plus REMB for the video ones (draft-alvestrand-rmcat-remb)."""
        blocks = [b for up in self.uptracks.values() for b in up.report_blocks(now_ms)]
        packet = b"".join(build_rr(ReceiverReport(self.rtcp_ssrc, blocks[i : i + 31])) for i in range(0, max(len(blocks), 1), 31))
        video = [ssrc for up in self.uptracks.values() if up.is_video for ssrc in up.media_ssrcs()]
        if video:
            packet += build_remb(Remb(self.rtcp_ssrc, self.publisher_bitrate, video))
        self.connection.send_rtcp(packet)

    # -- subscriber side: bandwidth and layers ------------------------------------------

    def _measure_sent(self, now_ms: float) -> None:
        """Update ``sent_bps``: all RTP bit/s sent to this subscriber over the last second."""
        total = padding = 0
        for dt in self.downtracks.values():
            total += dt.bytes_sent
            padding += dt.padding_bytes_sent
        samples = self._sent_samples
        samples.append((now_ms, total, padding))
        while len(samples) > 2 and now_ms - samples[1][0] >= SEND_RATE_WINDOW_MS:
            del samples[0]
        t0, b0, p0 = samples[0]
        if now_ms > t0:
            self.sent_bps = max(0.0, (total - b0) * 8000.0 / (now_ms - t0))
            self.media_bps = max(0.0, (total - padding - b0 + p0) * 8000.0 / (now_ms - t0))
        history = self._rate_history
        history.append((now_ms, self.sent_bps))
        while now_ms - history[0][0] > PEAK_WINDOW_MS:
            del history[0]
        self.peak_sent_bps = max(rate for _, rate in history)

    def _nack_loss(self, now_ms: float) -> None:
        """Loss from the subscriber's NACKs over the last ``NACK_WINDOW_MS``: they come
        within a round trip of the loss, a receiver report up to a second later. Above
        10 % of the video packets sent in the window it is a loss report to the
        estimator (RFC 4585 §6.2.1; one reaction per hold window there)."""
        sent = sum(dt.packets_sent for dt in self.downtracks.values() if dt.kind == "video")
        history = self._video_sent
        history.append((now_ms, sent))
        while now_ms - history[0][0] > NACK_WINDOW_MS:
            del history[0]
        nacked = self._nacked
        while nacked and now_ms - nacked[0][0] > NACK_WINDOW_MS:
            del nacked[0]
        packets = sent - history[0][1]
        lost = sum(n for _, n in nacked)
        if packets >= NACK_MIN_PACKETS and lost > 0:
            fraction = lost / (packets + lost)
            if fraction > LOSS_HIGH:
                self.bwe.on_loss(fraction, self.peak_sent_bps, now_ms)

    def _subscriber_tick(self, now_ms: float) -> None:
        self._measure_sent(now_ms)
        self._nack_loss(now_ms)
        padding = self.probe.padding_bps(self.media_bps)
        if padding > 0:
            carrier = self._padding_carrier()
            if carrier is not None:
                carrier.send_padding(padding * TICK_MS / 8000.0, now_ms)
        if now_ms - self._last_allocate_ms >= ALLOCATE_INTERVAL_MS:
            self.allocate(now_ms)

    def _padding_carrier(self) -> DownTrack | None:
        """The video DownTrack that carries probing padding: forwarding, with RTX."""
        return max(
            (dt for dt in self.downtracks.values() if dt.kind == "video" and dt.rtx_ssrc is not None and dt.layer is not None),
            key=lambda dt: dt.bytes_sent,
            default=None,
        )

    def _demand(self, dt: DownTrack, now_ms: float) -> TrackDemand:
        up = dt.uptrack
        settings = self.track_settings.get(up.id)
        max_layer = None
        if settings is not None:
            sizes = [(layer.width, layer.height) for layer in up.layers]
            max_layer = covering_layer(sizes, settings.max_width, settings.max_height)
        if up.source == "screen":
            priority = PRIORITY_SCREEN
        elif self.room.active_speaker == up.publisher_id:
            priority = PRIORITY_SPEAKER
        else:
            priority = PRIORITY_OTHER
        return TrackDemand(
            key=dt.mid,
            layer_bitrates=up.layer_bitrates(now_ms),
            max_layer=max_layer,
            paused=settings.paused if settings is not None else False,
            priority=priority,
        )

    def allocate(self, now_ms: float) -> None:
        """Share the downlink estimate across this subscriber's simulcast video
        DownTracks and apply the layer changes (see
        :class:`~sfu.core.allocator.LayerSelector`); probe when they could use more.

        Audio and single-encoding video are always forwarded (as mediasoup does with
        simple consumers): their bit/s come off the budget first.
        """
        self._last_allocate_ms = now_ms
        simulcast = []
        fixed_bps = 0.0
        for dt in self.downtracks.values():
            if dt.uptrack.simulcast:
                simulcast.append(dt)
            elif dt.kind == "audio":
                fixed_bps += AUDIO_BITRATE
            else:
                fixed_bps += dt.uptrack.layer_bitrates(now_ms)[0] or 0
        if not simulcast:
            return
        demands = [self._demand(dt, now_ms) for dt in simulcast]
        lowest = [min(b for b in d.layer_bitrates if b is not None) for d in demands if not d.paused and any(d.layer_bitrates)]
        self.bwe.floor_bps = fixed_bps + sum(lowest) * UP_MARGIN
        successes = self.probe.successes
        self._probe(now_ms, simulcast, demands, fixed_bps, min(lowest, default=None))
        budget = max(0.0, self.bwe.estimate - fixed_bps)
        verified = self.probe.successes > successes
        for change in self.selector.select(now_ms, budget, demands, verified):
            dt = self.downtracks.get(change.key)  # type: ignore[arg-type]
            if dt is not None:
                dt.set_target(change.layer, change.reason, now_ms)

    def _probe(
        self,
        now_ms: float,
        simulcast: list[DownTrack],
        demands: list[TrackDemand],
        fixed_bps: float,
        lowest_bps: int | None,
    ) -> None:
        """Run the probe controller before the allocation uses the estimate: probe
        when the tracks could use more than the estimate; when everything is paused
        for bandwidth (nothing can carry padding), try the lowest layer (``lowest_bps``)
        again now and then (:meth:`~sfu.core.bandwidth.ProbeController.poll_paused`)."""
        probe = self.probe
        successes, failures = probe.successes, probe.failures
        if self._padding_carrier() is not None:
            desired = fixed_bps
            for d in demands:
                active = [b for i, b in enumerate(d.layer_bitrates) if b is not None and (d.max_layer is None or i <= d.max_layer)]
                if active and not d.paused:
                    desired += active[-1] * UP_MARGIN
            probe.on_forwarding()
            probe.poll(now_ms, self.bwe, desired, self.sent_bps)
        else:
            probe.defer(now_ms)  # nothing to pad: no probe can prove anything
            if lowest_bps is not None and any(dt.paused and dt.reason == "bandwidth" for dt in simulcast):
                probe.poll_paused(now_ms, self.bwe, fixed_bps + lowest_bps * UP_MARGIN)
        COUNTERS.probes["success"] += probe.successes - successes
        COUNTERS.probes["failure"] += probe.failures - failures

    def set_track_settings(self, track_id: str, changes: dict[str, Any]) -> None:
        """Apply a subscriber's ``track_settings`` for ``track_id`` (docs/PROTOCOL.md).

        Args:
            changes: the fields the message set: ``max_height``/``max_width`` (pixels, or None to
                remove the cap) and/or ``paused``; the others stay as they were.

        Raises:
            KeyError: this participant does not subscribe to ``track_id``.
        """
        if not any(dt.uptrack.id == track_id for dt in self.downtracks.values()):
            raise KeyError(track_id)
        settings = self.track_settings.setdefault(track_id, TrackSettings())
        if "max_height" in changes:
            settings.max_height = changes["max_height"]
        if "max_width" in changes:
            settings.max_width = changes["max_width"]
        if "paused" in changes:
            settings.paused = bool(changes["paused"])
        self.allocate(time.monotonic() * 1000.0)

    def _on_layer_change(self, dt: DownTrack, previous: int | None, layer: int | None, reason: str) -> None:
        """Tell the subscriber (``layer_changed``) and count it by direction and reason."""
        self.probe.defer(time.monotonic() * 1000.0 + SETTLE_MS)
        if layer is None:
            direction = "pause"
        elif previous is None:
            direction = "start" if dt.layer_switches <= 1 else "resume"
        else:
            direction = "up" if layer > previous else "down"
        COUNTERS.layer_switches[(direction, reason)] += 1
        logger.info(
            "participant %s: mid %s layer %s -> %s (%s, %s; estimate %d bit/s)",
            self.id, dt.mid, previous, layer, direction, reason, self.bwe.estimate,
        )
        info = dt.uptrack.layers[layer] if layer is not None else None
        self.send_event(
            {
                "type": "layer_changed",
                "trackId": dt.uptrack.id,
                "mid": dt.mid,
                "rid": info.rid if info is not None else None,
                "layer": layer,
                "width": info.width if info is not None else None,
                "height": info.height if info is not None else None,
                "paused": layer is None,
                "reason": reason,
            }
        )

    # -- teardown ---------------------------------------------------------------------

    def _on_state_change(self, state: str) -> None:
        if state in ("failed", "closed") and not self.closed and self._on_failed is not None:
            self._on_failed()

    async def close(self) -> None:
        """Detach all tracks, stop timers and close the PeerConnection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for mid in list(self.downtracks):
            self._remove_downtrack(mid)
        for up in list(self.uptracks.values()):
            up.close()
        self.uptracks.clear()
        self._uptracks_by_mid.clear()
        self._routes.clear()
        self.data.close()
        await self.connection.close()
