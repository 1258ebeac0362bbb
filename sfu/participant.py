"""Participant: one member of a room and its single PeerConnection to the server.

The participant negotiates (docs/PROTOCOL.md: the client always offers; offers are
applied one at a time per participant) and owns its two sides: the
:class:`~sfu.uplink.Uplink` (what it publishes: UpTracks, routing of its RTP, the
feedback it gets as a publisher) and the :class:`~sfu.downlink.Downlink` (what it
receives: DownTracks and the subscriber control loop). Its decrypted RTP goes to the
uplink; its RTCP is parsed once and each packet goes to the side it is about.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .auth import TRACK_SOURCES, VideoGrant
from .core.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    SenderReport,
    parse_rtcp,
)
from .core.simulcast_sdp import SimulcastOffer, parse_simulcast_offers
from .core.twcc import TwccFeedback
from .datachannel import DataChannels
from .downlink import TICK_MS, Downlink, TrackSettings
from .metrics import COUNTERS
from .rtc.adapter import MediaInfo, OfferMedia, SfuPeerConnection, parse_offer
from .rtc.ports import NoMediaPort
from .uplink import Uplink
from .uptrack import UpTrack

if TYPE_CHECKING:
    from .room import Room

__all__ = ["SOURCES", "TICK_MS", "OfferError", "Participant", "TrackSettings"]

logger = logging.getLogger(__name__)

SOURCES = TRACK_SOURCES
MAX_MEDIA_SECTIONS = 256  # audio/video m-lines of one participant's PeerConnection


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
        hidden: the others are not told of this participant (a WHEP player): it
            receives, but is never listed or announced.
        identity: who it is, from its access token (one participant per identity
            and room); a random one when none is given.
        grant: what its token lets it do (:class:`~sfu.auth.VideoGrant`; the
            signaling layer checks each action against it).
        metadata: the application's data about it (at most 4,096 bytes).
        participant_id: its id; a new ``PA_...`` by default (a participant that
            resumes after a reconnection keeps the id it had, see :meth:`adopt`).

    Attributes:
        can_publish: False answers every m-line the client sends on inactive,
            except those bound to a subscription (a player that only receives).
        on_removed: called with a reason when the server removes this participant
            (``duplicate_identity``, ``removed``, ``room_deleted``): whoever holds its
            connection tells the client and closes it.
        resume_key: the secret a reconnecting client shows to take this
            participant's place again (given to the client in ``joined``).
        was_connected: its PeerConnection has been connected at least once.
        suspend_timer: while its client is away (the WebSocket dropped or the
            PeerConnection failed), the timer that removes it after the grace period.
    """

    def __init__(
        self,
        room: Room,
        name: str,
        send_event: Callable[[dict[str, Any]], None],
        on_failed: Callable[[], None] | None = None,
        publisher_bitrate: int = 2_500_000,
        hidden: bool = False,
        transport_cc: bool = True,
        identity: str | None = None,
        grant: VideoGrant | None = None,
        metadata: str = "",
        participant_id: str | None = None,
    ) -> None:
        self.id = participant_id or new_id("PA")
        self.identity = identity or new_id("ID")
        self.name = name
        self.metadata = metadata
        self.joined_at = time.time()  # Unix seconds
        self.grant = grant if grant is not None else VideoGrant(room=room.name, room_join=True)
        self.max_tracks = MAX_MEDIA_SECTIONS  # published at once (the signaling layer's limit)
        self.max_media_sections = MAX_MEDIA_SECTIONS  # audio/video m-lines of one offer
        self.on_removed: Callable[[str], None] | None = None
        self.resume_key = secrets.token_urlsafe(16)
        self.was_connected = False
        self.suspend_timer: asyncio.TimerHandle | None = None
        self.hidden = hidden
        self.can_publish = True
        self.room = room
        self.send_event = send_event
        self.rtcp_ssrc = secrets.randbits(32) or 1
        self.connection = SfuPeerConnection(self, transport_cc=transport_cc)
        self.connection.on_state_change(self._on_state_change)
        self.uplink = Uplink(self.id, self.rtcp_ssrc, self.connection.send_rtcp, publisher_bitrate)
        self.downlink = Downlink(self.id, self.connection, send_event, lambda: room.active_speaker)
        self.uptracks = self.uplink.uptracks  # by track id
        self.downtracks = self.downlink.downtracks  # by mid
        self.data = DataChannels(self.id, self.connection.open_data_channel, room.on_data, send_event)
        self.connection.on_datachannel(self.data.add)
        self._on_failed = on_failed
        self._bindings: dict[str, _Binding] = {}
        self._simulcast: dict[str, SimulcastOffer] = {}
        self._negotiation = asyncio.Lock()
        self._orphans: dict[str, UpTrack] = {}  # tracks published before a reconnection, by id
        self._orphan_timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- description ------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The protocol's participant object: ``{"id", "identity", "name", "metadata",
        "tracks"}``."""
        return {
            "id": self.id,
            "identity": self.identity,
            "name": self.name,
            "metadata": self.metadata,
            "tracks": [t.describe() for t in self.published()],
        }

    def published(self) -> list[UpTrack]:
        """Every track it publishes: those received now and, after a reconnection, those
        it published before and has not published again yet."""
        if not self._orphans:
            return list(self.uptracks.values())
        return [*self.uptracks.values(), *self._orphans.values()]

    def find_published(self, track_id: str) -> UpTrack | None:
        """The track ``track_id`` it publishes (see :meth:`published`), or None."""
        return self.uptracks.get(track_id) or self._orphans.get(track_id)

    # -- reconnection -----------------------------------------------------------------

    def adopt(self, previous: Participant, grace_s: float) -> None:
        """Take the place of ``previous``, whose client reconnected on a new connection
        (this participant was created with ``previous``'s id): its join time and the
        tracks it published, which the subscribers keep. Each of those tracks is
        forwarded again from the first one this participant publishes with the same
        kind, source and codec (or that names its id): the subscribers' DownTracks move
        to it (:meth:`~sfu.downtrack.DownTrack.rebind`) with no renegotiation and get a
        keyframe. Those not published again within ``grace_s`` seconds are unpublished
        (the others are told). ``previous`` keeps nothing; close it afterwards."""
        self.joined_at = previous.joined_at
        self._orphans = {up.id: up for up in previous.uplink.release()}
        self._orphans.update(previous._orphans)
        previous._orphans = {}
        if previous._orphan_timer is not None:
            previous._orphan_timer.cancel()
        if self._orphans:
            self._orphan_timer = asyncio.get_running_loop().call_later(grace_s, self.drop_orphans)

    def drop_orphans(self) -> list[UpTrack]:
        """Unpublish the tracks of before a reconnection that were not published again
        (the others are told ``track_unpublished``).

        Returns:
            the tracks unpublished.
        """
        gone = list(self._orphans.values())
        self._orphans.clear()
        for up in gone:
            up.close()
            if not self.closed:
                self.room.on_track_unpublished(self, up)
        return gone

    def _take_orphan(self, kind: str, source: str, mime_type: str, track_id: str) -> UpTrack | None:
        """The track of before a reconnection that a newly received one continues: the
        one named ``track_id`` if it matches kind and codec, else the first with the
        same kind, source and codec."""
        orphans = self._orphans
        if not orphans:
            return None
        mime = mime_type.lower()
        named = orphans.get(track_id)
        if named is not None and named.kind == kind and named.codec.mime_type.lower() == mime:
            return orphans.pop(track_id)
        for up in orphans.values():
            if up.kind == kind and up.source == source and up.codec.mime_type.lower() == mime:
                return orphans.pop(up.id)
        return None

    def stats_snapshot(self) -> dict[str, Any]:
        """This participant with per-track statistics, for the admin endpoint."""
        return {
            "id": self.id,
            "identity": self.identity,
            "name": self.name,
            "metadata": self.metadata,
            "permissions": self.grant.to_claim(),
            "hidden": self.hidden,
            "connectionState": self.connection.connection_state,
            **self.downlink.stats(),
            "published": [up.stats_snapshot() for up in self.uptracks.values()],
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
            OfferError: ``bad_sdp`` when the offer cannot be parsed or applied;
                ``forbidden`` when it would publish what the grant does not allow or
                subscribe without ``canSubscribe``; ``too_many_tracks`` beyond
                ``max_tracks`` published tracks. Nothing of a refused offer is applied.
        """
        async with self._negotiation:
            if self.closed:
                raise OfferError("bad_sdp", "participant is closed")
            try:
                offer = parse_offer(sdp)
            except ValueError as exc:
                raise OfferError("bad_sdp", str(exc)[:200]) from exc
            if len(offer) > self.max_media_sections:
                raise OfferError("too_many_media_sections", f"more than {self.max_media_sections} audio/video m-lines")
            # Bindings exist only for m-lines of the offer (each offer lists them all):
            # what names no m-line is ignored, and bindings of m-lines gone are dropped.
            offered = {m.mid for m in offer}
            bindings = {mid: b for mid, b in self._bindings.items() if mid in offered}
            for mid, spec in tracks.items():
                if mid not in offered:
                    continue
                if "subscribe" in spec:
                    bindings[mid] = _Binding(publish=False, track_id=spec["subscribe"])
                else:
                    pub = spec.get("publish") or {}
                    bindings[mid] = _Binding(
                        publish=True, source=pub.get("source", ""), muted=bool(pub.get("muted", False)),
                        track_id=pub.get("trackId") or "",
                    )
            self._check_grant(offer, bindings)
            self._bindings = bindings
            simulcast = {
                mid: o
                for mid, o in parse_simulcast_offers(sdp).items()
                if (b := self._bindings.get(mid)) is None or b.publish
            }
            self._simulcast = simulcast
            subscriptions = self._prepare(offer)
            try:
                answer = await self.connection.answer(sdp, simulcast)
            except NoMediaPort as exc:
                raise OfferError("no_media_port", str(exc)) from exc
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

    def source_of(self, m: OfferMedia, bindings: dict[str, _Binding] | None = None) -> str:
        """The source an m-line publishes: its binding's, else camera or microphone."""
        binding = (self._bindings if bindings is None else bindings).get(m.mid)
        return binding.source if binding and binding.source else ("camera" if m.kind == "video" else "microphone")

    def _check_grant(self, offer: list[OfferMedia], bindings: dict[str, _Binding]) -> None:
        """Refuse the whole offer (before anything is applied) if an m-line would
        publish a source the grant does not allow (bound or not: an m-line the client
        sends on is published), subscribe without ``canSubscribe``, or take the
        published tracks past ``max_tracks``.

        Raises:
            OfferError: ``forbidden`` or ``too_many_tracks``.
        """
        grant = self.grant
        publishing = 0
        for m in offer:
            binding = bindings.get(m.mid)
            if binding is not None and not binding.publish:
                if m.direction in ("recvonly", "sendrecv") and not grant.can_subscribe:
                    raise OfferError("forbidden", "your token does not allow subscribing (canSubscribe)")
                continue
            if m.direction not in ("sendonly", "sendrecv") or not self.can_publish:
                continue  # the client sends nothing on it, or it is answered inactive
            publishing += 1
            existing = self.uplink.by_mid.get(m.mid)
            source = self.source_of(m, bindings)
            if existing is None and not grant.allows_source(source):
                raise OfferError("forbidden", f"your token does not allow publishing {source} (mid {m.mid!r})")
        if publishing > self.max_tracks:
            raise OfferError("too_many_tracks", f"a participant publishes at most {self.max_tracks} tracks")

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
                    logger.info("participant %s: mid %r offers no %s for %s", self.id, m.mid, up.codec.mime_type, up.id)
                else:
                    logger.info("participant %s: mid %r subscribes to unknown track %r", self.id, m.mid, binding.track_id)
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
                self.downlink.remove(m.mid)
                current = None
            if up is not None and current is None:
                if info.direction == "sendonly":
                    self.downlink.add(up, info)
                else:
                    logger.warning("participant %s: mid %r negotiated %s, not sendonly", self.id, m.mid, info.direction)
            # Publications.
            existing = self.uplink.by_mid.get(m.mid)
            if info.direction == "recvonly":
                if existing is None and info.codecs:
                    up, adopted = self._add_uptrack(m, info)
                    if not adopted:
                        published.append(up)
            elif existing is not None:
                self.unpublish(existing.id)
        return published

    def _answer_tracks(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for mid, up in self.uplink.by_mid.items():
            out[mid] = {"trackId": up.id, "direction": "publish"}
        for mid, dt in self.downtracks.items():
            out[mid] = {"trackId": dt.uptrack.id, "direction": "subscribe", "participantId": dt.uptrack.publisher_id}
        return out

    def _add_uptrack(self, m: OfferMedia, info: MediaInfo) -> tuple[UpTrack, bool]:
        """Receive m-line ``m`` as a track: a new one, or one published before a
        reconnection (see :meth:`adopt`). Returns (the UpTrack, whether it continues one)."""
        binding = self._bindings.get(m.mid)
        source = self.source_of(m)
        simulcast = self._simulcast.get(m.mid) if m.kind == "video" else None
        muted = bool(binding.muted) if binding else False
        orphan = self._take_orphan(m.kind, source, info.codecs[0].mime_type, binding.track_id if binding else "")
        up = self.uplink.add(orphan.id if orphan else new_id("TR"), m, info, source, muted, simulcast)
        if orphan is None:
            return up, False
        now_ms = time.monotonic() * 1000.0
        if orphan.server_muted:
            up.server_muted = up.muted = True
        for dt in list(orphan.downtracks):
            dt.rebind(up, now_ms)
        orphan.close()
        if up.muted != orphan.muted:
            self.room.on_track_muted(self, up)
        if not self._orphans and self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None
        logger.info("participant %s: track %s continues on mid %r after a reconnection", self.id, up.id, m.mid)
        return up, True

    def drop_subscriptions_to(self, track_id: str) -> None:
        """Stop receiving ``track_id`` (it was unpublished); the m-line stays for reuse."""
        self.downlink.drop_subscriptions_to(track_id)

    # -- publishing control -----------------------------------------------------------

    def set_muted(self, track_id: str, muted: bool) -> UpTrack:
        """Mark one of this participant's tracks muted or unmuted.

        Raises:
            KeyError: not a track this participant publishes.
        """
        up = self.uptracks[track_id]
        if up.server_muted and not muted:
            raise PermissionError("the server muted this track")
        up.muted = muted
        return up

    def unpublish(self, track_id: str) -> UpTrack | None:
        """Stop publishing ``track_id`` and detach every subscriber. None if unknown."""
        up = self.uplink.remove(track_id)
        if up is not None:
            self.room.on_track_unpublished(self, up)
        return up

    def set_grant(self, grant: VideoGrant) -> list[UpTrack]:
        """Change what this participant may do, at once: tracks it may no longer
        publish (``canPublish`` or ``canPublishSources``) are unpublished (the others are
        told), and without ``canSubscribe`` it stops receiving every track.

        Returns:
            the tracks unpublished.
        """
        self.grant = grant
        gone = [up for up in list(self.uptracks.values()) if not grant.allows_source(up.source)]
        for up in gone:
            self.unpublish(up.id)
        if not grant.can_subscribe:
            self.downlink.close()
            for mid in [mid for mid, b in self._bindings.items() if not b.publish]:
                del self._bindings[mid]  # the next offer does not subscribe again
        return gone

    # -- media in ---------------------------------------------------------------------

    def on_rtp(self, data: bytes, arrival_ms: float) -> None:
        """A decrypted RTP packet from this participant (hot path): to the uplink."""
        self.uplink.on_rtp(data, arrival_ms)

    def on_rtcp(self, data: bytes, arrival_ms: float) -> None:
        """A decrypted RTCP datagram from this participant, parsed once: what it says
        as a publisher (SR) goes to the uplink, what it says as a subscriber (report
        blocks, NACK, PLI, FIR, REMB, transport-cc) to the downlink. Malformed:
        dropped, counted."""
        try:
            packets = parse_rtcp(data)
        except ValueError:
            COUNTERS.rtcp_malformed += 1
            return
        downlink = self.downlink
        for p in packets:
            if isinstance(p, (SenderReport, ReceiverReport)):
                if isinstance(p, SenderReport):
                    self.uplink.on_sender_report(p, arrival_ms)
                for block in p.reports:
                    downlink.on_report_block(block, arrival_ms)
            elif isinstance(p, (Nack, Pli, Fir, Remb, TwccFeedback)):
                downlink.on_feedback(p, arrival_ms)
            elif isinstance(p, Bye):
                pass  # leaving is signaled over the WebSocket

    def tick(self, now_ms: float) -> None:
        """Periodic work at ``now_ms`` (monotonic ms); the room registry calls it every
        ``TICK_MS``: the subscriber control loop (probe padding, layer allocation) and
        the publisher feedback (NACK, PLI retries, transport-cc, RR + REMB)."""
        if self.downtracks:
            self.downlink.tick(now_ms)
        if self.uptracks:
            self.uplink.tick(now_ms, self.downlink.rtt_ms() or 50.0)

    def allocate(self, now_ms: float) -> None:
        """Run the layer allocation now (see :meth:`Downlink.allocate`)."""
        self.downlink.allocate(now_ms)

    def set_track_settings(self, track_id: str, changes: dict[str, Any]) -> None:
        """Apply a subscriber's ``track_settings`` (see :meth:`Downlink.set_track_settings`).

        Raises:
            KeyError: this participant does not subscribe to ``track_id``.
        """
        self.downlink.set_track_settings(track_id, changes)

    # -- teardown ---------------------------------------------------------------------

    def _on_state_change(self, state: str) -> None:
        if state == "connected":
            self.was_connected = True
        if state in ("failed", "closed") and not self.closed and self._on_failed is not None:
            self._on_failed()

    async def close(self) -> None:
        """Detach all tracks, stop timers and close the PeerConnection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.suspend_timer is not None:
            self.suspend_timer.cancel()
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
        for up in self._orphans.values():
            up.close()
        self._orphans.clear()
        self.downlink.close()
        self.uplink.close()
        self.data.close()
        await self.connection.close()
