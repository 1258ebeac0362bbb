"""Participant: one member of a room and its single PeerConnection to the server.

The participant owns what it publishes (UpTracks) and what it receives (DownTracks),
routes its incoming RTP by SSRC, or by the MID header extension for SSRCs the SDP did
not declare (RFC 8843 §9.2), handles its RTCP, and sends its publisher-side RTCP:
receiver reports and REMB every second (Chrome stays at its lowest rate without them),
NACKs and PLIs as they come due.

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
from .datachannel import DataChannels
from .downtrack import DownTrack
from .metrics import COUNTERS
from .rtc.adapter import MediaInfo, OfferMedia, SfuPeerConnection, parse_offer
from .uptrack import UpTrack

if TYPE_CHECKING:
    from .room import Room

__all__ = ["Participant", "OfferError", "SOURCES"]

logger = logging.getLogger(__name__)

SOURCES = ("camera", "microphone", "screen", "screen_audio", "custom")
TICK_MS = 20.0
REPORT_INTERVAL_MS = 1000.0


class OfferError(Exception):
    """An offer could not be applied; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
    """

    def __init__(
        self,
        room: Room,
        name: str,
        send_event: Callable[[dict[str, Any]], None],
        on_failed: Callable[[], None] | None = None,
        publisher_bitrate: int = 2_500_000,
    ) -> None:
        self.id = new_id("PA")
        self.name = name
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
        self._routes: dict[int, tuple[UpTrack, bool]] = {}  # SSRC -> (UpTrack, is RTX)
        self._downtracks_by_ssrc: dict[int, DownTrack] = {}
        self._mid_extension_id: int | None = None
        self._negotiation = asyncio.Lock()
        self._last_report_ms = 0.0
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
            "connectionState": self.connection.connection_state,
            "bandwidthEstimate": self.bandwidth_estimate,
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
            subscriptions = self._prepare(offer)
            try:
                answer = await self.connection.answer(sdp)
            except ValueError as exc:
                raise OfferError("bad_sdp", str(exc)) from exc
            published = self._apply(offer, subscriptions)
            return answer, self._answer_tracks(), published

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
            elif binding is None and m.direction == "recvonly":
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
        up = UpTrack(
            track_id=new_id("TR"),
            publisher_id=self.id,
            kind=m.kind,
            source=source,
            mid=m.mid,
            codec=info.codecs[0],
            extensions=info.extensions,
            send_pli=self._send_pli,
        )
        up.muted = bool(binding.muted) if binding else False
        if URI_MID in info.extensions:
            self._mid_extension_id = info.extensions[URI_MID]
        if m.ssrcs:
            up.bind_ssrc(m.ssrcs[0])
            self._routes[m.ssrcs[0]] = (up, False)
        for rtx, media_ssrc in m.rtx_ssrcs.items():
            if media_ssrc == up.ssrc:
                up.rtx_ssrc = rtx
                self._routes[rtx] = (up, True)
        self.uptracks[up.id] = up
        self._uptracks_by_mid[m.mid] = up
        return up

    def _add_downtrack(self, up: UpTrack, info: MediaInfo) -> None:
        try:
            dt = DownTrack(
                up, self.id, info, self.connection.send_rtp, self.connection.send_rtcp, lambda: self.connection.connected
            )
        except ValueError:
            logger.warning("participant %s: m-line %s cannot carry %s", self.id, info.mid, up.codec.mime_type)
            return
        self.downtracks[info.mid] = dt
        self._downtracks_by_ssrc[dt.ssrc] = dt
        if dt.rtx_ssrc is not None:
            self._downtracks_by_ssrc[dt.rtx_ssrc] = dt
        up.downtracks.append(dt)
        up.request_keyframe(time.monotonic() * 1000.0)

    def _remove_downtrack(self, mid: str) -> None:
        dt = self.downtracks.pop(mid, None)
        if dt is None:
            return
        dt.close()
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
        for ssrc, (route, _) in list(self._routes.items()):
            if route is up:
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
        up, is_rtx = route
        if is_rtx:
            up.on_rtx(packet, arrival_ms)
        else:
            up.on_rtp(packet, arrival_ms)

    def _route_new_ssrc(self, packet: Any) -> tuple[UpTrack, bool] | None:
        """Bind an SSRC the SDP did not declare, by MID extension or payload type."""
        up: UpTrack | None = None
        if self._mid_extension_id is not None:
            mid = packet.extensions.get(self._mid_extension_id)
            if mid is not None:
                up = self._uptracks_by_mid.get(mid.decode(errors="replace"))
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
        is_rtx = packet.payload_type == up.codec.rtx_payload_type and packet.payload_type != up.codec.payload_type
        if is_rtx:
            up.rtx_ssrc = packet.ssrc
        else:
            if up.ssrc is not None and up.ssrc in self._routes:
                del self._routes[up.ssrc]
            up.bind_ssrc(packet.ssrc)
        route = (up, is_rtx)
        self._routes[packet.ssrc] = route
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
                    if route is not None and not route[1]:
                        route[0].on_sender_report(p, arrival_ms)
                for block in p.reports:
                    dt = self._downtracks_by_ssrc.get(block.ssrc)
                    if dt is not None and block.ssrc == dt.ssrc:
                        dt.on_report_block(block)
            elif isinstance(p, Nack):
                COUNTERS.nacks_received += 1
                dt = self._downtracks_by_ssrc.get(p.media_ssrc)
                if dt is not None:
                    dt.on_nack(p.lost, arrival_ms)
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
        ``REPORT_INTERVAL_MS`` an RR + REMB."""
        if not self.uptracks:
            return
        rtt = self._publisher_rtt_ms()
        for up in list(self.uptracks.values()):
            lost = up.poll(now_ms, rtt)
            if lost and up.ssrc is not None:
                COUNTERS.nacks_sent += 1
                self.connection.send_rtcp(
                    build_rr(ReceiverReport(self.rtcp_ssrc)) + build_nack(Nack(self.rtcp_ssrc, up.ssrc, lost))
                )
        if now_ms - self._last_report_ms >= REPORT_INTERVAL_MS:
            self._last_report_ms = now_ms
            self.send_receiver_reports(now_ms)

    def _publisher_rtt_ms(self) -> float:
        rtts = [dt.rtt_ms for dt in self.downtracks.values() if dt.rtt_ms is not None]
        return min(rtts) if rtts else 50.0

    def send_receiver_reports(self, now_ms: float) -> None:
        """RR for every published SSRC plus REMB for the video ones (draft-alvestrand-rmcat-remb)."""
        blocks = [b for b in (up.report_block(now_ms) for up in self.uptracks.values()) if b is not None]
        packet = build_rr(ReceiverReport(self.rtcp_ssrc, blocks))
        video = [up.ssrc for up in self.uptracks.values() if up.is_video and up.ssrc is not None]
        if video:
            packet += build_remb(Remb(self.rtcp_ssrc, self.publisher_bitrate, video))
        self.connection.send_rtcp(packet)

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
