"""Rooms and the registry of rooms: the media plane's interface to the room service.

The signaling layer calls :meth:`RoomRegistry.join`, then works on the returned
:class:`~sfu.participant.Participant`, and calls :meth:`Room.leave` when the
participant goes. Rooms tell their participants what happens through each
participant's ``send_event`` callback (the events of docs/PROTOCOL.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from .auth import VideoGrant
from .core.envelope import Outgoing
from .core.speaker import ActiveSpeakerDetector
from .datachannel import ChannelKey, fan_out
from .metrics import COUNTERS
from .participant import TICK_MS, Participant, new_id
from .uptrack import UpTrack

__all__ = ["ROOM_NAME", "InvalidRoomName", "Room", "RoomFull", "RoomRegistry", "TooManyRooms"]

logger = logging.getLogger(__name__)

SPEAKER_INTERVAL_MS = 300.0
_background: set[asyncio.Task[None]] = set()  # closes of evicted participants, kept referenced
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the whole name (fullmatch)


RoomListener = Callable[[str, "Room", "Participant | None", "UpTrack | None"], None]
"""``listener(event, room, participant, track)``: ``room_started``, ``room_finished``,
``participant_joined``, ``participant_left``, ``track_published``, ``track_unpublished``."""


class RoomFull(Exception):
    """The room already has its maximum number of participants."""


class TooManyRooms(Exception):
    """The server already has its maximum number of rooms."""


class InvalidRoomName(ValueError):
    """A room name breaks the rules (1-64 characters of A-Z a-z 0-9 _ -)."""


class Room:
    """A set of participants who see and hear each other.

    Args:
        name: the room name.
        max_participants: joining beyond this raises :class:`RoomFull`.
        listener: called as ``listener(event, room, participant, track)`` for
            ``participant_joined``, ``participant_left``, ``track_published`` and
            ``track_unpublished`` (the webhooks; see :class:`RoomRegistry` for the
            room events).
    """

    def __init__(self, name: str, max_participants: int, listener: RoomListener | None = None) -> None:
        self.sid = new_id("RM")
        self.name = name
        self.max_participants = max_participants
        self.listener = listener  # told of joins, leaves, tracks (webhooks)
        self.created_at = time.time()  # Unix seconds
        self.participants: dict[str, Participant] = {}
        self.active_speaker: str | None = None  # participant id (allocation priority)
        self._speakers = ActiveSpeakerDetector()
        self._last_speaker_ms = 0.0

    def tick(self, now_ms: float) -> None:
        """Every ``SPEAKER_INTERVAL_MS``: update the active speaker from the audio levels
        of the interval and tell everyone when it changes (``active_speaker``)."""
        if now_ms - self._last_speaker_ms < SPEAKER_INTERVAL_MS:
            return
        self._last_speaker_ms = now_ms
        levels: dict[str, float | None] = {}
        for p in self.participants.values():
            loudest = [v for v in (up.take_audio_level() for up in p.uptracks.values() if not up.is_video) if v is not None]
            if any(not up.is_video for up in p.uptracks.values()):
                levels[p.id] = min(loudest) if loudest else None
        speaker = self._speakers.update(now_ms, levels)
        if speaker is not None:
            self.active_speaker = speaker
            self.broadcast({"type": "active_speaker", "participantId": speaker})

    def broadcast(self, event: dict[str, Any], exclude: Participant | None = None) -> None:
        """Send ``event`` to every participant but ``exclude``."""
        for p in list(self.participants.values()):
            if p is not exclude:
                p.send_event(event)

    def find_track(self, track_id: str) -> UpTrack | None:
        """The published track ``track_id`` of any participant, or None."""
        for p in self.participants.values():
            up = p.find_published(track_id)
            if up is not None:
                return up
        return None

    def snapshot(self, exclude: Participant | None = None) -> list[dict[str, Any]]:
        """Every participant but ``exclude`` and the hidden ones as protocol
        participant objects."""
        return [p.describe() for p in self.participants.values() if p is not exclude and not p.hidden]

    def add(self, participant: Participant) -> None:
        """Add a participant and tell the others (unless it is hidden). Hidden
        participants count against ``max_participants`` too.

        Raises:
            RoomFull: the room is at ``max_participants``.
        """
        if len(self.participants) >= self.max_participants:
            raise RoomFull(f"room {self.name} is full ({self.max_participants} participants)")
        self.participants[participant.id] = participant
        if not participant.hidden:
            self.broadcast({"type": "participant_joined", "participant": participant.describe()}, exclude=participant)
        self.emit("participant_joined", participant)

    def reveal(self, participant: Participant) -> None:
        """Make a hidden participant visible and tell the others, with the tracks it
        publishes by now (a WHIP publisher is revealed once its offer is applied, so a
        refused one is never seen)."""
        if participant.hidden and self.participants.get(participant.id) is participant:
            participant.hidden = False
            self.broadcast({"type": "participant_joined", "participant": participant.describe()}, exclude=participant)
            for up in participant.uptracks.values():
                self.emit("track_published", participant, up)

    def on_data(self, sender_id: str, key: ChannelKey, outgoing: Outgoing) -> None:
        """Fan a DataChannel message out to the others (or to ``outgoing.to``); a sender
        without ``canPublishData`` gets a ``forbidden`` error instead."""
        sender = self.participants.get(sender_id)
        if sender is None:
            return
        if not sender.grant.can_publish_data:
            COUNTERS.dc_dropped["forbidden"] += 1
            sender.send_event(
                {"type": "error", "code": "forbidden", "message": "your token does not allow sending data",
                 "requestType": "data", "label": key[0]}
            )
            return
        fan_out(sender_id, key, outgoing, (p.data for p in self.participants.values() if not p.closed))

    def send_data(self, outgoing: Outgoing, label: str = "chat") -> int:
        """A DataChannel message from the server (the server API) to everyone, or to
        ``outgoing.to`` (participant ids), on the reliable ordered channel ``label``;
        delivered with ``from`` ``"server"``.

        Returns:
            how many participants it was queued for.
        """
        receivers = [p.data for p in self.participants.values() if not p.closed]
        return fan_out("server", (label, True, None, None), outgoing, receivers)

    def on_tracks_published(self, participant: Participant, tracks: list[UpTrack]) -> None:
        """Tell the others about newly published tracks (not those of a hidden
        participant: they learn of them when it is revealed)."""
        for up in tracks:
            if not participant.hidden:
                self.broadcast(
                    {"type": "track_published", "participantId": participant.id, "track": up.describe()},
                    exclude=participant,
                )
            self.emit("track_published", participant, up)

    def on_track_muted(self, participant: Participant, up: UpTrack, by_server: bool = False) -> None:
        """Tell the others a track was muted or unmuted; when the server API did it,
        its publisher too (``"by": "server"``)."""
        event: dict[str, Any] = {"type": "track_muted" if up.muted else "track_unmuted", "participantId": participant.id, "trackId": up.id}
        if by_server:
            event["by"] = "server"
        if participant.hidden:  # the others do not know of it
            if by_server:
                participant.send_event(event)
            return
        self.broadcast(event, exclude=None if by_server else participant)

    def on_track_unpublished(self, participant: Participant, up: UpTrack) -> None:
        """Stop forwarding ``up`` to everyone and tell them (not during a leave)."""
        for p in self.participants.values():
            if p is not participant:
                p.drop_subscriptions_to(up.id)
        if participant.id in self.participants and not participant.closed:
            if not participant.hidden:
                self.broadcast(
                    {"type": "track_unpublished", "participantId": participant.id, "trackId": up.id},
                    exclude=participant,
                )
            self.emit("track_unpublished", participant, up)

    async def leave(self, participant: Participant) -> None:
        """Remove a participant (left, WebSocket dropped, or PeerConnection failed).

        Its tracks stop being forwarded at once and the others get ``participant_left``.
        Idempotent.
        """
        self._remove(participant)
        await participant.close()

    def _remove(self, participant: Participant) -> bool:
        """The synchronous part of a leave: out of the room, its tracks no longer
        forwarded, the others told. False if it was not in the room."""
        if self.participants.pop(participant.id, None) is None:
            return False
        for up in participant.published():
            for p in self.participants.values():
                p.drop_subscriptions_to(up.id)
        if not participant.hidden:
            self.broadcast({"type": "participant_left", "participantId": participant.id})
        self.emit("participant_left", participant)
        return True

    def replace(self, previous: Participant, participant: Participant) -> None:
        """Put ``participant`` in the place of ``previous`` (same id: a client that
        reconnected) without telling anyone: for the others it never left."""
        if self.participants.get(previous.id) is previous and participant.id == previous.id:
            self.participants[previous.id] = participant

    def emit(self, event: str, participant: Participant | None = None, track: UpTrack | None = None) -> None:
        """Tell the listener (webhooks) of ``event``; its faults stay here."""
        if self.listener is not None:
            try:
                self.listener(event, self, participant, track)
            except Exception:
                logger.exception("room %s: the %s listener failed", self.name, event)

    def evict(self, participant: Participant, reason: str) -> None:
        """Remove ``participant`` now (the others are told at once) and have whoever
        holds its connection tell it why and close it (``participant.on_removed``);
        its PeerConnection is closed in the background.

        Args:
            reason: ``duplicate_identity`` (the same identity joined again),
                ``removed`` (the server API), ``room_deleted``.
        """
        if not self._remove(participant):
            return
        if participant.on_removed is not None:
            try:
                participant.on_removed(reason)
            except Exception:
                logger.exception("participant %s: telling it of its removal failed", participant.id)
        task = asyncio.ensure_future(participant.close())
        _background.add(task)
        task.add_done_callback(_background.discard)

    def find_identity(self, identity: str) -> Participant | None:
        """The participant with ``identity``, or None."""
        for p in self.participants.values():
            if p.identity == identity:
                return p
        return None

    def update_participant(self, participant: Participant, changes: dict[str, Any]) -> None:
        """Apply the server API's changes to a participant and tell everyone.

        Args:
            changes: any of ``name`` (str), ``metadata`` (str), ``grant``
                (:class:`~sfu.auth.VideoGrant`).
        """
        if "name" in changes:
            participant.name = changes["name"]
        if "metadata" in changes:
            participant.metadata = changes["metadata"]
        if "grant" in changes:
            participant.set_grant(changes["grant"])
            participant.send_event({"type": "permissions_changed", "permissions": participant.grant.to_claim()})
        if ("name" in changes or "metadata" in changes) and not participant.hidden:
            self.broadcast({"type": "participant_updated", "participant": participant.describe()})


class RoomRegistry:
    """All rooms of this process.

    Args:
        max_participants: per room.
        publisher_bitrate: REMB sent to publishers (bit/s).
        transport_cc: negotiate transport-wide congestion control with the clients
            that offer it (see :class:`~sfu.rtc.adapter.SfuPeerConnection`).
        connect_timeout: seconds a participant's media connection may take to come
            up after its first answer; the signaling side removes it after that.
        reconnect_grace: seconds a participant whose client vanished (WebSocket
            dropped, PeerConnection failed) keeps its place for the client to come
            back (:meth:`suspend`, :meth:`resume`); 0 removes it at once.
        max_rooms: rooms at once; a join that would create one more raises
            :class:`TooManyRooms`.
    """

    def __init__(
        self,
        max_participants: int = 50,
        publisher_bitrate: int = 2_500_000,
        transport_cc: bool = True,
        connect_timeout: float = 30.0,
        max_rooms: int = 1000,
        reconnect_grace: float = 10.0,
    ) -> None:
        self.max_participants = max_participants
        self.max_rooms = max_rooms
        self.listener: RoomListener | None = None  # webhooks: room and participant events
        self.publisher_bitrate = publisher_bitrate
        self.transport_cc = transport_cc
        self.connect_timeout = connect_timeout
        self.reconnect_grace = reconnect_grace
        self.rooms: dict[str, Room] = {}
        self._ticker: asyncio.Task[None] | None = None

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._run_ticker())

    async def _run_ticker(self) -> None:
        """One timer for every publisher of the process (not one task per participant):
        every ``TICK_MS`` each publishing participant sends its due NACKs, PLI retries
        and periodic RR/REMB. Ends when no room is left."""
        while self.rooms:
            await asyncio.sleep(TICK_MS / 1000.0)
            now_ms = time.monotonic() * 1000.0
            for room in list(self.rooms.values()):
                for participant in list(room.participants.values()):
                    if (participant.uptracks or participant.downtracks) and not participant.closed:
                        try:
                            participant.tick(now_ms)
                        except Exception:  # one participant's fault must not stop the others
                            logger.exception("participant %s: periodic work failed", participant.id)
                room.tick(now_ms)

    def join(
        self,
        room_name: str,
        display_name: str,
        send_event: Callable[[dict[str, Any]], None],
        on_failed: Callable[[], None] | None = None,
        hidden: bool = False,
        identity: str | None = None,
        grant: VideoGrant | None = None,
        metadata: str = "",
    ) -> tuple[Room, Participant]:
        """Create a participant in ``room_name`` (the room is created on first join);
        a ``hidden`` one is not announced to the others (see :class:`Participant`).
        A participant already there with the same ``identity`` is replaced: evicted
        with reason ``duplicate_identity`` (this is also how a client reconnects).

        Raises:
            InvalidRoomName: the name breaks the rules.
            TooManyRooms: the room does not exist and the server has ``max_rooms``.
            RoomFull: the room is at its limit.
        """
        if not isinstance(room_name, str) or not ROOM_NAME.fullmatch(room_name):
            raise InvalidRoomName("room must be 1-64 characters of A-Z a-z 0-9 _ -")
        room = self.rooms.get(room_name)
        if room is None:
            room = self.create_room(room_name)
        previous = room.find_identity(identity) if identity is not None else None
        if previous is not None:
            room.evict(previous, "duplicate_identity")
        if len(room.participants) >= room.max_participants:
            raise RoomFull(f"room {room_name} is full ({room.max_participants} participants)")
        participant = Participant(
            room, display_name, send_event, on_failed, self.publisher_bitrate, hidden, self.transport_cc,
            identity, grant, metadata,
        )
        room.add(participant)
        self._ensure_ticker()
        return room, participant

    def suspend(self, room: Room, participant: Participant) -> bool:
        """``participant``'s client vanished without leaving (its WebSocket dropped or
        its PeerConnection failed): keep its place for ``reconnect_grace`` seconds
        (the others are told nothing; its tracks stay published, frozen if its media
        stopped too), then remove it (the others get ``participant_left``). A
        participant whose media never connected, or any when the grace is 0, is
        removed at once (call :meth:`leave`).

        Returns:
            True if it was suspended, False if the caller must remove it now.
        """
        if (
            self.reconnect_grace <= 0
            or participant.closed
            or not participant.was_connected
            or room.participants.get(participant.id) is not participant
        ):
            return False
        if participant.suspend_timer is None:
            participant.suspend_timer = asyncio.get_running_loop().call_later(
                self.reconnect_grace, self._expire, room, participant
            )
            logger.info("participant %s: client away, its place kept %.0f s", participant.id, self.reconnect_grace)
        return True

    def _expire(self, room: Room, participant: Participant) -> None:
        participant.suspend_timer = None
        if room.participants.get(participant.id) is participant:
            logger.info("participant %s: did not come back within %.0f s", participant.id, self.reconnect_grace)
            task = asyncio.ensure_future(self.leave(room, participant))
            _background.add(task)
            task.add_done_callback(_background.discard)

    def resume(
        self,
        room_name: str,
        participant_id: str,
        resume_key: str,
        identity: str | None,
        send_event: Callable[[dict[str, Any]], None],
        on_failed: Callable[[], None] | None = None,
        grant: VideoGrant | None = None,
    ) -> tuple[Room, Participant] | None:
        """A client that reconnected takes its participant's place again: a new
        Participant (new PeerConnection) with the same id, identity, name and
        metadata replaces it without the others being told (see
        :meth:`Participant.adopt` for its tracks). The previous connection, if the
        server still had it, is told ``removed`` (reason ``resumed``) and closed.

        Args:
            participant_id: the id the client had (``joined.participantId``).
            resume_key: the secret it was given (``joined.resumeKey``), compared in
                constant time.
            identity: the identity of the client's token; None when it joins
                without a token (development mode: the key alone proves it).
            grant: the new token's grant (None keeps the previous one).

        Returns:
            (room, participant), or None when there is no such participant any more
            (the grace period ended, or the key or identity does not match): the
            caller joins it as a new participant.
        """
        room = self.rooms.get(room_name)
        previous = room.participants.get(participant_id) if room is not None else None
        if (
            room is None
            or previous is None
            or previous.closed
            or previous.hidden
            or not secrets.compare_digest(previous.resume_key.encode(), resume_key.encode("utf-8", "surrogatepass"))
            or (identity is not None and identity != previous.identity)
        ):
            return None
        if previous.suspend_timer is not None:
            previous.suspend_timer.cancel()
            previous.suspend_timer = None
        participant = Participant(
            room, previous.name, send_event, on_failed, self.publisher_bitrate, False, self.transport_cc,
            previous.identity, grant or previous.grant, previous.metadata, participant_id=previous.id,
        )
        participant.adopt(previous, self.reconnect_grace)
        room.replace(previous, participant)
        notify = previous.on_removed
        previous.on_removed = None
        if notify is not None:
            try:
                notify("resumed")
            except Exception:
                logger.exception("participant %s: telling the previous connection failed", previous.id)
        task = asyncio.ensure_future(previous.close())
        _background.add(task)
        task.add_done_callback(_background.discard)
        logger.info("participant %s: resumed on a new connection", participant.id)
        return room, participant

    def create_room(self, room_name: str, max_participants: int | None = None) -> Room:
        """The room ``room_name``, created empty if it does not exist (the server API
        creates rooms ahead of their participants; an empty room is forgotten when
        its last participant leaves, or deleted by the API).

        Raises:
            InvalidRoomName: the name breaks the rules.
            TooManyRooms: the server has ``max_rooms`` rooms.
        """
        if not isinstance(room_name, str) or not ROOM_NAME.fullmatch(room_name):
            raise InvalidRoomName("room must be 1-64 characters of A-Z a-z 0-9 _ -")
        room = self.rooms.get(room_name)
        if room is not None:
            return room
        if len(self.rooms) >= self.max_rooms:
            raise TooManyRooms(f"the server has its maximum of {self.max_rooms} rooms")
        room = self.rooms[room_name] = Room(room_name, max_participants or self.max_participants, self.listener)
        room.emit("room_started")
        return room

    def _forget(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            room.emit("room_finished")

    def evict(self, room: Room, participant: Participant, reason: str) -> None:
        """:meth:`Room.evict`, and forget the room if that emptied it."""
        room.evict(participant, reason)
        if not room.participants:
            self._forget(room)

    async def delete_room(self, room: Room) -> None:
        """Remove everyone from ``room`` (each is told: ``room_deleted``) and forget it."""
        for participant in list(room.participants.values()):
            room.evict(participant, "room_deleted")
        self._forget(room)

    async def leave(self, room: Room, participant: Participant) -> None:
        """Remove ``participant`` from ``room``; forget the room when it is empty."""
        await room.leave(participant)
        if not room.participants:
            self._forget(room)

    def snapshot(self) -> dict[str, Any]:
        """Every room, participant and track with statistics (the admin endpoint's body)."""
        return {
            "rooms": [
                {"name": room.name, "participants": [p.stats_snapshot() for p in room.participants.values()]}
                for room in self.rooms.values()
            ]
        }

    def gauges(self) -> tuple[int, int, dict[str, int], int]:
        """(rooms, participants, published tracks by kind, DownTracks) for metrics."""
        participants = 0
        tracks = {"audio": 0, "video": 0}
        downtracks = 0
        for room in self.rooms.values():
            for p in room.participants.values():
                participants += 1
                downtracks += len(p.downtracks)
                for up in p.uptracks.values():
                    tracks[up.kind] += 1
        return len(self.rooms), participants, tracks, downtracks

    def downtrack_layers(self) -> dict[str, int]:
        """Video DownTracks by layer label, for metrics (see MediaCollector)."""
        out = {"0": 0, "1": 0, "2": 0, "single": 0, "paused": 0, "starting": 0}
        for room in self.rooms.values():
            for p in room.participants.values():
                for dt in p.downtracks.values():
                    if dt.kind == "video":
                        label = dt.layer_label
                        out[label] = out.get(label, 0) + 1
        return out

    async def close(self) -> None:
        """Remove every participant of every room."""
        for room in list(self.rooms.values()):
            await asyncio.gather(*(self.leave(room, p) for p in list(room.participants.values())))
