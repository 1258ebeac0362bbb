"""Crafted RTCP floods from one participant hurt no one else: receiver reports with
every block naming its stream, NACKs naming thousands of sequence numbers, and the
same NACK again and again, ~1,800 datagrams a second. Meanwhile the forwarding latency
p99 (the server's histogram) stays under 20 ms, the event-loop lag p99 under 50 ms,
another subscriber keeps receiving, and the flood's retransmissions stay bounded."""

from __future__ import annotations

import asyncio
import re
import time

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess
from sfu.core.rtcp import Nack, ReceiverReport, ReportBlock, build_nack, build_rr
from sfu.rtc.adapter import client_send_path

FLOOD_S = 4.0
PER_TICK = 20  # crafted datagrams every 10 ms: ~2,000 a second


def histogram(samples: dict[str, float], name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram, ascending."""
    out = []
    for key, value in samples.items():
        match = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if match:
            out.append((float(match.group(1)), value))
    return sorted(out)


def p99(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """The 99th percentile (a bucket's upper bound) of what a histogram observed between
    two scrapes."""
    b, a = dict(histogram(before, name)), histogram(after, name)
    total = a[-1][1] - b.get(a[-1][0], 0.0)
    assert total > 0, f"nothing observed in {name}"
    for bound, count in a:
        if count - b.get(bound, 0.0) >= 0.99 * total:
            return bound
    return float("inf")


async def test_an_rtcp_flood_from_one_subscriber_hurts_no_one_else(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    attacker = RoomClient(server.ws_url, count_rtp=True)
    bystander = RoomClient(server.ws_url, count_rtp=True)
    try:
        async with asyncio.timeout(60):
            await publisher.join("flood", "Pub")
            await bystander.join("flood", "Bystander")
            await attacker.join("flood", "Attacker")
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            await attacker.wait_until(lambda: len(attacker.subscriptions) == 2)
            await bystander.wait_until(lambda: len(bystander.subscriptions) == 2)
            await asyncio.sleep(2.0)
            video = next(st for st in attacker.counter.snapshot() if st.kind == "video")
            ssrc, last = video.ssrc, video.max_seq & 0xFFFF
            path = client_send_path(attacker.pc)
            block = ReportBlock(ssrc, 0, 0, 0, 0, 0x12345678, 1)
            # As large as one SRTCP datagram gets (libsrtp's 1,500-byte buffer at both
            # ends): a compound of an RR with 31 blocks about the video stream and a
            # NACK naming 4,800 sequence numbers, the packets just received first;
            # one short NACK of recent packets, again and again; and both together.
            rr = build_rr(ReceiverReport(0xBAD, [block] * 31))
            every_seq = build_nack(Nack(0xBAD, ssrc, [(last - 100 + i) & 0xFFFF for i in range(4800)]))
            same = build_nack(Nack(0xBAD, ssrc, [(last - 3 + i) & 0xFFFF for i in range(3)]))
            huge_rr = rr + build_nack(Nack(0xBAD, ssrc, [(last - 100 + i) & 0xFFFF for i in range(2000)]))
            assert max(len(huge_rr), len(every_seq)) <= 1400
            crafted = [huge_rr, every_seq, same]
            before = server.metrics()
            received = sum(s.packets for s in bystander.counter.snapshot())
            sent = 0
            end = time.monotonic() + FLOOD_S
            while time.monotonic() < end:
                for i in range(PER_TICK):
                    if path.send_rtcp(crafted[i % 3]):
                        sent += 1
                await asyncio.sleep(0.01)
            after = server.metrics()
            received = sum(s.packets for s in bystander.counter.snapshot()) - received
    finally:
        await asyncio.gather(publisher.close(), attacker.close(), bystander.close())

    latency = p99(before, after, "sfu_forwarding_latency_seconds")
    lag = p99(before, after, "sfu_event_loop_lag_seconds")
    retransmitted = after["sfu_rtp_retransmissions_sent_total"] - before["sfu_rtp_retransmissions_sent_total"]
    refused = after["sfu_rtcp_nack_refused_total"] - before["sfu_rtcp_nack_refused_total"]
    summary = (f"{sent} crafted RTCP datagrams in {FLOOD_S:.0f} s: forwarding latency p99 <= {latency * 1000:.1f} ms, "
               f"event-loop lag p99 <= {lag * 1000:.1f} ms, {retransmitted:.0f} retransmissions, {refused:.0f} NACKed "
               f"packets refused, bystander received {received} packets")
    print(summary)
    assert sent > 1000, summary
    assert latency <= 0.020, summary
    assert lag <= 0.050, summary
    assert retransmitted <= 400 * (FLOOD_S + 2) + 200, summary
    assert refused > 0, summary
    assert received > 100 * FLOOD_S, summary
