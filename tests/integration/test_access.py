"""Access control over a real server with API keys (docs/AUTH.md): every grant against
every action (each forbidden one refused with ``forbidden``, the connection going on;
each allowed one working), bad tokens refused at join, a second join of an identity
replacing the first, grants changed through the server API taking effect at once, and
the server API with its Python client, errors included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from loadtest.client import ChannelSpec, RoomClient, RoomError
from loadtest.media import PreEncodedAudioTrack, PreEncodedVideoTrack
from loadtest.server import ServerProcess
from sfu.auth import VideoGrant, mint_token
from sfu.server_api import ServerApi, ServerApiError
from signaling.webhooks import WebhookVerificationError, verify_webhook

KEY, SECRET = "APItest", "test-secret-" + "x" * 32
OTHER_KEY, OTHER_SECRET = "APIold", "old-secret-" + "y" * 32
TIMEOUT = 60


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sfu.toml"
    path.write_text(f'[keys]\n{KEY} = "{SECRET}"\n{OTHER_KEY} = "{OTHER_SECRET}"\n')
    return path


@pytest.fixture
def keyed(start_server: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    """A server with two API keys (not in development mode)."""
    return start_server("--config", str(config_file(tmp_path)))


def token(room: str, identity: str, key: str = KEY, secret: str = SECRET, **grants: object) -> str:
    grant = VideoGrant(room=room, room_join=True)
    for name, value in grants.items():
        setattr(grant, name, value)
    return mint_token(key, secret, identity, grant, name=identity.title())


async def joined(server: ServerProcess, room: str, identity: str, count_rtp: bool = False, **grants: object) -> RoomClient:
    """A client joined with a token for ``identity`` (a counting client cannot publish:
    its media engines are off)."""
    client = RoomClient(server.ws_url, count_rtp=count_rtp, channels=[ChannelSpec("chat")])
    await client.join(None, token=token(room, identity, **grants))
    return client


# -- every grant against every action ---------------------------------------------------

ACTIONS = ("publish_camera", "publish_microphone", "subscribe", "track_settings", "send_data")
GRANTS: dict[str, tuple[dict[str, object], set[str]]] = {
    # grant changes -> the actions it forbids
    "everything": ({}, set()),
    "no canPublish": ({"can_publish": False}, {"publish_camera", "publish_microphone"}),
    "microphone only": ({"can_publish_sources": ("microphone",)}, {"publish_camera"}),
    "no canSubscribe": ({"can_subscribe": False}, {"subscribe", "track_settings"}),
    "no canPublishData": ({"can_publish_data": False}, {"send_data"}),
}


async def attempt(action: str, client: RoomClient, publisher: RoomClient, video_id: str) -> str | None:
    """Do ``action``; the error code it got, or None when it worked."""
    try:
        if action == "publish_camera":
            await client.publish([PreEncodedVideoTrack()], ["camera"])
        elif action == "publish_microphone":
            await client.publish([PreEncodedAudioTrack()], ["microphone"])
        elif action == "subscribe":
            subscriptions = await client.subscribe([video_id])
            assert [s.track_id for s in subscriptions] == [video_id]
            frames = await asyncio.wait_for(subscriptions[0].track.recv(), 15)  # decoded: media flows
            assert frames is not None
        elif action == "track_settings":
            await client.set_track_settings(video_id, max_height=180)
            return await _error_within(client, "track_settings", 1.0)
        elif action == "send_data":
            client.send_data("chat", "hello")
            error = await _error_within(client, "data", 1.0)
            if error is None:
                message = await asyncio.wait_for(publisher.data.get(), 5)
                assert (message.data, message.from_id) == ("hello", client.participant_id)
            return error
    except RoomError as exc:
        return exc.code
    return None


async def _error_within(client: RoomClient, request_type: str, seconds: float) -> str | None:
    try:
        async with asyncio.timeout(seconds):
            while True:
                event = await client.events.get()
                if event.get("type") == "error" and event.get("requestType") == request_type:
                    return event["code"]
    except TimeoutError:
        return None


@pytest.mark.parametrize("grant_name", list(GRANTS))
async def test_every_action_is_checked_against_the_grants(keyed: ServerProcess, grant_name: str) -> None:
    changes, forbidden = GRANTS[grant_name]
    room = "grants-" + grant_name.replace(" ", "-")
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            publisher = await joined(keyed, room, "publisher")
            clients.append(publisher)
            video_id, _ = await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            client = RoomClient(keyed.ws_url, auto_subscribe=False, channels=[ChannelSpec("chat")])
            clients.append(client)
            await client.join(None, token=token(room, "tested", **changes))
            await client.wait_until(lambda: video_id in {t for p in client.participants.values() for t in p.tracks})
            outcomes = {action: await attempt(action, client, publisher, video_id) for action in ACTIONS}
            assert outcomes == {a: ("forbidden" if a in forbidden else None) for a in ACTIONS}
            assert await client.ping() < 5.0  # the connection goes on
            assert client.participant_id in publisher.participants  # and so does the room
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_hidden_participant_is_not_listed(keyed: ServerProcess) -> None:
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            visible = await joined(keyed, "hide", "visible")
            recorder = await joined(keyed, "hide", "recorder", hidden=True)
            late = await joined(keyed, "hide", "late")
            clients += [visible, recorder, late]
            await asyncio.sleep(0.5)
            assert set(visible.participants) == {late.participant_id}
            assert set(late.participants) == {visible.participant_id}
            assert set(recorder.participants) == {visible.participant_id, late.participant_id}
    finally:
        await asyncio.gather(*(c.close() for c in clients))


# -- bad tokens ----------------------------------------------------------------------------

BAD_TOKENS: dict[str, tuple[Callable[[], str | None], str]] = {
    "none": (lambda: None, "invalid_token"),
    "malformed": (lambda: "not-a-jwt", "invalid_token"),
    "expired": (lambda: mint_token(KEY, SECRET, "a", VideoGrant(room="r", room_join=True), ttl_s=1, now=1_600_000_000), "invalid_token"),
    "not yet valid": (lambda: mint_token(KEY, SECRET, "a", VideoGrant(room="r", room_join=True), now=4_000_000_000), "invalid_token"),
    "wrongly signed": (lambda: mint_token(KEY, "z" * 40, "a", VideoGrant(room="r", room_join=True)), "invalid_token"),
    "unknown key": (lambda: mint_token("APInobody", SECRET, "a", VideoGrant(room="r", room_join=True)), "invalid_token"),
    "no roomJoin": (lambda: mint_token(KEY, SECRET, "a", VideoGrant(room="r")), "forbidden"),
    "no room": (lambda: mint_token(KEY, SECRET, "a", VideoGrant(room_join=True)), "forbidden"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_refused_at_join(keyed: ServerProcess, case: str) -> None:
    make, code = BAD_TOKENS[case]
    client = RoomClient(keyed.ws_url)
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(RoomError) as err:
                await client.join("r", "Anon", token=make())
            assert err.value.code == code
            # The connection is still usable: a good token joins.
            reply = await client.join(None, token=token("r", "good"))
            assert reply["identity"] == "good" and reply["name"] == "Good"
    finally:
        await client.close()


async def test_a_token_for_another_room_and_the_old_key_during_rotation(keyed: ServerProcess) -> None:
    client = RoomClient(keyed.ws_url)
    try:
        with pytest.raises(RoomError) as err:
            await client.join("elsewhere", token=token("here", "a"))
        assert err.value.code == "forbidden"
        reply = await client.join(None, token=token("here", "a", key=OTHER_KEY, secret=OTHER_SECRET))
        assert reply["room"] == "here"
    finally:
        await client.close()


async def test_the_same_identity_joining_again_replaces_the_first(keyed: ServerProcess) -> None:
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            watcher = await joined(keyed, "dup", "watcher")
            first = await joined(keyed, "dup", "alice")
            clients += [watcher, first]
            second = await joined(keyed, "dup", "alice")
            clients.append(second)
            removed = await first.next_event("removed", timeout=5)
            assert removed["reason"] == "duplicate_identity"
            await watcher.wait_until(lambda: set(watcher.participants) == {second.participant_id}, timeout=5)
            await first.wait_until(lambda: not first.connected, timeout=5)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


# -- the server API -----------------------------------------------------------------------


async def test_a_revoked_canpublish_unpublishes_at_once(keyed: ServerProcess) -> None:
    clients: list[RoomClient] = []
    api = ServerApi(keyed.http_url, KEY, SECRET)
    try:
        async with asyncio.timeout(TIMEOUT):
            publisher = await joined(keyed, "revoke", "pub")
            subscriber = await joined(keyed, "revoke", "sub", count_rtp=True)
            clients += [publisher, subscriber]
            await publisher.publish([PreEncodedVideoTrack(), PreEncodedAudioTrack()], ["camera", "microphone"])
            await subscriber.wait_until(lambda: len(subscriber.subscriptions) == 2, timeout=15)
            await subscriber.wait_until(lambda: sum(s.packets for s in subscriber.counter.snapshot()) > 50, timeout=15)
            updated = await api.update_participant("revoke", "pub", permissions={"canPublish": False})
            assert updated["permissions"]["canPublish"] is False and updated["tracks"] == []
            changed = await publisher.next_event("permissions_changed", timeout=5)
            assert changed["permissions"]["canPublish"] is False
            await subscriber.wait_until(lambda: not subscriber.subscriptions, timeout=5)
            await asyncio.sleep(0.5)
            before = sum(s.packets for s in subscriber.counter.snapshot())
            await asyncio.sleep(1.0)
            assert sum(s.packets for s in subscriber.counter.snapshot()) == before, "media still forwarded"
            with pytest.raises(RoomError) as err:  # and it cannot publish again
                await publisher.publish([PreEncodedVideoTrack()], ["camera"])
            assert err.value.code == "forbidden"
    finally:
        await api.close()
        await asyncio.gather(*(c.close() for c in clients))


async def test_the_server_api_end_to_end(keyed: ServerProcess) -> None:
    clients: list[RoomClient] = []
    api = ServerApi(keyed.http_url, KEY, SECRET)
    try:
        async with asyncio.timeout(TIMEOUT):
            created = await api.create_room("api", max_participants=3)
            assert created["name"] == "api" and created["maxParticipants"] == 3 and created["numParticipants"] == 0
            assert "api" in [r["name"] for r in await api.list_rooms()]
            alice = await joined(keyed, "api", "alice")
            bob = await joined(keyed, "api", "bob")
            clients += [alice, bob]
            (track_id,) = await alice.publish([PreEncodedAudioTrack()], ["microphone"])
            people = {p["identity"]: p for p in await api.list_participants("api")}
            assert set(people) == {"alice", "bob"} and people["alice"]["tracks"][0]["id"] == track_id
            assert (await api.get_participant("api", "bob"))["name"] == "Bob"

            renamed = await api.update_participant("api", "bob", name="Robert", metadata='{"role": "host"}')
            assert (renamed["name"], renamed["metadata"]) == ("Robert", '{"role": "host"}')
            update = await alice.next_event("participant_updated", timeout=5)
            assert update["participant"]["name"] == "Robert"

            muted = await api.mute_track("api", "alice", track_id, True)
            assert muted["muted"] is True
            told = await alice.next_event("track_muted", timeout=5)
            assert told == {"type": "track_muted", "participantId": alice.participant_id, "trackId": track_id, "by": "server"}

            assert await api.send_data("api", "from the backend", to=["bob"], topic="notice") == 1
            message = await asyncio.wait_for(bob.data.get(), 5)
            assert (message.from_id, message.data, message.topic) == ("server", "from the backend", "notice")
            assert alice.data.empty()

            await api.remove_participant("api", "bob")
            assert (await bob.next_event("removed", timeout=5))["reason"] == "removed"
            await alice.wait_until(lambda: not alice.participants, timeout=5)

            await api.delete_room("api")
            assert (await alice.next_event("removed", timeout=5))["reason"] == "room_deleted"
            assert "api" not in [r["name"] for r in await api.list_rooms()]
    finally:
        await api.close()
        await asyncio.gather(*(c.close() for c in clients))


async def test_server_api_errors(keyed: ServerProcess) -> None:
    api = ServerApi(keyed.http_url, KEY, SECRET)
    wrong = ServerApi(keyed.http_url, "APInobody", SECRET)
    client = await joined(keyed, "err", "someone")
    try:
        for call, status, code in [
            (api.get_participant("nowhere", "x"), 404, "not_found"),
            (api.get_participant("err", "nobody"), 404, "not_found"),
            (api.mute_track("err", "someone", "TR_nothing", True), 404, "not_found"),
            (api.create_room("bad name!"), 400, "bad_request"),
            (api.update_participant("err", "someone", permissions={"canFly": True}), 400, "bad_request"),
            (wrong.list_rooms(), 401, "unauthorized"),
        ]:
            with pytest.raises(ServerApiError) as err:
                await call
            assert (err.value.status, err.value.code) == (status, code)
        # A token with too little: a participant's own token on the admin endpoints.
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token('err', 'someone')}"}
            for method, path in [("GET", "/api/rooms"), ("GET", "/api/rooms/err/participants"),
                                 ("DELETE", "/api/rooms/err"), ("GET", "/admin/rooms")]:
                async with http.request(method, keyed.http_url + path, headers=headers) as response:
                    assert response.status == 403, (method, path, await response.text())
                    assert (await response.json())["error"] == "forbidden"
            async with http.get(keyed.http_url + "/api/rooms") as response:
                assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
            for path in ("/api/rooms", "/admin/rooms"):  # a token that is not ASCII: refused, not a 500
                async with http.get(keyed.http_url + path, headers={"Authorization": "Bearer \xed\xa0\x80\xff"}) as response:
                    assert response.status == 401, (path, response.status)
            async with http.get(keyed.http_url + "/dev/token?room=r&name=n") as response:
                assert response.status == 404  # development mode only
            async with http.post(keyed.http_url + "/api/rooms", data=b"[" * 5000,
                                 headers={"Authorization": f"Bearer {api.token(VideoGrant(room_create=True))}"}) as response:
                assert response.status == 400 and json.loads(await response.text())["error"] == "bad_request"
    finally:
        await asyncio.gather(api.close(), wrong.close(), client.close())


# -- webhooks from a real server ---------------------------------------------------------


async def test_the_server_sends_signed_webhooks_in_order(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """A server with ``--webhook``: a room's life reaches a receiver that verifies every
    signature with the server's keys, in order, though the first attempt of each fails."""
    keys = {KEY: SECRET, OTHER_KEY: OTHER_SECRET}
    attempts: dict[str, int] = {}
    accepted: list[dict] = []
    bad: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = verify_webhook(body, request.headers.get("Authorization"), keys)
        except WebhookVerificationError as exc:
            bad.append(str(exc))
            return web.Response(status=401)
        attempts[event["id"]] = attempts.get(event["id"], 0) + 1
        if attempts[event["id"]] == 1:
            return web.Response(status=503)  # retried with backoff
        accepted.append(event)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    server = start_server("--config", str(config_file(tmp_path)), "--webhook", f"http://127.0.0.1:{port}/hooks")
    expected = ["room_started", "participant_joined", "track_published", "track_unpublished", "participant_left", "room_finished"]
    try:
        async with asyncio.timeout(TIMEOUT):
            alice = await joined(server, "hooked", "alice")
            (track_id,) = await alice.publish([PreEncodedAudioTrack()], ["microphone"])
            await alice.unpublish(track_id)
            await alice.leave()
            await alice.close()
            while len(accepted) < len(expected):
                await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    assert [e["event"] for e in accepted] == expected and not bad
    assert all(e["room"]["name"] == "hooked" for e in accepted)
    assert accepted[1]["participant"]["identity"] == "alice"
    assert accepted[2]["track"] == {"sid": track_id, "type": "AUDIO", "source": "MICROPHONE", "mimeType": "audio/opus",
                                    "muted": False, "simulcast": False}
    assert all(attempts[e["id"]] == 2 for e in accepted)
    metrics = server.metrics()
    assert metrics['sfu_webhooks_delivered_total{event="room_started"}'] == 1
    assert sum(v for k, v in metrics.items() if k.startswith("sfu_webhooks_retries_total")) == len(expected)


