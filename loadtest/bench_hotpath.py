"""In-process micro-benchmark of the forwarding hot path (no network peers needed).

One UpTrack with N DownTracks; each DownTrack sends through the same code as the server
(its own ``RtpSendPath`` on its own event-loop UDP socket, SRTP AEAD_AES_128_GCM, to a
loopback socket that nobody reads). Prints CPU µs per forwarded packet and the share of
each stage.

    python -m loadtest.bench_hotpath --subscribers 10 --packets 20000
    python -m loadtest.bench_hotpath --subscribers 100 --path python     # SFU_BATCH=0
    python -m loadtest.bench_hotpath --subscribers 100 --path batched --shared-socket

``--path`` picks the apply step (:mod:`sfu.rtc.batch`: batched = header, protect and
one ``sendmmsg`` per socket in C; python = ``write_packet`` + protect + ``sendto`` per
packet); the default is what ``SFU_BATCH`` selects. ``--shared-socket`` sends every
subscriber's packets from one socket (as ``--udp-port``), so a fan-out is one system call.
    python -m loadtest.bench_hotpath --subscribers 10 --transport-cc [--feedback]

``--transport-cc`` stamps every packet with the subscriber connection's transport-wide
sequence number and records it in its send history (as for Chrome and Firefox);
``--feedback`` also feeds each subscriber, every 50 packets (50 ms of the virtual
clock), the transport-cc feedback a receiver would send for them (every packet
arrived 20 ms after it was sent) through the send history and the GCC estimator, so
that the CPU per forwarded packet includes what the whole transport-cc loop costs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import time
from types import SimpleNamespace

import uvloop
from pylibsrtp import Policy, Session

from sfu.core.gcc import GccEstimator
from sfu.core.rtp import URI_ABS_SEND_TIME, URI_MID, URI_TRANSPORT_CC, parse_rtp
from sfu.core.send_history import SendHistory
from sfu.core.twcc import TwccFeedback
from sfu.downtrack import DownTrack
from sfu.metrics import COUNTERS
from sfu.rtc import batch
from sfu.rtc.adapter import CodecInfo, MediaInfo, RtpSendPath
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
    parser.add_argument("--transport-cc", action="store_true", help="stamp transport-wide sequence numbers (send history)")
    parser.add_argument("--feedback", action="store_true", help="with --transport-cc: also process feedback (history + GCC)")
    parser.add_argument("--path", choices=("batched", "python"), help="the apply step (default: as SFU_BATCH selects)")
    parser.add_argument("--shared-socket", action="store_true", help="one sending socket for all subscribers (--udp-port)")
    args = parser.parse_args()
    uvloop.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    COUNTERS.per_packet = not args.no_metrics
    if args.path is not None and batch.set_enabled(args.path == "batched") != (args.path == "batched"):
        raise SystemExit("--path batched: sfu.rtc._fanout is not built (python -m sfu.rtc.build_fanout)")
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    addr = sink.getsockname()
    key = os.urandom(28)
    shared: list[asyncio.DatagramTransport] = []
    transports: list[asyncio.DatagramTransport] = []

    async def make_send():
        """The server's send path (RtpSendPath) on a uvloop UDP transport, around stub
        DTLS/ICE objects that hold the SRTP session and the nominated pair."""
        if args.shared_socket and shared:
            transport = shared[0]
        else:
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            transports.append(transport)
            shared.append(transport)
        session = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        pair = SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=addr)
        dtls = SimpleNamespace(_tx_srtp=session, transport=SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair})))
        return RtpSendPath(dtls).send_rtp  # type: ignore[arg-type]

    up = UpTrack("TR", "PA", "video", "camera", "0", CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97), {URI_MID: 1}, lambda s: None)
    up.bind_ssrc(0xAAAA)
    histories: list[SendHistory] = []
    for i in range(args.subscribers):
        extensions = {URI_MID: 1, URI_ABS_SEND_TIME: 3}
        history = None
        if args.transport_cc:
            extensions[URI_TRANSPORT_CC] = 5
            history = SendHistory()
            histories.append(history)
        media = MediaInfo(str(i + 1), "video", "sendonly", [CodecInfo(96, "video/VP8", 90000, rtx_payload_type=97)],
                          extensions, ssrc=1000 + i, rtx_ssrc=2000 + i)
        up.downtracks.append(DownTrack(up, f"S{i}", media, await make_send(), lambda d: True, transport_cc=history))
    estimators = [GccEstimator() for _ in histories] if args.feedback else []
    reported = [0] * len(histories)
    raw = _packets(args.packets)

    def feedback(now: float) -> None:
        """What each subscriber's receiver reports of the packets since its last
        feedback: every one arrived 20 ms after it was sent (sent at 1 per ms)."""
        for i, (history, estimator) in enumerate(zip(histories, estimators)):
            newest = history.newest_sequence
            if newest is None:
                continue
            first = reported[i] or newest - 49
            packets = [(seq & 0xFFFF, int((seq - first) * 1000 + 20_000)) for seq in range(first, newest + 1)]
            reported[i] = newest + 1
            results = history.on_feedback(TwccFeedback(1, 2, first & 0xFFFF, 0, 0, packets))
            estimator.on_feedback(results, now)

    def run() -> None:
        now = 0.0
        for n, data in enumerate(raw):
            up.on_rtp(parse_rtp(data), now)
            batch.send_pending()  # as if each packet came in its own event-loop turn (the worst case)
            now += 1.0
            if estimators and n % 50 == 49:
                feedback(now)

    profiler = cProfile.Profile() if args.profile else None
    t0 = time.process_time()
    if profiler:
        profiler.enable()
    run()
    if profiler:
        profiler.disable()
    cpu = time.process_time() - t0
    forwarded = args.packets * args.subscribers
    mode = "feedback" if args.feedback else "stamped" if args.transport_cc else "off"
    print(f"subscribers={args.subscribers} packets_in={args.packets} forwarded={forwarded} "
          f"metrics={'off' if args.no_metrics else 'on'} transport-cc={mode} path={batch.mode()}"
          f"{' shared-socket' if args.shared_socket else ''}")
    print(f"CPU per forwarded packet: {cpu / forwarded * 1e6:.2f} µs  ({forwarded / cpu:,.0f} forwarded packets/s per core)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    for transport in transports:
        transport.close()
    sink.close()


if __name__ == "__main__":
    main()
