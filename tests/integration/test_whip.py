"""WHIP ingest and WHEP playback through a real server: aiortc peers as WHIP publisher
and WHEP player over HTTP, room bots over the WebSocket, and bad requests answered
with the status codes RFC 9725 names while the room goes on.

(Third-party browser clients are in tests/browser/test_whip_browser.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from loadtest.client import RoomClient
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess

from .test_forwarding import PatternVideoTrack, ToneAudioTrack, recv_frames

TEST_TIMEOUT = 60.0
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"


async def post_offer(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection) -> tuple[aiohttp.ClientResponse, str]:
    """POST ``pc``'s offer; apply the answer when the server made one (201)."""
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, data=pc.localDescription.sdp, headers={"Content-Type": SDP}) as response:
        body = await response.text()
    if response.status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return response, body


def whip_publisher() -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
    pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
    return pc


def whep_player() -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    return pc


async def test_whip_publisher_is_a_participant_everyone_receives(server: ServerProcess) -> None:
    """A WHIP publisher joins the room under the name it gives: the room's members are
    told, receive and decode its video and audio, and are told when it DELETEs its
    session; the session is gone afterwards."""
    viewer = RoomClient(server.ws_url)
    pc = whip_publisher()
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http:
            await viewer.join("whip-in", "Viewer")
            response, answer = await post_offer(http, f"{server.http_url}/whip/whip-in?name=Studio", pc)
            assert response.status == 201, answer
            assert response.content_type == SDP
            location = response.headers["Location"]
            assert location.startswith("/whip/whip-in/"), location
            assert response.headers["ETag"].startswith('"')
            assert response.headers["Accept-Patch"] == SDPFRAG
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "a=candidate:" in answer

            joined = await viewer.next_event("participant_joined")
            studio = joined["participant"]
            assert studio["name"] == "Studio"
            await viewer.wait_until(lambda: len(viewer.subscriptions) == 2)
            kinds = {s.kind: s for s in viewer.subscriptions.values()}
            async with asyncio.timeout(30):
                video, audio = await asyncio.gather(recv_frames(kinds["video"].track, 20), recv_frames(kinds["audio"].track, 20))
            assert {(f.width, f.height) for f in video} == {(320, 240)}
            assert {f.sample_rate for f in audio} == {48_000}

            async with http.delete(f"{server.http_url}{location}") as response:
                assert response.status == 200
            left = await viewer.next_event("participant_left")
            assert left["participantId"] == studio["id"]
            async with http.delete(f"{server.http_url}{location}") as response:
                assert response.status == 404
    finally:
        await pc.close()
        await viewer.close()


async def test_whep_player_plays_a_publisher_and_is_never_listed(server: ServerProcess) -> None:
    """A WHEP player names a room member (``?participant=``) and receives its video
    and audio; the room's members are never told of the player; the session ends when
    the publisher leaves."""
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    other = RoomClient(server.ws_url, auto_subscribe=False)
    pc = whep_player()
    received: dict[str, asyncio.Future] = {}

    @pc.on("track")
    def on_track(track) -> None:
        received[track.kind] = asyncio.ensure_future(recv_frames(track, 20))

    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http:
            await publisher.join("whep-out", "Speaker")
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            await other.join("whep-out", "Other")
            url = f"{server.http_url}/whep/whep-out?participant={publisher.participant_id}"
            response, answer = await post_offer(http, url, pc)
            assert response.status == 201, answer
            location = response.headers["Location"]
            assert location.startswith("/whep/whep-out/")
            async with asyncio.timeout(30):
                video, audio = await asyncio.gather(*(asyncio.shield(f) for f in (received["video"], received["audio"])))
            assert video and audio

            # The player was never announced, and a late joiner does not see it either.
            late = RoomClient(server.ws_url, auto_subscribe=False)
            try:
                joined = await late.join("whep-out", "Late")
                assert {p["name"] for p in joined["participants"]} == {"Speaker", "Other"}
            finally:
                await late.close()
            names = []
            while not other.events.empty():
                event = other.events.get_nowait()
                if event["type"] == "participant_joined":
                    names.append(event["participant"]["name"])
            assert "WHEP player" not in names, names

            await publisher.leave()
            for _ in range(50):
                async with http.delete(f"{server.http_url}{location}") as response:
                    if response.status == 404:
                        break
                await asyncio.sleep(0.1)
            assert response.status == 404, "the WHEP session outlived its publisher"
    finally:
        await pc.close()
        await asyncio.gather(publisher.close(), other.close())


