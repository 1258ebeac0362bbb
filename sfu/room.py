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
import time
from typing import Any, Callable

from .core.envelope import Outgoing
from .core.speaker import ActiveSpeakerDetector
from .datachannel import ChannelKey, fan_out
from .participant import TICK_MS, Participant
from .uptrack import UpTrack

__all__ = ["Room", "RoomRegistry", "RoomFull", "InvalidRoomName", "ROOM_NAME"]

logger = logging.getLogger(__name__)

SPEAKER_INTERVAL_MS = 300.0
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the whole name (fullmatch)


class RoomFull(Exception):
    """The room already has its maximum number of participants."""


class InvalidRoomName(ValueError):
    """A room name breaks the rules (1-64 characters of A-Z a-z 0-9 _ -)."""


class Room:
    """A set of participants who see and hear each other.

    Args:
        name: the room name.
        max_participants: joining beyond this raises :class:`RoomFull`.
    """

    def __init__(self, name: str, max_participants: int) -> None:
        self.name = name
        self.max_participants = max_participants
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
            up = p.uptracks.get(track_id)
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

    def reveal(self, participant: Participant) -> None:
        """Make a hidden participant visible and tell the others, with the tracks it
        publishes by now (a WHIP publisher is revealed once its offer is applied, so a
        refused one is never seen)."""
        if participant.hidden and self.participants.get(participant.id) is participant:
            participant.hidden = False
            self.broadcast({"type": "participant_joined", "participant": participant.describe()}, exclude=participant)

    def on_data(self, sender_id: str, key: ChannelKey, outgoing: Outgoing) -> None:
        """Fan a DataChannel message out to the others (or to ``outgoing.to``)."""
        if sender_id in self.participants:
            fan_out(sender_id, key, outgoing, (p.data for p in self.participants.values() if not p.closed))

    def on_tracks_published(self, participant: Participant, tracks: list[UpTrack]) -> None:
        """Tell the others about newly published tracks."""
        for up in tracks:
            self.broadcast(
                {"type": "track_published", "participantId": participant.id, "track": up.describe()},
                exclude=participant,
            )

    def on_track_muted(self, participant: Participant, up: UpTrack) -> None:
        """Tell the others a track was muted or unmuted."""
        self.broadcast(
            {"type": "track_muted" if up.muted else "track_unmuted", "participantId": participant.id, "trackId": up.id},
            exclude=participant,
        )

    def on_track_unpublished(self, participant: Participant, up: UpTrack) -> None:
        """Stop forwarding ``up`` to everyone and tell them (not during a leave)."""
        for p in self.participants.values():
            if p is not participant:
                p.drop_subscriptions_to(up.id)
        if participant.id in self.participants and not participant.closed:
            self.broadcast(
                {"type": "track_unpublished", "participantId": participant.id, "trackId": up.id},
                exclude=participant,
            )

    async def leave(self, participant: Participant) -> None:
        """Remove a participant (left, WebSocket dropped, or PeerConnection failed).

        Its tracks stop being forwarded at once and the others get ``participant_left``.
        Idempotent.
        """
        if self.participants.pop(participant.id, None) is None:
            return
        for up in list(participant.uptracks.values()):
            for p in self.participants.values():
                p.drop_subscriptions_to(up.id)
        if not participant.hidden:
            self.broadcast({"type": "participant_left", "participantId": participant.id})
        await participant.close()


class RoomRegistry:
    """All rooms of this process.

    Args:
        max_participants: per room.
        publisher_bitrate: REMB sent to publishers (bit/s).
        transport_cc: negotiate transport-wide congestion control with the clients
            that offer it (see :class:`~sfu.rtc.adapter.SfuPeerConnection`).
        connect_timeout: seconds a participant's media connection may take to come
            up after its first answer; the signaling side removes it after that.
    """

    def __init__(
        self,
        max_participants: int = 50,
        publisher_bitrate: int = 2_500_000,
        transport_cc: bool = True,
        connect_timeout: float = 30.0,
    ) -> None:
        self.max_participants = max_participants
        self.publisher_bitrate = publisher_bitrate
        self.transport_cc = transport_cc
        self.connect_timeout = connect_timeout
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
    ) -> tuple[Room, Participant]:
        """Create a participant in ``room_name`` (the room is created on first join);
        a ``hidden`` one is not announced to the others (see :class:`Participant`).

        Raises:
            InvalidRoomName: the name breaks the rules.
            RoomFull: the room is at its limit.
        """
        if not isinstance(room_name, str) or not ROOM_NAME.fullmatch(room_name):
            raise InvalidRoomName("room must be 1-64 characters of A-Z a-z 0-9 _ -")
        room = self.rooms.get(room_name)
        if room is None:
            room = self.rooms[room_name] = Room(room_name, self.max_participants)
        if len(room.participants) >= room.max_participants:
            raise RoomFull(f"room {room_name} is full ({room.max_participants} participants)")
        participant = Participant(
            room, display_name, send_event, on_failed, self.publisher_bitrate, hidden, self.transport_cc
        )
        room.add(participant)
        self._ensure_ticker()
        return room, participant

    async def leave(self, room: Room, participant: Participant) -> None:
        """Remove ``participant`` from ``room``; forget the room when it is empty."""
        await room.leave(participant)
        if not room.participants and self.rooms.get(room.name) is room:
            del self.rooms[room.name]

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
