"""Headless load-test bots for the SFU: a room-protocol client (:mod:`loadtest.client`)
and the forwarding benchmark (``python -m loadtest.bench_forward``)."""

from loadtest.client import (
    EncodedClip,
    ParticipantInfo,
    PreEncodedAudioTrack,
    PreEncodedVideoTrack,
    PublishedTrack,
    RoomClient,
    RoomError,
    RtpCounter,
    StreamStats,
    Subscription,
    TrackInfo,
    encode_opus_clip,
    encode_vp8_clip,
)

__all__ = [
    "EncodedClip",
    "ParticipantInfo",
    "PreEncodedAudioTrack",
    "PreEncodedVideoTrack",
    "PublishedTrack",
    "RoomClient",
    "RoomError",
    "RtpCounter",
    "StreamStats",
    "Subscription",
    "TrackInfo",
    "encode_opus_clip",
    "encode_vp8_clip",
]
