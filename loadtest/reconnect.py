"""Reconnection of a :class:`~loadtest.client.RoomClient` (docs/PROTOCOL.md "Reconnection").

When its WebSocket drops (or stops answering the 5 s pings) or its PeerConnection
fails, the client closes both, then tries again with exponential backoff
(:class:`Backoff`: 0.5 s doubling to 5 s, for ``reconnect_timeout`` seconds): a new
WebSocket, ``join`` with ``resume`` (its participant id and resume key, and the same
token), a new PeerConnection, its tracks published again (naming their previous ids,
so subscribers keep them), its DataChannels opened again and the room subscribed to
again. It tells the caller through ``client.events``: ``reconnecting`` (with the
reason), ``reconnected`` (``resumed``: whether the server kept its place) or, when it
gives up, ``disconnected``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from .roster import RoomError

if TYPE_CHECKING:
    from .client import RoomClient

__all__ = ["PING_INTERVAL_S", "RECONNECT_CLOSE_CODE", "Backoff", "reconnect"]

logger = logging.getLogger("loadtest.client")

RECONNECT_CLOSE_CODE = 4000  # closing a WebSocket to reconnect: the server keeps our place (not 1000)
PING_INTERVAL_S = 5.0  # WebSocket ping interval; no pong within half of it closes the connection
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0
# Refusals that another attempt cannot change.
FINAL_CODES = frozenset({"invalid_token", "forbidden", "invalid_room", "bad_message"})


class Backoff:
    """Delays between reconnection attempts: ``first`` seconds, doubling up to ``limit``.

    Args:
        first: the first delay, seconds.
        limit: the largest delay, seconds.
    """

    def __init__(self, first: float = FIRST_DELAY_S, limit: float = MAX_DELAY_S) -> None:
        self.first = first
        self.limit = limit
        self._next = first

    def next(self) -> float:
        """The delay before the next attempt, seconds."""
        delay = self._next
        self._next = min(self.limit, delay * 2)
        return delay


async def reconnect(client: RoomClient, reason: str) -> None:
    """Reconnect ``client`` (see the module docstring); on giving up, the client is
    closed with ``client.ended == "disconnected"``."""
    client.events.put_nowait({"type": "reconnecting", "reason": reason})
    client._notify()
    logger.info("participant %s: %s; reconnecting", client.participant_id, reason)
    published = list(client.published.values())
    for p in published:
        # Detach the local tracks first: aiortc stops the track of a sender it stops.
        p.transceiver.sender.replaceTrack(None)
    await client._drop_connection(RECONNECT_CLOSE_CODE)
    client._ws = None
    client.pc = None
    client.published.clear()
    client.subscriptions.clear()
    client.channels.clear()
    client._wanted.clear()
    client._stale.clear()
    client._sctp_negotiated = False
    client._tap_rebundled = False
    assert client._join_message is not None
    message: dict[str, Any] = dict(client._join_message)
    if client.participant_id is not None and client.resume_key is not None:
        message["resume"] = {"participantId": client.participant_id, "key": client.resume_key}
    backoff = Backoff()
    deadline = time.monotonic() + client.reconnect_timeout
    while True:
        try:
            await client._connect()
            reply = await client._request(message)
            break
        except (OSError, aiohttp.ClientError, ConnectionError, TimeoutError, RoomError) as exc:
            await client._drop_connection(RECONNECT_CLOSE_CODE)
            client._ws = None
            delay = backoff.next()
            if isinstance(exc, RoomError) and exc.code in FINAL_CODES or time.monotonic() + delay > deadline:
                logger.warning("participant %s: reconnection given up: %s", client.participant_id, exc)
                client.ended = "disconnected"
                client.events.put_nowait({"type": "disconnected", "reason": str(exc)})
                client._notify()
                return
            await asyncio.sleep(delay)
    resumed = bool(reply.get("resumed"))
    await client._on_joined(reply)
    if published:
        try:
            await client.publish(
                [p.track for p in published], [p.source for p in published], previous_ids=[p.track_id for p in published]
            )
        except (RoomError, ConnectionError, TimeoutError) as exc:
            logger.warning("participant %s: publishing again failed: %s", client.participant_id, exc)
    client.reconnects += 1
    client.events.put_nowait({"type": "reconnected", "resumed": resumed})
    client._notify()