# -- what a hostile or stale client might try ---------------------------------------------


async def _raw_offer(server: ServerProcess, join_token: str, tracks: dict) -> dict:
    """Join over a raw WebSocket and send an offer of one sendonly audio m-line with
    the given ``tracks`` map; the server's reply."""
    from aiortc import RTCPeerConnection

    from loadtest.media import PreEncodedAudioTrack as Audio

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(Audio(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
            await ws.send_json({"type": "join", "token": join_token})
            assert (await ws.receive_json(timeout=5))["type"] == "joined"
            await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp, "tracks": tracks})
            while True:
                reply = await ws.receive_json(timeout=10)
                if reply["type"] in ("answer", "error"):
                    return reply
    finally:
        await pc.close()


async def test_an_unbound_m_line_cannot_publish_past_the_grant(keyed: ServerProcess) -> None:
    """The grant is checked on what an offer would really publish: an m-line the client
    sends on is published even when the ``tracks`` map does not name it."""
    refused = await _raw_offer(keyed, token("raw", "mute", can_publish=False), {})
    assert (refused["type"], refused.get("code")) == ("error", "forbidden")
    camera_only = token("raw", "cam", can_publish_sources=("camera",))
    assert (await _raw_offer(keyed, camera_only, {}))["code"] == "forbidden"  # audio defaults to microphone
    bound = await _raw_offer(keyed, camera_only, {"0": {"publish": {"source": "camera"}}})
    assert bound["type"] == "answer"  # an application may call its audio what it likes, within the grant


