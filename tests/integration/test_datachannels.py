"""DataChannel fan-out through a real server (docs/PROTOCOL.md, "DataChannels").

aiortc bots in this process (and, for a receiver that stops reading, one bot in a
subprocess that is SIGSTOPped) talk to a server subprocess on 127.0.0.1. Every test
is bounded in time by ``asyncio.timeout``; every process started here is ended by its
pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import uvloop

from loadtest.client import RoomClient
from loadtest.data import (
    BINARY_HEADER_LENGTH,
    MAX_ENVELOPE_BYTES,
    MAX_TOPIC_CHARS,
    ChannelSpec,
    DataMessage,
)
from loadtest.server import REPO_ROOT, ServerProcess
from sfu.datachannel import LOSSY_BUFFER_BYTES, RELIABLE_BUFFER_BYTES

TEST_TIMEOUT = 60.0  # seconds, an upper bound for any one test's asyncio part
CHAT = ChannelSpec("chat")  # reliable, ordered
STATE = ChannelSpec("state", ordered=False, max_retransmits=0)  # lossy
MIB = 1024 * 1024


# --------------------------------------------------------------------- helpers


async def join_all(
    server: ServerProcess, room: str, count: int, channels: Sequence[ChannelSpec] = (CHAT,)
) -> list[RoomClient]:
    """``count`` data-only clients in ``room``, joined one after the other (so each
    sees the earlier ones), with ``channels`` open; each knows all the others."""
    clients = [RoomClient(server.ws_url, channels=channels) for _ in range(count)]
    for i, client in enumerate(clients):
        await client.join(room, f"P{i}")
    for client in clients:
        await client.wait_until(lambda c=client: len(c.participants) == count - 1)
    return clients


async def close_all(clients: Sequence[RoomClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def receive(client: RoomClient, count: int, timeout: float = 10.0) -> list[DataMessage]:
    """The next ``count`` messages from ``client.data``.

    Raises:
        TimeoutError: fewer arrived within ``timeout`` seconds (the message says how many).
    """
    messages: list[DataMessage] = []
    try:
        async with asyncio.timeout(timeout):
            while len(messages) < count:
                messages.append(await client.data.get())
    except TimeoutError:
        raise TimeoutError(f"received {len(messages)} of {count} messages in {timeout} s: {messages[-3:]}") from None
    return messages


async def assert_silent(client: RoomClient, quiet: float = 0.5) -> None:
    """Nothing more arrives at ``client`` within ``quiet`` seconds."""
    await asyncio.sleep(quiet)
    assert client.data.empty(), f"unexpected message: {client.data.get_nowait()}"


def dropped(samples: dict[str, float], reason: str) -> float:
    return samples.get(f'sfu_datachannel_messages_dropped_total{{reason="{reason}"}}', 0.0)


def sequence_number(message: DataMessage) -> int:
    """The number a test put at the start of a message (text ``"17 ..."`` or binary
    4 bytes big-endian)."""
    if isinstance(message.data, str):
        return int(message.data.split(" ", 1)[0])
    return int.from_bytes(message.data[:4], "big")


async def pump(
    client: RoomClient, label: str, first: int, count: int, rate: float, size: int
) -> tuple[float, float]:
    """Send text messages ``first`` .. ``first + count - 1`` (``"<n> xxx..."``,
    ``size`` bytes of data) on ``label`` at ``rate`` messages/s, paced every 10 ms.

    Returns:
        (start, end): ``time.monotonic()`` at the first send and just after the last.
    """
    start = time.monotonic()
    sent = 0
    while sent < count:
        due = min(count, 1 + int((time.monotonic() - start) * rate))
        while sent < due:
            head = f"{first + sent} "
            client.send_data(label, head + "x" * (size - len(head)))
            sent += 1
        await asyncio.sleep(0.01)
    return start, time.monotonic()


# ---------------------------------------------------------- fan-out semantics


async def test_three_participants_each_send_1000_reliable_messages_in_order_exactly_once(
    server: ServerProcess,
) -> None:
    """Text and binary interleaved on one reliable channel: every other participant
    receives all 2,000 messages of the two others, each sender's in its order, with
    the server-set sender id, and nothing of its own."""
    count = 1000
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            clients = await join_all(server, "fanout", 3)
            for sender in clients:
                for i in range(count):
                    if i % 2:
                        sender.send_data("chat", i.to_bytes(4, "big") + bytes(range(256)))
                    else:
                        sender.send_data("chat", f"{i} héllo")
            received = await asyncio.gather(*(receive(c, 2 * count, timeout=30) for c in clients))
            await asyncio.gather(*(assert_silent(c) for c in clients))
    finally:
        await close_all(clients)
    ids = [c.participant_id for c in clients]
    for me, messages in zip(ids, received, strict=True):
        by_sender: dict[str, list[int]] = {}
        for message in messages:
            assert message.label == "chat"
            assert message.topic is None
            n = sequence_number(message)
            if n % 2:
                assert message.data == n.to_bytes(4, "big") + bytes(range(256))
            else:
                assert message.data == f"{n} héllo"
            by_sender.setdefault(message.from_id, []).append(n)
        assert set(by_sender) == set(ids) - {me}
        for sequence in by_sender.values():
            assert sequence == list(range(count))
    assert all(c.bad_envelopes == 0 for c in clients)


async def test_room_with_datachannels_and_no_media(server: ServerProcess) -> None:
    """A participant with only DataChannels negotiates an offer with a single
    ``m=application`` section; channels opened later (in-band) and channels the
    server opens towards a receiver work both ways, with the sender's reliability."""
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            clients = await join_all(server, "nomedia", 2)
            alice, bob = clients
            assert alice.pc is not None and bob.pc is not None
            for client in clients:
                for description in (client.pc.localDescription, client.pc.remoteDescription):
                    m_lines = [line for line in description.sdp.splitlines() if line.startswith("m=")]
                    assert len(m_lines) == 1 and m_lines[0].startswith("m=application "), m_lines
            assert not alice.pc.getTransceivers()

            # A second channel, lossy, opened by Alice after the first offer (no new offer).
            await alice.open_channel("state", ordered=False, max_retransmits=0)
            alice.send_data("state", "s0")
            (first,) = await receive(bob, 1)
            opened = bob.channels["state"]  # opened by the server: Bob never asked for it
            assert (opened.ordered, opened.maxRetransmits, opened.maxPacketLifeTime) == (False, 0, None)
            assert (first.label, first.from_id, first.data) == ("state", alice.participant_id, "s0")

            bob.send_data("state", "back")  # Bob answers on the channel the server opened
            (back,) = await receive(alice, 1)
            assert (back.label, back.from_id, back.data) == ("state", bob.participant_id, "back")
            assert alice.channels["state"].readyState == "open"
    finally:
        await close_all(clients)


