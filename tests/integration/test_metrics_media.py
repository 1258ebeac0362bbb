"""Media metrics agree with what clients saw, and the admin endpoint shows the tracks."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess

from .test_forwarding import TEST_TIMEOUT


def admin(server: ServerProcess) -> dict:
    with urllib.request.urlopen(f"{server.http_url}/admin/rooms", timeout=5) as response:
        return json.loads(response.read())


async def test_sent_counter_matches_what_the_subscriber_received(server: ServerProcess) -> None:
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    subscriber = RoomClient(server.ws_url, count_rtp=True)
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            await publisher.join("agree", "Pub")
            video_id, audio_id = await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()])
            await subscriber.join("agree", "Sub")
            counter = subscriber.counter
            assert counter is not None
            await subscriber.wait_until(lambda: sum(s.packets for s in counter.snapshot()) > 300, timeout=20)

            rooms = (await asyncio.to_thread(admin, server))["rooms"]
            (room,) = rooms
            by_name = {p["name"]: p for p in room["participants"]}
            published = {t["id"]: t for t in by_name["Pub"]["published"]}
            assert set(published) == {video_id, audio_id}
            assert published[video_id]["codec"].lower() == "video/vp8" and published[video_id]["subscribers"] == 1
            assert published[video_id]["packetsReceived"] > 0
            assert {t["trackId"] for t in by_name["Sub"]["subscribed"]} == {video_id, audio_id}

            await publisher.close()  # stop the flow, then let packets in flight land
            await asyncio.sleep(1.0)
            samples = await asyncio.to_thread(server.metrics)
    finally:
        await asyncio.gather(publisher.close(), subscriber.close())
    sent = sum(v for k, v in samples.items() if k.startswith("sfu_rtp_packets_sent_total"))
    received = sum(s.packets for s in counter.snapshot())
    # Loopback loses nothing: the two counts agree (within what a retransmission adds).
    assert received > 300
    assert abs(sent - received) <= max(2, 0.01 * sent), (sent, received)
    assert samples["sfu_forwarding_latency_seconds_count"] > 0
    # Forwarding is synchronous: well under 10 ms from arrival to the last sendto.
    fast = samples['sfu_forwarding_latency_seconds_bucket{le="0.01"}']
    assert fast / samples["sfu_forwarding_latency_seconds_count"] > 0.95
