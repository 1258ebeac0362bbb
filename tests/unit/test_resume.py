"""Keeping a vanished participant's place and resuming it (RoomRegistry.suspend and
resume, Participant.adopt), with real Participants answering aiortc offers (no network)
and a short grace period on the event loop's clock: the others hear nothing while it is
away; a resumed participant keeps its id and its tracks' ids, the subscribers'
DownTracks move to what it publishes again; what it does not publish again is
unpublished after the grace period; a wrong key or identity resumes nothing."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

from sfu.room import RoomRegistry
from sfu.rtc.adapter import set_ice_addresses


async def offer(kinds: list[str], direction: str = "sendonly") -> str:
    pc = RTCPeerConnection()
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def setup(grace: float = 0.3):
    set_ice_addresses(["127.0.0.1"])
    registry = RoomRegistry(reconnect_grace=grace)
    seen: list[dict] = []
    room, watcher = registry.join("r", "watcher", seen.append, identity="w")
    _, pub = registry.join("r", "pub", lambda e: None, identity="alice")
    _, _tracks, published = await pub.handle_offer(
        await offer(["audio", "video"]), {"0": {"publish": {"source": "microphone"}}, "1": {"publish": {"source": "camera"}}}
    )
    ids = {up.kind: up.id for up in published}
    sub_offer = await offer(["audio", "video"], "recvonly")
    await watcher.handle_offer(sub_offer, {"0": {"subscribe": ids["audio"]}, "1": {"subscribe": ids["video"]}})
    assert len(watcher.downtracks) == 2
    seen.clear()
    return registry, room, watcher, pub, ids, seen


async def test_resume_keeps_ids_and_moves_the_subscribers_to_the_new_tracks():
    registry, room, watcher, pub, ids, seen = await setup()
    try:
        pub.was_connected = True
        assert registry.suspend(room, pub)
        resumed = registry.resume("r", pub.id, pub.resume_key, "alice", lambda e: None)
        assert resumed is not None
        _, new = resumed
        assert new is not pub and new.id == pub.id and room.participants[pub.id] is new
        assert pub.suspend_timer is None
        # Before it publishes again, its tracks are still listed (a late joiner sees them).
        assert {t["id"] for t in new.describe()["tracks"]} == set(ids.values())
        # The camera comes back under the id it had; the microphone does not come back.
        _, tracks, published = await new.handle_offer(await offer(["video"]), {"0": {"publish": {"source": "camera"}}})
        assert tracks["0"]["trackId"] == ids["video"] and published == []  # nothing new to announce
        video_dt = next(dt for dt in watcher.downtracks.values() if dt.kind == "video")
        assert video_dt.uptrack is new.uptracks[ids["video"]]
        await asyncio.sleep(0.5)  # past the grace period
        assert [e["type"] for e in seen] == ["track_unpublished"] and seen[0]["trackId"] == ids["audio"]
        assert [dt.kind for dt in watcher.downtracks.values()] == ["video"]
        await asyncio.sleep(0.1)
        assert pub.closed
    finally:
        await registry.close()


async def test_away_past_the_grace_period_is_a_leave():
    registry, room, watcher, pub, _ids, seen = await setup(grace=0.2)
    try:
        pub.was_connected = True
        assert registry.suspend(room, pub)
        await asyncio.sleep(0.1)
        assert seen == [] and pub.id in room.participants
        await asyncio.sleep(0.3)
        assert [e["type"] for e in seen] == ["participant_left"]
        assert pub.id not in room.participants and not watcher.downtracks
        assert registry.resume("r", pub.id, pub.resume_key, "alice", lambda e: None) is None
    finally:
        await registry.close()


async def test_a_participant_that_never_connected_is_not_kept():
    registry, room, _, pub, _, _ = await setup()
    try:
        assert not registry.suspend(room, pub)
        assert pub.suspend_timer is None
    finally:
        await registry.close()


async def test_a_wrong_key_or_identity_resumes_nothing():
    registry, room, _, pub, _, seen = await setup()
    try:
        pub.was_connected = True
        registry.suspend(room, pub)
        assert registry.resume("r", pub.id, "x" * 22, "alice", lambda e: None) is None
        assert registry.resume("r", pub.id, "ключ\udc80", "alice", lambda e: None) is None  # not ASCII
        assert registry.resume("r", pub.id, pub.resume_key, "mallory", lambda e: None) is None
        assert registry.resume("other", pub.id, pub.resume_key, "alice", lambda e: None) is None
        assert room.participants[pub.id] is pub and seen == []
        # Without a token (development mode) the key alone is the proof.
        assert registry.resume("r", pub.id, pub.resume_key, None, lambda e: None) is not None
    finally:
        await registry.close()
