"""Loss on real links (tc on loopback): NACKs from a subscriber are answered with
retransmissions from the server's packet cache, and the server NACKs a publisher
whose packets it lost (RFC 4585 §6.2.1, RFC 4588)."""

from __future__ import annotations

import asyncio

from loadtest.client import RoomClient
from loadtest.media import PreEncodedVideoTrack
from loadtest.server import ServerProcess

from .shaping import candidate_port, shaped_port
from .test_forwarding import TEST_TIMEOUT, recv_frames


def counter(server: ServerProcess, name: str) -> float:
    return server.metrics().get(name, 0.0)


async def wait_for_counter(server: ServerProcess, name: str, above: float, timeout: float) -> float:
    for _ in range(int(timeout / 0.25)):
        value = await asyncio.to_thread(counter, server, name)
        if value > above:
            return value
        await asyncio.sleep(0.25)
    return await asyncio.to_thread(counter, server, name)


async def test_subscriber_loss_is_repaired_from_the_cache(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscriber = RoomClient(server.ws_url)  # decodes: aiortc's receiver sends NACKs
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("loss-down", "Pub")
            (video_id,) = await publisher.publish([PreEncodedVideoTrack()])  # ~1.1 Mbit/s
            await subscriber.join("loss-down", "Sub")
            await subscriber.wait_until(lambda: video_id in subscriber.subscriptions)
            track = subscriber.subscriptions[video_id].track
            await recv_frames(track, 10)
            port = candidate_port(subscriber.pc.localDescription.sdp)
            nacks_before = counter(server, "sfu_rtcp_nacks_received_total")
            rtx_before = counter(server, "sfu_rtp_retransmissions_sent_total")
            # The server -> subscriber link carries less than the stream: packets drop.
            with shaped_port(port, rate_kbit=900, queue_packets=8):
                frames = asyncio.ensure_future(recv_frames(track, 60))
                nacks = await wait_for_counter(server, "sfu_rtcp_nacks_received_total", nacks_before, 15)
                retransmitted = await wait_for_counter(server, "sfu_rtp_retransmissions_sent_total", rtx_before, 15)
                await asyncio.wait_for(frames, 30)
    finally:
        await asyncio.gather(publisher.close(), subscriber.close())
    assert nacks > nacks_before, "the subscriber's NACKs never reached the server"
    assert retransmitted > rtx_before, "the server retransmitted nothing from its cache"


async def test_server_nacks_a_publisher_it_lost_packets_from(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("loss-up", "Pub")
            await publisher.publish([PreEncodedVideoTrack()])
            server_port = candidate_port(publisher.pc.remoteDescription.sdp)
            before = counter(server, "sfu_rtcp_nacks_sent_total")
            with shaped_port(server_port, rate_kbit=900, queue_packets=8):
                sent = await wait_for_counter(server, "sfu_rtcp_nacks_sent_total", before, 15)
    finally:
        await publisher.close()
    assert sent > before, "the server sent no NACK for the packets it lost"
