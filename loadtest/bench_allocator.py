"""In-process micro-benchmark: the CPU that bandwidth allocation adds per subscriber.

A real :class:`~sfu.participant.Participant` (its aiortc PeerConnection is created but
never connected) subscribes to K simulcast video tracks whose three layers have
measured bitrates. The benchmark times the two periodic jobs simulcast adds to a
subscriber, with the estimate moving so that layers really change:

* ``Downlink.allocate`` (every 250 ms): demands, the priority loop, hysteresis, probing;
* ``Downlink.tick`` (every 20 ms): send-rate measurement and padding.

``--transport-cc`` runs the controller as for a transport-cc subscriber (the estimate
and probe clusters of GCC) instead of the REMB/receiver-report fallback.

It prints µs per call and the resulting CPU per subscriber (µs per second and % of a
core). Packets are not part of it (bench_hotpath measures forwarding).

    python -m loadtest.bench_allocator --tracks 1 4 9 --calls 4000 [--transport-cc]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from sfu.core.rtp import URI_ABS_SEND_TIME, URI_MID
from sfu.downlink import ALLOCATE_INTERVAL_MS, TICK_MS
from sfu.participant import Participant
from sfu.room import Room
from sfu.rtc.adapter import CodecInfo, MediaInfo
from sfu.uptrack import UpTrack

LAYER_BITRATES = (140_000, 350_000, 740_000)


def _subscriber(room: Room, tracks: int, transport_cc: bool) -> Participant:
    sub = Participant(room, "sub", lambda event: None)
    sub.downlink.control.transport_cc = transport_cc
    room.add(sub)
    codec = CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97)
    for i in range(tracks):
        up = UpTrack(f"TR_{i}", f"PA_{i}", "video", "camera", "0", codec, {}, lambda ssrc: None, rids=["q", "h", "f"])
        for layer, bitrate in zip(up.layers, LAYER_BITRATES):
            layer.bind_ssrc(1000 * i + layer.index + 1)
            layer.bitrate = bitrate
            layer.last_media_ms = 0.0
            layer.height = 180 << layer.index
        media = MediaInfo(str(i), "video", "sendonly", [codec], {URI_MID: 1, URI_ABS_SEND_TIME: 2}, 5000 + i, 6000 + i)
        sub.connection.media[media.mid] = media
        sub.downlink.add(up, media)
    return sub


def _time_calls(fn, calls: int) -> float:
    """Median over 5 batches of the CPU µs per call of ``fn(i)``."""
    per_call = []
    batch = max(1, calls // 5)
    for b in range(5):
        start = time.process_time()
        for i in range(b * batch, (b + 1) * batch):
            fn(i)
        per_call.append((time.process_time() - start) * 1e6 / batch)
    return statistics.median(per_call)


async def _run(tracks_list: list[int], calls: int, transport_cc: bool) -> None:
    print(f"controller: {'transport-cc (GCC)' if transport_cc else 'REMB / receiver reports'}")
    print(f"{'tracks':>6} {'allocate µs':>12} {'tick µs':>9} {'CPU µs/s':>9} {'% core':>7}")
    for tracks in tracks_list:
        room = Room("bench", 1000)
        sub = _subscriber(room, tracks, transport_cc)
        control = sub.downlink.control
        for up in room.participants[sub.id].downtracks.values():
            for layer in up.uptrack.layers:
                layer.last_media_ms = 1e12  # stays "active" on the virtual clock
        estimates = (3_000_000 * tracks, 300_000 * tracks, 1_200_000 * tracks)

        estimator = control.gcc if transport_cc else control.bwe

        def allocate(i: int) -> None:
            estimator.estimate = estimates[(i // 20) % 3]  # a step every 5 s of virtual time
            sub.downlink.allocate(i * ALLOCATE_INTERVAL_MS)

        def tick(i: int) -> None:
            sub.downlink.tick(i * TICK_MS)

        alloc_us = _time_calls(allocate, calls)
        sub.downlink._last_allocate_ms = float("inf")  # time the 20 ms part alone
        tick_us = _time_calls(tick, calls)
        per_second = alloc_us * (1000.0 / ALLOCATE_INTERVAL_MS) + tick_us * (1000.0 / TICK_MS)
        print(f"{tracks:>6} {alloc_us:>12.1f} {tick_us:>9.1f} {per_second:>9.0f} {per_second / 1e4:>6.3f}%")
        await sub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, nargs="+", default=[1, 4, 9, 25], help="simulcast tracks per subscriber")
    parser.add_argument("--calls", type=int, default=4000, help="calls of each job per measurement")
    parser.add_argument("--transport-cc", action="store_true", help="the controller of a transport-cc subscriber")
    args = parser.parse_args()
    asyncio.run(_run(args.tracks, args.calls, args.transport_cc))


if __name__ == "__main__":
    main()
