"""Headless load-test bots for the SFU: a room-protocol client (:mod:`loadtest.client`),
looped pre-encoded media (:mod:`loadtest.media`), RTP counting without decoding
(:mod:`loadtest.counter`), and the benchmarks (``python -m loadtest.bench_forward``,
``python -m loadtest.bench_hotpath``)."""

from loadtest.client import (
    ParticipantInfo,
    PublishedTrack,
    RoomClient,
    RoomError,
    Subscription,
    TrackInfo,
)
from loadtest.counter import RtpCounter, StreamStats
from loadtest.media import (
    EncodedClip,
    PreEncodedAudioTrack,
    PreEncodedVideoTrack,
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
