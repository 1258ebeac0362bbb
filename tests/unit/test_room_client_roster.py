"""The bot client's roster (loadtest.client.RoomClient) with messages fed as the reader
task would: a track published by another participant right after our join, while
join() has not resumed yet, is not lost."""

from __future__ import annotations

import asyncio

from loadtest.client import RoomClient
from loadtest.reconnect import Backoff


async def test_a_track_published_right_after_the_join_reply_is_kept():
    client = RoomClient("ws://127.0.0.1:9/ws", auto_subscribe=False)
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    client._pending["join"] = future
    joined = {"type": "joined", "room": "r", "participantId": "PA_me", "resumeKey": "k",
              "participants": [{"id": "PA_bob", "name": "Bob", "tracks": []}]}
    published = {"type": "track_published", "participantId": "PA_bob",
                 "track": {"id": "TR_1", "kind": "video", "source": "camera", "muted": False}}
    client._dispatch(joined)
    client._dispatch(published)  # before the coroutine waiting for the reply runs again
    assert future.result() is joined
    assert list(client.participants["PA_bob"].tracks) == ["TR_1"]


def test_backoff_doubles_up_to_its_limit():
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
