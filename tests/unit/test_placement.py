"""LocalPlacement (signaling/placement.py): rooms placed between two load reports
spread over the workers; a worker's reported participants weigh; a dead worker's rooms
are placed again; a room its worker stopped reporting is forgotten after the claim time."""

from __future__ import annotations

import asyncio

import pytest

from signaling.placement import LocalPlacement, NoWorker, WorkerLoad


async def test_rooms_placed_between_reports_spread_and_stick():
    placement = LocalPlacement()
    await placement.report([WorkerLoad("http://a"), WorkerLoad("http://b")])
    urls = [await placement.place(f"r{i}") for i in range(6)]
    assert sorted(urls.count(u) for u in ("http://a", "http://b")) == [3, 3]
    assert [await placement.place(f"r{i}") for i in range(6)] == urls  # a room stays where it is


async def test_reported_participants_weigh_more_than_room_counts():
    placement = LocalPlacement()
    await placement.report([WorkerLoad("http://a", participants=40, rooms=["big"]),
                            WorkerLoad("http://b", participants=3, rooms=["s1", "s2"])])
    assert await placement.place("new") == "http://b"


async def test_a_dead_workers_rooms_are_placed_again():
    placement = LocalPlacement()
    await placement.report([WorkerLoad("http://a", rooms=["r"]), WorkerLoad("http://b", participants=5)])
    assert await placement.lookup("r") == "http://a"
    await placement.forget_worker("http://a")
    assert await placement.lookup("r") is None
    assert await placement.place("r") == "http://b"
    await placement.forget_worker("http://b")
    with pytest.raises(NoWorker):
        await placement.place("other")


async def test_a_room_no_longer_reported_is_forgotten_after_the_claim_time():
    placement = LocalPlacement(claim_s=0.05)
    await placement.report([WorkerLoad("http://a", rooms=["r"])])
    await asyncio.sleep(0.1)
    await placement.report([WorkerLoad("http://a", rooms=[])])
    assert await placement.lookup("r") is None
