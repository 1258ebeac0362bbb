"""Headless load-test bots for the SFU: a room-protocol client (:mod:`loadtest.client`),
looped pre-encoded media (:mod:`loadtest.media`), RTP counting without decoding
(:mod:`loadtest.counter`), DataChannel envelopes (:mod:`loadtest.data`), frame latency
(:mod:`loadtest.latency`), the load-test CLI ``python -m loadtest`` / ``sfu-loadtest``
(:mod:`loadtest.cli`: :mod:`loadtest.bots`, :mod:`loadtest.runner`,
:mod:`loadtest.report`, :mod:`loadtest.plots`), Janus VideoRoom for comparison
(:mod:`loadtest.janus`), and the benchmarks (``python -m loadtest.bench_step``,
``python -m loadtest.bench_forward``, ``python -m loadtest.bench_hotpath``,
``python -m loadtest.bench_datachannel``)."""

from loadtest.client import (
    ParticipantInfo,
    PublishedTrack,
    RoomClient,
    RoomError,
    Subscription,
    TrackInfo,
)
from loadtest.counter import RtpCounter, StreamStats
from loadtest.data import ChannelSpec, DataMessage
from loadtest.media import (
    EncodedClip,
    PreEncodedAudioTrack,
    PreEncodedVideoTrack,
    encode_opus_clip,
    encode_vp8_clip,
)

__all__ = [
    "ChannelSpec",
    "DataMessage",
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
