"""Where rooms live: the room -> worker map of a multi-worker server or a cluster.

A room is the unit of placement (as in mediasoup, LiveKit, Janus): all its participants
are on one worker process, whose media sockets they reach directly; the front
(:mod:`signaling.router`) that accepts a participant's WebSocket looks the room up
here and relays the signaling to that worker. A new room goes to the least-loaded live
worker (participants, then rooms, then forwarded packets/s, as each worker reports).

:class:`Placement` is the seam with two implementations: :class:`LocalPlacement`, in
memory, for the workers of one machine (the embedded default: nothing else to run), and
:class:`signaling.redis_placement.RedisPlacement`, a map shared by every node of a
cluster through Redis.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["ROOM_CLAIM_S", "LocalPlacement", "NoWorker", "Placement", "WorkerLoad", "least_loaded"]

ROOM_CLAIM_S = 30.0  # a room placed but not reported by its worker yet keeps its place this long


class NoWorker(RuntimeError):
    """No live worker can take a room."""


@dataclass(slots=True)
class WorkerLoad:
    """One worker as it last reported itself.

    Attributes:
        url: its base URL, e.g. ``http://127.0.0.1:9001`` (the front relays to it).
        node: the id of the node (machine) it runs on.
        participants: participants it holds.
        rooms: the names of the rooms it holds.
        packets_per_s: RTP packets it forwarded per second lately.
        reported_at: ``time.monotonic()`` of the report (local placement) or Unix
            seconds (Redis).
    """

    url: str
    node: str = "local"
    participants: int = 0
    rooms: list[str] = field(default_factory=list)
    packets_per_s: float = 0.0
    reported_at: float = 0.0


PENDING_ROOM_WEIGHT = 2  # participants a room given to a worker but not reported yet is expected to bring


def least_loaded(workers: list[WorkerLoad], placed: dict[str, int]) -> WorkerLoad:
    """The worker to give a new room: the fewest participants, counting each room given
    to it that it has not reported yet (``placed`` minus its reported rooms: the
    reports are up to a second old, and rooms placed in between must not all land on
    one worker) as ``PENDING_ROOM_WEIGHT`` participants; then the fewest rooms; then
    the fewest packets/s.

    Raises:
        NoWorker: ``workers`` is empty.
    """
    if not workers:
        raise NoWorker("no live worker")

    def load(w: WorkerLoad) -> tuple[int, int, float, str]:
        rooms = max(len(w.rooms), placed.get(w.url, 0))
        return (w.participants + PENDING_ROOM_WEIGHT * (rooms - len(w.rooms)), rooms, w.packets_per_s, w.url)

    return min(workers, key=load)


class Placement(Protocol):
    """The room -> worker map (see the module docstring)."""

    async def place(self, room: str) -> str:
        """The URL of the worker that holds ``room``; a new room is claimed for the
        least-loaded live worker, atomically (two fronts placing the same new room at
        once get the same worker).

        Raises:
            NoWorker: no live worker.
        """
        ...

    async def lookup(self, room: str) -> str | None:
        """The URL of the worker that holds ``room``, or None."""
        ...

    async def workers(self) -> list[WorkerLoad]:
        """Every live worker (of every node)."""
        ...

    async def report(self, loads: list[WorkerLoad]) -> None:
        """This node's live workers as they report themselves now (called every second
        or so): their load, and the rooms they hold (kept placed)."""
        ...

    async def forget_worker(self, url: str) -> None:
        """The worker at ``url`` died: it is not live any more and its rooms are free
        (their participants reconnect and the rooms are placed again)."""
        ...

    async def close(self) -> None:
        """Release what this node holds (it is stopping)."""
        ...


class LocalPlacement:
    """:class:`Placement` in memory, for the workers of this machine.

    Args:
        claim_s: how long a room placed but not yet reported by its worker keeps
            its place (its first participant is still joining).
    """

    def __init__(self, claim_s: float = ROOM_CLAIM_S) -> None:
        self.claim_s = claim_s
        self._workers: dict[str, WorkerLoad] = {}
        self._rooms: dict[str, tuple[str, float]] = {}  # room -> (worker url, placed at, monotonic s)
        self._lock = asyncio.Lock()

    async def place(self, room: str) -> str:
        async with self._lock:
            entry = self._rooms.get(room)
            if entry is not None and entry[0] in self._workers:
                return entry[0]
            placed: dict[str, int] = {}
            for url, _ in self._rooms.values():
                placed[url] = placed.get(url, 0) + 1
            worker = least_loaded(list(self._workers.values()), placed)
            self._rooms[room] = (worker.url, time.monotonic())
            return worker.url

    async def lookup(self, room: str) -> str | None:
        entry = self._rooms.get(room)
        return entry[0] if entry is not None and entry[0] in self._workers else None

    async def workers(self) -> list[WorkerLoad]:
        return list(self._workers.values())

    async def report(self, loads: list[WorkerLoad]) -> None:
        async with self._lock:
            now = time.monotonic()
            for load in loads:
                load.reported_at = now
                self._workers[load.url] = load
                for room in load.rooms:
                    self._rooms[room] = (load.url, now)
            reported = {load.url: set(load.rooms) for load in loads}
            for room, (url, at) in list(self._rooms.items()):
                if url in reported and room not in reported[url] and now - at > self.claim_s:
                    del self._rooms[room]  # the room ended on its worker

    async def forget_worker(self, url: str) -> None:
        async with self._lock:
            self._workers.pop(url, None)
            for room, (owner, _) in list(self._rooms.items()):
                if owner == url:
                    del self._rooms[room]

    async def close(self) -> None:
        self._workers.clear()
        self._rooms.clear()

    def rooms(self) -> dict[str, str]:
        """room -> worker URL, as placed now (for tests and /healthz)."""
        return {room: url for room, (url, _) in self._rooms.items()}