async def test_messages_to_named_participants_reach_only_them_and_from_cannot_be_forged(
    server: ServerProcess,
) -> None:
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            clients = await join_all(server, "targets", 4)
            alice, bob, carol, dave = clients
            b, c = bob.participant_id, carol.participant_id
            assert b is not None and c is not None
            alice.send_data("chat", "to bob", to=[b])
            alice.send_data("chat", b"to bob and carol", to=[b, c])
            alice.send_data("chat", "to carol and a stranger", to=["PA_00000000", c])
            alice.send_data("chat", "to nobody", to=[])
            alice.send_raw("chat", json.dumps({"data": "forged text", "from": b}))
            header = json.dumps({"from": c, "to": [b]}).encode()
            alice.send_raw("chat", BINARY_HEADER_LENGTH.pack(len(header)) + header + b"forged binary")
            alice.send_data("chat", "to all")
            got = {
                name: await receive(client, n)
                for name, client, n in (("bob", bob, 5), ("carol", carol, 4), ("dave", dave, 2))
            }
            await asyncio.gather(*(assert_silent(client) for client in clients))
    finally:
        await close_all(clients)
    assert {m.from_id for ms in got.values() for m in ms} == {alice.participant_id}
    assert [m.data for m in got["bob"]] == [
        "to bob", b"to bob and carol", "forged text", b"forged binary", "to all"
    ]
    assert [m.data for m in got["carol"]] == [b"to bob and carol", "to carol and a stranger", "forged text", "to all"]
    assert [m.data for m in got["dave"]] == ["forged text", "to all"]