async def test_revoked_subscribe_and_server_mute_last(keyed: ServerProcess) -> None:
    clients: list[RoomClient] = []
    api = ServerApi(keyed.http_url, KEY, SECRET)
    try:
        async with asyncio.timeout(TIMEOUT):
            publisher = await joined(keyed, "stale", "pub")
            subscriber = await joined(keyed, "stale", "sub", count_rtp=True)
            clients += [publisher, subscriber]
            audio_id, video_id = await publisher.publish([PreEncodedAudioTrack(), PreEncodedVideoTrack()], ["microphone", "camera"])
            await subscriber.wait_until(lambda: len(subscriber.subscriptions) == 2, timeout=15)
            await api.update_participant("stale", "sub", permissions={"canSubscribe": False})
            await subscriber.next_event("permissions_changed", timeout=5)
            await subscriber.wait_until(lambda: not subscriber.subscriptions, timeout=5)
            # Its next offer (publishing something) neither subscribes again nor is refused.
            await subscriber.publish([PreEncodedAudioTrack()], ["microphone"])
            people = {p["identity"]: p for p in await api.list_participants("stale")}
            assert people["sub"]["tracks"] and not (await api.get_participant("stale", "sub"))["permissions"]["canSubscribe"]
            with pytest.raises(RoomError) as err:
                await subscriber.subscribe([video_id])
            assert err.value.code == "forbidden"

            # A track the server muted stays muted whatever its publisher says.
            await api.mute_track("stale", "pub", audio_id, True)
            await publisher.mute(audio_id, False)
            error = await publisher.next_event("error", timeout=5)
            assert (error["code"], error["requestType"]) == ("forbidden", "mute")
            assert (await api.get_participant("stale", "pub"))["tracks"][0]["muted"] is True
    finally:
        await api.close()
        await asyncio.gather(*(c.close() for c in clients))


