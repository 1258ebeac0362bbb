"""What a :class:`~loadtest.client.RoomClient` knows of its room: the others and their
tracks, its own published tracks and subscriptions, and the server's refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import MediaStreamTrack, RTCRtpTransceiver

__all__ = ["ParticipantInfo", "PublishedTrack", "RoomError", "Subscription", "TrackInfo"]


@dataclass(slots=True)
class TrackInfo:
    """A track published in the room, as the server describes it.

    Attributes:
        id: the server's track id (``TR_...``).
        kind: ``"audio"`` or ``"video"``.
        source: ``camera``, ``microphone``, ``screen``, ``screen_audio`` or ``custom``.
        muted: the publisher's mute flag.
    """

    id: str
    kind: str
    source: str
    muted: bool = False


@dataclass(slots=True)
class ParticipantInfo:
    """Another participant in the room and the tracks it publishes (by track id)."""

    id: str
    name: str
    tracks: dict[str, TrackInfo] = field(default_factory=dict)


@dataclass(slots=True)
class PublishedTrack:
    """One of this client's tracks that the server accepted.

    Attributes:
        track_id: the server's id for it.
        mid: the m-line (transceiver mid) that carries it.
        track: the local track being sent.
        source: the source announced to the room.
        transceiver: the aiortc transceiver (sendonly).
    """

    track_id: str
    mid: str
    track: MediaStreamTrack
    source: str | None
    transceiver: RTCRtpTransceiver


@dataclass(slots=True)
class Subscription:
    """A remote track this client receives.

    Attributes:
        track_id: the remote track's id.
        participant_id: its publisher.
        kind: ``"audio"`` or ``"video"``.
        mid: the local recvonly m-line it arrives on.
        transceiver: the aiortc transceiver; ``transceiver.receiver.track`` yields
            decoded frames unless the client counts RTP instead (``count_rtp``).
            aiortc keeps one track object per transceiver, so when an inactive
            m-line is reused the same track object carries the new remote track.
    """

    track_id: str
    participant_id: str
    kind: str
    mid: str
    transceiver: RTCRtpTransceiver

    @property
    def track(self) -> MediaStreamTrack:
        """The received track (decoded frames from ``await track.recv()``)."""
        return self.transceiver.receiver.track


class RoomError(Exception):
    """The server answered a request with an ``error`` message.

    Attributes:
        code: the protocol error code (``bad_sdp``, ``room_full``, ...).
        message: the server's human-readable text.
        request_type: the ``type`` of the failed request, when the server named it.
    """

    def __init__(self, code: str, message: str, request_type: str | None) -> None:
        super().__init__(f"{code}: {message} (request {request_type})")
        self.code = code
        self.message = message
        self.request_type = request_type