async def test_topics_pass_through(server: ServerProcess) -> None:
    clients: list[RoomClient] = []
    longest = "t" * MAX_TOPIC_CHARS
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            clients = await join_all(server, "topics", 2)
            alice, bob = clients
            alice.send_data("chat", "cursor", topic="cursors")
            alice.send_data("chat", b"\x00chunk", topic="files")
            alice.send_data("chat", "plain")
            alice.send_data("chat", "long", topic=longest)
            alice.send_data("chat", "targeted", to=[bob.participant_id or ""], topic="dm")
            messages = await receive(bob, 5)
    finally:
        await close_all(clients)
    assert [(m.data, m.topic) for m in messages] == [
        ("cursor", "cursors"), (b"\x00chunk", "files"), ("plain", None), ("long", longest), ("targeted", "dm")
    ]


def _text_of_size(size: int) -> str:
    """A text envelope of exactly ``size`` bytes."""
    envelope = json.dumps({"data": ""}, separators=(",", ":"))
    return json.dumps({"data": "x" * (size - len(envelope))}, separators=(",", ":"))


def _binary_of_size(size: int) -> bytes:
    """A binary envelope (no header) of exactly ``size`` bytes."""
    return BINARY_HEADER_LENGTH.pack(0) + b"\xab" * (size - BINARY_HEADER_LENGTH.size)


REFUSED: list[tuple[str, str | bytes, str]] = [
    ("text one byte over the limit", _text_of_size(MAX_ENVELOPE_BYTES + 1), "data_too_large"),
    ("binary one byte over the limit", _binary_of_size(MAX_ENVELOPE_BYTES + 1), "data_too_large"),
    ("binary at aiortc's maximum", _binary_of_size(65_536), "data_too_large"),
    ("text that is not JSON", "hello", "bad_data"),
    ("text JSON that is not an object", "[1, 2]", "bad_data"),
    ("text 'to' that is not a list", json.dumps({"data": "x", "to": "PA_00000000"}), "bad_data"),
    ("text topic too long", json.dumps({"data": "x", "topic": "t" * (MAX_TOPIC_CHARS + 1)}), "bad_data"),
    ("text topic that is not a string", json.dumps({"data": "x", "topic": 7}), "bad_data"),
    ("binary of one byte", b"\x00", "bad_data"),
    ("binary header length past the end", BINARY_HEADER_LENGTH.pack(100) + b'{"topic":"t"}', "bad_data"),
    ("binary header that is not JSON", BINARY_HEADER_LENGTH.pack(3) + b"{{{payload", "bad_data"),
    ("binary header that is not an object", BINARY_HEADER_LENGTH.pack(2) + b"[]payload", "bad_data"),
    ("text nested 5,000 deep", "[" * 5000, "bad_data"),
    ("text 'to' nested 5,000 deep", '{"data": "x", "to": ' + "[" * 5000 + "]" * 5000 + "}", "bad_data"),
    ("binary header nested 5,000 deep", BINARY_HEADER_LENGTH.pack(5000) + b"[" * 5000, "bad_data"),
]


async def test_oversized_and_malformed_envelopes_are_refused_and_the_channel_keeps_working(
    server: ServerProcess,
) -> None:
    """Each bad message gets an ``error`` naming the channel and is not delivered;
    the next good message is. Envelopes of exactly the limit are delivered."""
    clients: list[RoomClient] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            clients = await join_all(server, "refused", 2)
            alice, bob = clients
            for i, (case, message, code) in enumerate(REFUSED):
                alice.send_raw("chat", message)
                error = await alice.next_event("error", timeout=5)
                assert (error.get("code"), error.get("label")) == (code, "chat"), (case, error)
                alice.send_data("chat", f"after {i}")
                (after,) = await receive(bob, 1)
                assert after.data == f"after {i}", (case, after)

            alice.send_raw("chat", _text_of_size(MAX_ENVELOPE_BYTES))
            alice.send_raw("chat", _binary_of_size(MAX_ENVELOPE_BYTES))
            text, binary = await receive(bob, 2)
            assert alice.events.empty(), alice.events.get_nowait()
            assert await alice.ping() < 5.0  # the WebSocket is fine too
    finally:
        await close_all(clients)
    assert len(text.data) == MAX_ENVELOPE_BYTES - len('{"data":""}')
    assert binary.data == b"\xab" * (MAX_ENVELOPE_BYTES - BINARY_HEADER_LENGTH.size)


