"""Hard limits on what one client may send (signaling/config.py Limits, docs/CONFIG.md):
each refusal is an error with its code (or, for an oversized message or a foreign
Origin, a close or a 403), counted in ``sfu_limit_refusals_total{limit}``, and the
connection and the others go on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from loadtest.client import RoomClient, RoomError
from loadtest.media import PreEncodedAudioTrack
from loadtest.server import ServerProcess

TIMEOUT = 60


@pytest.fixture
def limited(start_server: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    config = tmp_path / "limits.toml"
    config.write_text(
        "[limits]\nmax_message_bytes = 8192\nmessages_per_second = 5\noffers_per_minute = 12\n"
        "max_tracks = 2\nmax_rooms = 2\nmax_participants = 3\nmax_media_sections = 4\nmax_candidates = 4\n"
        '[server]\nallowed_origins = ["https://app.example.com"]\n'
    )
    return start_server("--config", str(config))


def refusals(server: ServerProcess, limit: str) -> float:
    return server.metrics().get(f'sfu_limit_refusals_total{{limit="{limit}"}}', 0.0)


async def test_messages_per_second(limited: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(limited.ws_url) as ws:
        for _ in range(30):  # a burst of 30 pings: 10 (twice the rate) pass, then ~5 a second
            await ws.send_str('{"type": "ping"}')
        replies = []
        async with asyncio.timeout(5):
            while len(replies) < 30:
                replies.append(json.loads((await ws.receive()).data))
        limited_replies = [r for r in replies if r.get("code") == "rate_limited"]
        assert 15 <= len(limited_replies) <= 21, replies
        assert sum(r["type"] == "pong" for r in replies) == 30 - len(limited_replies)
        await asyncio.sleep(1.0)  # refilled: the connection goes on
        await ws.send_str('{"type": "ping"}')
        assert json.loads((await ws.receive(timeout=5)).data)["type"] == "pong"
    assert refusals(limited, "messages_per_second") == len(limited_replies)


async def test_oversized_message_closes_with_1009(limited: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(limited.ws_url) as ws:
        await ws.send_str(json.dumps({"type": "ping", "pad": "x" * 9000}))
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == 1009
    await asyncio.sleep(0.2)
    assert refusals(limited, "max_message_bytes") == 1


async def test_offers_tracks_rooms_and_participants(limited: ServerProcess) -> None:
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            a = RoomClient(limited.ws_url)
            clients.append(a)
            await a.join("one", "A")
            await a.publish([PreEncodedAudioTrack(), PreEncodedAudioTrack()], ["microphone", "custom"])
            with pytest.raises(RoomError) as err:  # a third track
                await a.publish([PreEncodedAudioTrack()], ["custom"])
            assert err.value.code == "too_many_tracks"
            assert refusals(limited, "max_tracks") == 1

            b = RoomClient(limited.ws_url)
            clients.append(b)
            await b.join("two", "B")
            c = RoomClient(limited.ws_url)
            clients.append(c)
            with pytest.raises(RoomError) as err:  # a third room
                await c.join("three", "C")
            assert err.value.code == "too_many_rooms"
            await c.join("two", "C")  # an existing room is fine
            d = RoomClient(limited.ws_url)
            clients.append(d)
            await d.join("two", "D")
            e = RoomClient(limited.ws_url)
            clients.append(e)
            with pytest.raises(RoomError) as err:
                await e.join("two", "E")
            assert err.value.code == "room_full"
            assert refusals(limited, "max_rooms") == 1 and refusals(limited, "max_participants") == 1

            # Offers: bursts of two, then 12 a minute.
            for _ in range(3):
                try:
                    await b.publish([PreEncodedAudioTrack()], ["microphone"])
                except RoomError as exc:
                    assert exc.code == "rate_limited"
                    break
            else:
                pytest.fail("offers were not limited")
            assert refusals(limited, "offers_per_minute") >= 1
            assert await b.ping() < 5.0
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_origin(limited: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for origin, allowed in [
            ("https://app.example.com", True),
            (f"http://127.0.0.1:{limited.port}", True),  # the server's own
            ("https://evil.example.com", False),
            ("null", False),
            (None, True),  # not a browser
        ]:
            headers = {"Origin": origin} if origin is not None else {}
            try:
                async with http.ws_connect(limited.ws_url, headers=headers) as ws:
                    await ws.send_str('{"type": "ping"}')
                    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "pong"
                    ok = True
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 403
                ok = False
            assert ok == allowed, origin
    assert refusals(limited, "origin") == 2


async def test_metrics_behind_a_token_or_on_their_own_port(start_server: Callable[..., ServerProcess]) -> None:
    from loadtest.server import free_port

    guarded = start_server("--metrics-token", "scrape-secret")
    port = free_port()
    apart = start_server("--metrics-port", str(port))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{guarded.http_url}/metrics") as response:
            assert response.status == 401
        async with http.get(f"{guarded.http_url}/metrics", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with http.get(f"{guarded.http_url}/metrics", headers={"Authorization": "Bearer scrape-secret"}) as response:
            assert response.status == 200 and "sfu_websocket_connections" in await response.text()
        async with http.get(f"{apart.http_url}/metrics") as response:
            assert response.status == 404
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200 and "sfu_websocket_connections" in await response.text()


async def test_m_lines_and_candidates(limited: ServerProcess) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from tests.integration.test_ice_failure import request

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for _ in range(5):  # one more than max_media_sections
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        five = pc.localDescription.sdp
    finally:
        await pc.close()
    async with asyncio.timeout(TIMEOUT), aiohttp.ClientSession() as http, http.ws_connect(limited.ws_url) as ws:
        await request(ws, {"type": "join", "room": "one", "name": "M"}, "joined")
        reply = await request(ws, {"type": "offer", "sdp": five, "tracks": {}}, "answer")
        assert reply.get("code") == "too_many_media_sections", reply
        four = five[: five.rindex("m=audio")]  # the first four m-lines
        four = four.replace(" 0 1 2 3 4", " 0 1 2 3")
        assert (await request(ws, {"type": "offer", "sdp": four, "tracks": {}}, "answer"))["type"] == "answer"
        codes = []
        for i in range(6):
            line = f"candidate:{i} 1 udp 2130706431 127.0.0.1 {10000 + i} typ host"
            await ws.send_str(json.dumps({"type": "candidate", "candidate": {"candidate": line, "sdpMid": "0"}}))
            await asyncio.sleep(0.25)  # within messages_per_second
        reply = await request(ws, {"type": "ping"}, "pong")
        while reply["type"] == "error":
            codes.append(reply["code"])
            reply = await request(ws, {"type": "ping"}, "pong")
        assert codes == ["too_many_candidates"] * 2, codes
    assert refusals(limited, "max_media_sections") == 1 and refusals(limited, "max_candidates") == 2
