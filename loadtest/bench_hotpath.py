"""In-process micro-benchmark of the forwarding hot path (no network peers needed).

One UpTrack with N DownTracks; each DownTrack sends through the same code as the server
(SRTP protect with AEAD_AES_128_GCM + one UDP ``sendto`` to a loopback socket that
nobody reads). Prints CPU µs per forwarded packet and the share of each stage.

    python -m loadtest.bench_hotpath --subscribers 10 --packets 20000
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import time

from pylibsrtp import Policy, Session

from sfu.core.rtp import URI_ABS_SEND_TIME, URI_MID, parse_rtp
from sfu.downtrack import DownTrack
from sfu.metrics import COUNTERS
from sfu.rtc.adapter import CodecInfo, MediaInfo
from sfu.uptrack import UpTrack


def _packets(count: int) -> list[bytes]:
    """Synthetic VP8 packets of ~1100 bytes, keyframe first, MID extension set."""
    import struct

    out = []
    for i in range(count):
        payload = bytes([0x90, 0x80, 0x80 | (i >> 8) & 0x7F, i & 0xFF, 0x00 if i == 0 else 0x01]) + b"\x00" * 1100
        header = struct.pack("!BBHII", 0x90, 96 | (0x80 if i % 3 == 2 else 0), i & 0xFFFF, (i // 3) * 3000, 0xAAAA)
        ext = b"\xbe\xde\x00\x01" + b"\x10" + b"0" + b"\x00\x00"
        out.append(header + ext + payload)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    parser.add_argument("--no-metrics", action="store_true", help="no per-packet counting (as sfu serve --no-media-metrics)")
    args = parser.parse_args()
    COUNTERS.per_packet = not args.no_metrics

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    addr = sink.getsockname()
    key = os.urandom(28)

    def make_send():
        session = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))

        def send(data: bytes) -> bool:
            try:
                sender.sendto(session.protect(data), addr)
            except BlockingIOError:
                pass
            return True

        return send

    up = UpTrack("TR", "PA", "video", "camera", "0", CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97), {URI_MID: 1}, lambda s: None)
    up.bind_ssrc(0xAAAA)
    for i in range(args.subscribers):
        media = MediaInfo(str(i + 1), "video", "sendonly", [CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97)],
                          {URI_MID: 1, URI_ABS_SEND_TIME: 3}, ssrc=1000 + i, rtx_ssrc=2000 + i)
        up.downtracks.append(DownTrack(up, f"S{i}", media, make_send(), lambda d: True))
    raw = _packets(args.packets)

    def run() -> None:
        now = 0.0
        for data in raw:
            up.on_rtp(parse_rtp(data), now)
            now += 1.0

    profiler = cProfile.Profile() if args.profile else None
    t0 = time.process_time()
    if profiler:
        profiler.enable()
    run()
    if profiler:
        profiler.disable()
    cpu = time.process_time() - t0
    forwarded = args.packets * args.subscribers
    print(f"subscribers={args.subscribers} packets_in={args.packets} forwarded={forwarded} metrics={'off' if args.no_metrics else 'on'}")
    print(f"CPU per forwarded packet: {cpu / forwarded * 1e6:.2f} µs  ({forwarded / cpu:,.0f} forwarded packets/s per core)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