# ------------------------------------------------------- a receiver that stops

SLOW_BOT = """
import asyncio, json, sys
from loadtest.client import RoomClient
from loadtest.data import ChannelSpec

SPECS = {"chat": ChannelSpec("chat"), "state": ChannelSpec("state", ordered=False, max_retransmits=0)}


async def main() -> None:
    url, room, labels = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    received = {label: [] for label in labels}
    events = []
    client = RoomClient(url, channels=[SPECS[label] for label in labels],
                        on_data=lambda m: received[m.label].append(int(m.data.split(" ", 1)[0])))
    await client.join(room, "Slow")
    print(json.dumps({"id": client.participant_id}), flush=True)
    try:
        async with asyncio.timeout(120):
            while command := (await asyncio.to_thread(sys.stdin.readline)).split():
                if command[0] == "ping":
                    await client.ping()
                    reply = {}
                elif command[0] == "reopen":
                    await client.open_channel(SPECS[command[1]].label)
                    reply = {}
                else:  # report
                    while not client.events.empty():
                        events.append(client.events.get_nowait())
                    reply = {"received": received, "events": events, "open": sorted(client.channels)}
                print(json.dumps(reply), flush=True)
    finally:
        await client.leave()


asyncio.run(main())
"""


class SlowBot:
    """A receiving bot in a subprocess (``SLOW_BOT``) that the test can SIGSTOP.

    It joins with the given channels, records the number at the start of every
    message it receives, and answers line commands on stdin with one JSON line:
    ``ping`` (a WebSocket round trip), ``reopen LABEL``, ``report`` (the numbers
    received per label, every server event so far, the labels of open channels).
    """

    def __init__(self, server: ServerProcess, room: str, labels: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_BOT, server.ws_url, room, ",".join(labels)],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.participant_id = ""

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise ConnectionError(f"slow bot exited with {self.proc.wait(timeout=10)}")
        return json.loads(line)

    async def started(self) -> None:
        self.participant_id = (await self._line())["id"]

    async def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return await self._line()

    async def report_until(self, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Ask for a ``report`` every 0.5 s until ``done(report)``.

        Raises:
            TimeoutError: not done within ``timeout`` seconds (the message holds the
                last report's counts and events).
        """
        deadline = time.monotonic() + timeout
        while not done(report := await self.command("report")):
            if time.monotonic() > deadline:
                counts = {label: len(numbers) for label, numbers in report["received"].items()}
                raise TimeoutError(f"slow bot after {timeout} s: {counts}, {report['events']}, open {report['open']}")
            await asyncio.sleep(0.5)
        return report

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def end(self) -> None:
        """SIGCONT (a stopped process cannot exit), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


# The bot stays stopped for less than the server's WebSocket heartbeat allows (a ping
# 5 s after the last frame from the client, then 2.5 s for the pong): it sends a ping
# just before it stops.
WARM = 1.5  # seconds of traffic with every receiver reading
STOP = 5.0  # seconds of traffic while the slow bot is stopped
SIZE = 1000  # bytes of data per message (one SCTP chunk)
RESUME_TIMEOUT = 25.0  # seconds for the bot to catch up after SIGCONT (SCTP T3 backs off)
# The readers must get this share of the messages sent while the bot is stopped, in
# that window: a fan-out held up by the stopped receiver gives them next to nothing;
# the margin is for a shared, noisy machine.
RATE_KEPT = 0.6
LOSSY_BUFFER = LOSSY_BUFFER_BYTES  # bytes a lossy receiver channel may buffer on the server
RELIABLE_BUFFER = RELIABLE_BUFFER_BYTES  # bytes past which a reliable receiver channel is closed
SCTP_WINDOW = 1024 * 1024  # bytes aiortc's receiver window lets be in flight to the bot


@dataclass(slots=True)
class ServerSample:
    """The server's RSS (bytes) and DataChannel drop counters at ``time.monotonic()`` ``at``."""

    at: float
    rss: int
    buffer_full: float
    overflowed: float


async def sample_server(server: ServerProcess, samples: list[ServerSample], period: float = 0.25) -> None:
    """Append a :class:`ServerSample` every ``period`` seconds until cancelled."""
    process = psutil.Process(server.pid)
    while True:
        values = await asyncio.to_thread(server.metrics)
        samples.append(ServerSample(
            time.monotonic(), process.memory_info().rss, dropped(values, "buffer_full"), dropped(values, "overflowed")
        ))
        await asyncio.sleep(period)


def numbers(client: RoomClient, label: str) -> list[tuple[int, float]]:
    """(number, received_at) of every message ``client`` has queued on ``label``."""
    messages = []
    while not client.data.empty():
        messages.append(client.data.get_nowait())
    return [(sequence_number(m), m.received_at) for m in messages if m.label == label]


def received_between(received: list[tuple[int, float]], start: float, end: float) -> int:
    return sum(start <= at <= end for _, at in received)


def test_stopped_receiver_lossy_channel_drops_for_it_alone(server: ServerProcess) -> None:
    """A receiver that stops reading (SIGSTOP) while a lossy channel carries 1 MB/s:
    the server drops for it beyond the lossy buffer (``buffer_full``) and its RSS stays
    flat, the two other receivers keep the full rate, and a reliable channel beside it
    loses nothing: the stopped receiver gets every reliable message in order on SIGCONT.

    Runs on uvloop (its own loop): one Python process then carries the sender and
    both reading receivers at this rate through aiortc.
    """
    uvloop.run(_stopped_receiver_lossy(server))


async def _stopped_receiver_lossy(server: ServerProcess) -> None:
    rate = 1000.0  # messages/s on the lossy channel
    chat_count = 100  # small reliable messages sent during the stop
    warm, during = int(rate * WARM), int(rate * STOP)
    bot = SlowBot(server, "slow-lossy", ["chat", "state"])
    clients: list[RoomClient] = []
    samples: list[ServerSample] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT + RESUME_TIMEOUT):
            clients = await join_all(server, "slow-lossy", 3, (CHAT, STATE))
            await bot.started()
            sender, *readers = clients
            await sender.wait_until(lambda: bot.participant_id in sender.participants)
            await pump(sender, "state", 0, warm, rate, SIZE)
            await bot.command("ping")
            sampler = asyncio.create_task(sample_server(server, samples))
            await asyncio.sleep(0.3)  # a sample before the stop
            bot.stop()
            (start, end), _ = await asyncio.gather(
                pump(sender, "state", warm, during, rate, SIZE),
                pump(sender, "chat", 0, chat_count, chat_count / STOP, 100),
            )
            await asyncio.sleep(1.0)  # the readers catch up; the bot is still stopped
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            bot.resume()
            report = await bot.report_until(lambda r: len(r["received"]["chat"]) >= chat_count, RESUME_TIMEOUT)
            got = [(numbers(reader, "state"), reader.participant_id) for reader in readers]
    finally:
        bot.end()
        await close_all(clients)

    for received, reader_id in got:
        in_window = received_between(received, start, end)
        assert in_window >= RATE_KEPT * during, f"{reader_id} got {in_window} of {during} while the bot was stopped"
        assert len({n for n, _ in received}) >= 0.9 * (warm + during), f"{reader_id} got {len(received)} in all"

    before = [s for s in samples if s.at < start][-1]
    last = samples[-1]
    missed = during * SIZE  # bytes towards the stopped bot while it was stopped
    grown = last.rss - before.rss
    assert grown < missed / 2, f"server RSS grew {grown} B while {missed} B were not read"
    drops = last.buffer_full - before.buffer_full
    # All but the lossy buffer and what was in flight when the bot stopped.
    kept = (LOSSY_BUFFER + SCTP_WINDOW) // SIZE
    assert drops >= during - kept, f"buffer_full rose by {drops} for {during} messages towards the stopped bot"
    assert last.overflowed == 0
    assert report["received"]["chat"] == list(range(chat_count))  # reliable: nothing dropped
    assert not [e for e in report["events"] if e["type"] == "data_overflow"]
    state = report["received"]["state"]
    # Before the stop the bot read normally: nearly all warm-up messages arrived (a lossy
    # channel may still lose a few to socket-buffer overflow); of those sent while it was
    # stopped, most were dropped.
    assert len(set(range(warm)) & set(state)) >= 0.98 * warm, f"{len(set(state))} of {warm} warm-up messages"
    assert len(state) < warm + during / 2


def test_stopped_receiver_reliable_channel_is_closed_with_data_overflow(server: ServerProcess) -> None:
    """A receiver that stops reading while a reliable channel carries 1.6 MB/s: past
    the 4 MiB buffer the server closes that channel towards it and stops buffering
    (RSS flat from then on, ``overflowed`` drops counted), the other receiver gets
    every message in order at the full rate, and on SIGCONT the stopped receiver gets
    ``data_overflow``, a gap-free prefix of the stream, and, after opening the channel
    again, the messages sent from then on.

    Runs on uvloop (its own loop), see the lossy test.
    """
    uvloop.run(_stopped_receiver_reliable(server))


async def _stopped_receiver_reliable(server: ServerProcess) -> None:
    rate = 1600.0  # messages/s
    warm, during, later = int(rate * WARM), int(rate * STOP), 20
    bot = SlowBot(server, "slow-reliable", ["chat"])
    clients: list[RoomClient] = []
    samples: list[ServerSample] = []
    try:
        async with asyncio.timeout(TEST_TIMEOUT + RESUME_TIMEOUT):
            clients = await join_all(server, "slow-reliable", 2, (CHAT,))
            await bot.started()
            sender, reader = clients
            await sender.wait_until(lambda: bot.participant_id in sender.participants)
            await pump(sender, "chat", 0, warm, rate, SIZE)
            await bot.command("ping")
            sampler = asyncio.create_task(sample_server(server, samples))
            await asyncio.sleep(0.3)
            bot.stop()
            start, end = await pump(sender, "chat", warm, during, rate, SIZE)
            await asyncio.sleep(1.0)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            bot.resume()
            report = await bot.report_until(lambda r: "chat" not in r["open"], RESUME_TIMEOUT)
            await bot.command("reopen chat")
            await pump(sender, "chat", warm + during, later, 100.0, 100)
            final = await bot.report_until(lambda r: r["received"]["chat"][-1] == warm + during + later - 1, 10.0)
            received = numbers(reader, "chat")
    finally:
        bot.end()
        await close_all(clients)

    assert [n for n, _ in received] == list(range(warm + during + later))
    in_window = received_between(received, start, end)
    assert in_window >= RATE_KEPT * during, f"the reader got {in_window} of {during} messages while the bot was stopped"

    before = [s for s in samples if s.at < start][-1]
    overflow = next(s for s in samples if s.overflowed > 0)
    last = samples[-1]
    sent_after_overflow = (end - overflow.at) * rate * SIZE
    assert sent_after_overflow > 1.5 * MIB, "the overflow came too late to see the buffer stop growing"
    assert last.rss - overflow.rss < MIB, f"RSS grew {last.rss - overflow.rss} B after the overflow"
    assert last.rss - before.rss < 2 * RELIABLE_BUFFER, f"RSS grew {last.rss - before.rss} B in all"
    assert last.buffer_full == 0

    assert [e for e in report["events"] if e["type"] == "data_overflow"] == [{"type": "data_overflow", "label": "chat"}]
    prefix = report["received"]["chat"]
    assert prefix == list(range(len(prefix))), "the reliable stream to the stopped bot has a gap"
    assert warm < len(prefix) < warm + during
    assert final["received"]["chat"] == prefix + list(range(warm + during, warm + during + later))
