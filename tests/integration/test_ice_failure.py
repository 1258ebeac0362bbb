"""A participant whose media connection never comes up is told why and removed, and
the others are told it left: when ICE fails after the end of its candidates, and when
nothing at all happens within the connect timeout. Candidates are bounded and
validated."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from loadtest.client import RoomClient
from loadtest.server import ServerProcess

TEST_TIMEOUT = 60.0


async def offer_without_candidates() -> str:
    """An aiortc sendonly-video offer with its candidates taken out; the peer that made
    it is closed, so nothing will ever answer the server's connectivity checks."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(("a=candidate", "a=end-of-candidates")))


async def request(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any], reply: str) -> dict[str, Any]:
    await ws.send_str(json.dumps(message))
    while True:
        msg = json.loads((await ws.receive(timeout=10)).data)
        if msg["type"] in (reply, "error"):
            return msg


async def wait_error(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    while True:
        frame = await ws.receive(timeout=timeout)
        assert frame.type == aiohttp.WSMsgType.TEXT, f"closed without telling why: {frame}"
        msg = json.loads(frame.data)
        if msg["type"] == "error":
            return msg, time.monotonic() - start


async def test_a_connection_that_never_comes_up_is_removed(start_server: Callable[..., ServerProcess]) -> None:
    """A participant whose only candidate is a port nobody answers on (then the end of
    candidates), or that sends no candidate at all: within the connect timeout
    (`--connect-timeout`, 4 s here, 30 s by default; aioice itself gives up on its
    checks only after ~31.5 s of retransmissions) it gets `connection_failed`, its
    connection is closed, and the other participant is told it left."""
    server = start_server("--connect-timeout", "4")
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # bound, never read: checks to it go unanswered
    observer = RoomClient(server.ws_url, auto_subscribe=False)
    took = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http:
            await observer.join("icefail", "Observer")
            for trickle in (True, False):
                async with http.ws_connect(server.ws_url) as ws:
                    joined = await request(ws, {"type": "join", "room": "icefail", "name": "Doomed"}, "joined")
                    answer = await request(ws, {"type": "offer", "sdp": await offer_without_candidates(),
                                                "tracks": {"0": {"publish": {"source": "camera"}}}}, "answer")
                    assert answer["type"] == "answer", answer
                    if trickle:
                        port = dead.getsockname()[1]
                        candidate = {"candidate": f"candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host",
                                     "sdpMid": "0", "sdpMLineIndex": 0}
                        await ws.send_str(json.dumps({"type": "candidate", "candidate": candidate}))
                        await ws.send_str(json.dumps({"type": "candidate", "candidate": None}))
                    error, seconds = await wait_error(ws, 15)
                    took.append(seconds)
                    assert error["code"] == "connection_failed", error
                    left = await observer.next_event("participant_left", timeout=10)
                    assert left["participantId"] == joined["participantId"]
                    closing = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
                    assert (await ws.receive(timeout=5)).type in closing
    finally:
        dead.close()
        await observer.close()
    assert all(3.5 <= t <= 8 for t in took), took
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/healthz") as response:
        assert (await response.json())["participants"] == 0


async def test_candidates_are_validated_and_bounded(server: ServerProcess) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        await request(ws, {"type": "join", "room": "cands", "name": "C"}, "joined")
        await request(ws, {"type": "offer", "sdp": await offer_without_candidates(),
                           "tracks": {"0": {"publish": {"source": "camera"}}}}, "answer")
        for bad in ([1, 2], {"candidate": 5}, {"candidate": "x" * 2000}, {"candidate": "candidate:1 1 udp", "sdpMid": 7},
                    {"candidate": "candidate:garbage"}, "a string"):
            reply = await request(ws, {"type": "candidate", "candidate": bad}, "never")
            assert reply["code"] == "bad_message", (bad, reply)
        codes = []
        for i in range(70):
            line = f"candidate:{i} 1 udp 2130706431 127.0.0.1 {10000 + i} typ host"
            await ws.send_str(json.dumps({"type": "candidate", "candidate": {"candidate": line, "sdpMid": "0"}}))
        reply = await request(ws, {"type": "ping"}, "pong")
        while reply["type"] == "error":
            codes.append(reply["code"])
            reply = await request(ws, {"type": "ping"}, "pong")
        assert codes and set(codes) == {"too_many_candidates"}, codes
        assert len(codes) == 6, codes