async def test_bad_requests_get_their_status_and_the_room_goes_on(start_server: Callable[..., ServerProcess]) -> None:
    """Malformed SDP, a wrong content type, an unknown session, a wrong ETag, an ICE
    restart, an oversized body, an unknown room name, nothing to play and a full room
    each get the status RFC 9725 (and HTTP) names, while two members of the room keep
    exchanging media."""
    server = start_server("--max-participants", "3")
    base = server.http_url
    publisher = RoomClient(server.ws_url, auto_subscribe=False)
    viewer = RoomClient(server.ws_url, count_rtp=True)
    pcs: list[RTCPeerConnection] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as http:
            await publisher.join("busy", "Pub")
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            await viewer.join("busy", "Viewer")
            await viewer.wait_until(lambda: len(viewer.subscriptions) == 2)

            async def status(method: str, path: str, body: str | bytes = b"", content_type: str | None = SDP,
                             **headers: str) -> tuple[int, dict, str]:
                if content_type:
                    headers["Content-Type"] = content_type
                async with http.request(method, f"{base}{path}", data=body, headers=headers) as response:
                    return response.status, dict(response.headers), await response.text()

            assert (await status("POST", "/whip/busy", "v=0\r\n"))[0] == 400
            assert (await status("POST", "/whip/busy", "this is not SDP at all"))[0] == 400
            assert (await status("POST", "/whip/busy", "v=0\r\n", content_type="text/plain"))[0] == 415
            assert (await status("POST", "/whip/busy", "v=0\r\n", content_type=None))[0] == 415
            assert (await status("POST", "/whip/busy", "v=0\r\n" + "a=x\r\n" * 100_000))[0] == 413
            assert (await status("POST", "/whip/no%20such%20room", "v=0\r\n"))[0] == 404
            assert (await status("POST", "/whep/empty-room", "v=0\r\n"))[0] == 404
            assert (await status("POST", "/whep/busy?participant=PA_00000000", "v=0\r\n"))[0] == 404
            for method in ("PATCH", "DELETE"):
                code, _, _ = await status(method, "/whip/busy/nosuchsession", "a=end-of-candidates\r\n", SDPFRAG)
                assert code == 404, method
            # A refused publisher was never announced to the room.
            await asyncio.sleep(0.2)
            assert set(viewer.participants) == {publisher.participant_id}

            # A real WHIP session, then its trickle requests: right, wrong ETag, wrong
            # type, an ICE restart (new credentials), an oversized fragment.
            pc = whip_publisher()
            pcs.append(pc)
            response, answer = await post_offer(http, f"{base}/whip/busy?name=Cam", pc)
            assert response.status == 201, answer
            location, etag = response.headers["Location"], response.headers["ETag"]
            ufrag = pc.localDescription.sdp.split("a=ice-ufrag:")[1].split("\r\n")[0]
            pwd = pc.localDescription.sdp.split("a=ice-pwd:")[1].split("\r\n")[0]
            fragment = (f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
                        "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n")
            assert (await status("PATCH", location, fragment, SDPFRAG, **{"If-Match": etag}))[0] == 204
            assert (await status("PATCH", location, fragment, SDPFRAG, **{"If-Match": '"other"'}))[0] == 412
            assert (await status("PATCH", location, fragment, SDP))[0] == 415
            restart = fragment.replace(ufrag, "newufrag").replace(pwd, "newpassword0123456789012")
            assert (await status("PATCH", location, restart, SDPFRAG, **{"If-Match": "*"}))[0] == 422
            assert (await status("PATCH", location, "a=candidate:x\r\n" * 5000, SDPFRAG))[0] == 413
            assert (await status("PATCH", location, "a=candidate:1 1 udp\r\n", SDPFRAG))[0] == 400

            # Preflight: a player on another origin may POST, PATCH and DELETE.
            code, headers, _ = await status("OPTIONS", "/whip/busy", content_type=None, Origin="http://example.test")
            assert code == 204 and headers["Access-Control-Allow-Origin"] == "*"
            assert "PATCH" in headers["Access-Control-Allow-Methods"] and headers["Accept-Post"] == SDP
            assert "Location" in headers["Access-Control-Expose-Headers"]

            # The room holds 3: Pub, Viewer, Cam. The next WHIP publisher is refused.
            full = whip_publisher()
            pcs.append(full)
            response, _ = await post_offer(http, f"{base}/whip/busy?name=Extra", full)
            assert response.status == 503 and int(response.headers["Retry-After"]) > 0

            # Through all of it the viewer kept receiving the publisher.
            assert viewer.counter is not None
            before = sum(s.packets for s in viewer.counter.snapshot())
            await asyncio.sleep(1.0)
            assert sum(s.packets for s in viewer.counter.snapshot()) > before + 20
            assert publisher.connected and viewer.connected
    finally:
        for pc in pcs:
            await pc.close()
        await asyncio.gather(publisher.close(), viewer.close())