async def test_removing_the_last_participant_finishes_the_room(keyed: ServerProcess) -> None:
    api = ServerApi(keyed.http_url, KEY, SECRET)
    client = await joined(keyed, "lonely", "only")
    try:
        await api.remove_participant("lonely", "only")
        assert "lonely" not in [r["name"] for r in await api.list_rooms()]
    finally:
        await asyncio.gather(api.close(), client.close())


async def test_the_token_in_the_websocket_url(keyed: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{keyed.ws_url}?access_token={token('url', 'carol')}") as ws:
            await ws.send_json({"type": "join"})
            joined_reply = await ws.receive_json(timeout=5)
            assert (joined_reply["type"], joined_reply["room"], joined_reply["identity"]) == ("joined", "url", "carol")
        async with http.ws_connect(keyed.ws_url) as ws:
            await ws.send_json({"type": "join", "room": "url", "name": "Nobody"})
            assert (await ws.receive_json(timeout=5))["code"] == "invalid_token"


async def test_whip_and_whep_take_bearer_tokens(keyed: ServerProcess) -> None:
    """RFC 9725 §4.5: WHIP needs canPublish, WHEP canSubscribe, both roomJoin of the room."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(PreEncodedAudioTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
    finally:
        await pc.close()
    url = f"{keyed.http_url}/whip/ingest"
    async with aiohttp.ClientSession() as http:

        async def post(endpoint: str, bearer: str | None) -> aiohttp.ClientResponse:
            headers = {"Content-Type": "application/sdp"}
            if bearer is not None:
                headers["Authorization"] = f"Bearer {bearer}"
            async with http.post(endpoint, data=offer, headers=headers) as response:
                await response.read()
                return response

        unauthorized = await post(url, None)
        assert unauthorized.status == 401 and unauthorized.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await post(url, "garbage")).status == 401
        assert (await post(url, token("ingest", "obs", can_publish=False))).status == 403
        assert (await post(url, token("elsewhere", "obs"))).status == 403
        created = await post(url, token("ingest", "obs"))
        assert created.status == 201, created.status
        async with http.delete(f"{keyed.http_url}{created.headers['Location']}") as response:
            assert response.status == 200
        whep = f"{keyed.http_url}/whep/ingest"
        assert (await post(whep, token("ingest", "viewer", can_subscribe=False))).status == 403
