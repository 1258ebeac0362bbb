"""Webhooks (signaling/webhooks.py, docs/WEBHOOKS.md) against a real aiohttp receiver
on 127.0.0.1 that verifies every signature: retries after 500s and a slow answer,
order per room and URL, nothing lost below the queue bound, a full queue dropped and
counted, a slow room or URL holding up no other, verification refusing what it must."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import jwt
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from signaling.metrics import WebhookMetrics
from signaling.webhooks import (
    CONTENT_TYPE,
    EVENTS,
    WebhookNotifier,
    WebhookVerificationError,
    body_digest,
    sign_webhook,
    verify_webhook,
)

API_KEY = "hookkey"
API_SECRET = "a-webhook-secret-of-at-least-32-bytes!"
KEYS = {API_KEY: API_SECRET}


class Receiver:
    """An HTTP receiver on an ephemeral port of 127.0.0.1. Every request is verified
    with :func:`verify_webhook`; ``decide(path, event, request_number)`` returns what to
    answer: an HTTP status, or ("slow", seconds) to answer 200 only after a delay."""

    def __init__(self, decide: Callable[[str, dict, int], object] | None = None) -> None:
        self.decide = decide or (lambda path, event, n: 200)
        self.requests = 0
        self.bad_signatures: list[str] = []
        self.accepted: dict[str, list[dict]] = defaultdict(list)  # path -> events answered 2xx in time
        self.attempts: dict[str, int] = defaultdict(int)  # event id -> requests
        self.late: list[str] = []  # ids answered after the sender's timeout
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = verify_webhook(body, request.headers.get("Authorization"), KEYS)
        except WebhookVerificationError as exc:
            self.bad_signatures.append(str(exc))
            return web.Response(status=401)
        assert request.headers["Content-Type"] == CONTENT_TYPE
        self.requests += 1
        self.attempts[event["id"]] += 1
        action = self.decide(request.path, event, self.requests)
        if isinstance(action, tuple):
            self.late.append(event["id"])
            await asyncio.sleep(action[1])
            return web.Response(status=200)
        if 200 <= action < 300:
            self.accepted[request.path].append(event)
        return web.Response(status=action)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{path:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the ephemeral port
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def notifier(urls: list[str], **kwargs) -> tuple[WebhookNotifier, CollectorRegistry]:
    registry = CollectorRegistry()
    options = {"timeout_s": 2.0, "backoff_s": 0.01, "backoff_max_s": 0.05}
    options.update(kwargs)
    return WebhookNotifier(urls, API_KEY, API_SECRET, metrics=WebhookMetrics(registry), **options), registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def room(name: str) -> dict:
    return {"sid": f"RM_{name}", "name": name}


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_retries_slow_answer_order_per_room_and_no_loss(receiver: Receiver) -> None:
    fail_first = 5
    slow_request = fail_first + 3

    def decide(path: str, event: dict, n: int) -> object:
        if n <= fail_first:
            return 500
        if n == slow_request:
            return ("slow", 1.0)  # longer than timeout_s: the sender gives up and retries
        return 200

    receiver.decide = decide
    urls = [f"{receiver.base}/a", f"{receiver.base}/b"]
    hooks, registry = notifier(urls, timeout_s=0.4, queue_limit=1000, max_attempts=10)
    await hooks.start()
    sent: dict[str, list[str]] = defaultdict(list)  # room -> event ids in notify order
    rooms = [f"room{i}" for i in range(6)]
    for step in range(20):
        for name in rooms:
            event = EVENTS[step % len(EVENTS)]
            participant = {"sid": f"PA_{step}", "identity": f"p{step}"} if event != "room_started" else None
            track = {"sid": f"TR_{step}", "type": "VIDEO"} if event.startswith("track_") else None
            hooks.notify(event, room(name), participant, track)
            sent[name].append(json.loads(hooks._queues[(0, name)][-1].body)["id"])
    total = 20 * len(rooms) * len(urls)
    assert hooks.pending == total <= hooks.queue_limit
    await wait_for(lambda: hooks.pending == 0)

    assert receiver.bad_signatures == []
    for path in ("/a", "/b"):
        by_room: dict[str, list[str]] = defaultdict(list)
        for event in receiver.accepted[path]:
            by_room[event["room"]["name"]].append(event["id"])
        assert by_room == sent, f"order or loss at {path}"
    assert len(receiver.late) == 1 and receiver.attempts[receiver.late[0]] >= 2
    assert sample(registry, "sfu_webhooks_retries_total", reason="http_status") == fail_first
    assert sample(registry, "sfu_webhooks_retries_total", reason="timeout") == 1
    assert sum(sample(registry, "sfu_webhooks_delivered_total", event=e) for e in EVENTS) == total
    assert sample(registry, "sfu_webhooks_dropped_total", reason="gave_up") == 0
    assert sample(registry, "sfu_webhooks_dropped_total", reason="queue_full") == 0
    assert sample(registry, "sfu_webhooks_queued") == 0
    await hooks.close(1.0)


async def test_body_follows_livekit_webhook_event(receiver: Receiver) -> None:
    hooks, _ = notifier([f"{receiver.base}/hook"])
    await hooks.start()
    before = int(time.time())
    r, p, t = room("demo"), {"sid": "PA_1", "identity": "alice"}, {"sid": "TR_1", "type": "AUDIO"}
    hooks.notify("room_started", r)
    hooks.notify("track_published", r, p, t)
    await hooks.close(5.0)
    started, published = receiver.accepted["/hook"]
    assert set(started) == {"id", "event", "createdAt", "room"}
    assert started["event"] == "room_started" and started["room"] == r
    assert started["id"].startswith("EV_") and started["id"] != published["id"]
    assert before <= started["createdAt"] <= time.time()
    assert published["participant"] == p and published["track"] == t
    with pytest.raises(ValueError):
        hooks.notify("room_exploded", r)
    with pytest.raises(ValueError):
        hooks.notify("room_started", {"numParticipants": 1})


async def test_full_queue_drops_and_counts(receiver: Receiver) -> None:
    gate = asyncio.Event()
    receiver.decide = lambda path, event, n: 200

    async def held(request: web.Request) -> web.Response:
        await gate.wait()
        return await Receiver.handle(receiver, request)

    receiver.handle = held  # type: ignore[method-assign]
    await receiver.stop()
    await receiver.start()
    hooks, registry = notifier([f"{receiver.base}/hook"], queue_limit=10, timeout_s=5.0)
    await hooks.start()
    for i in range(15):
        hooks.notify("participant_joined", room(f"r{i % 3}"), {"sid": f"PA_{i}"})
    assert hooks.pending == 10
    assert sample(registry, "sfu_webhooks_dropped_total", reason="queue_full") == 5
    assert sample(registry, "sfu_webhooks_queued") == 10
    gate.set()
    await wait_for(lambda: hooks.pending == 0)
    assert len(receiver.accepted["/hook"]) == 10
    assert sample(registry, "sfu_webhooks_delivered_total", event="participant_joined") == 10
    assert sample(registry, "sfu_webhooks_queued") == 0
    # Room for more once drained.
    hooks.notify("participant_left", room("r0"), {"sid": "PA_0"})
    await hooks.close(5.0)
    assert sample(registry, "sfu_webhooks_delivered_total", event="participant_left") == 1
    assert receiver.bad_signatures == []


async def test_gives_up_after_max_attempts_and_goes_on(receiver: Receiver) -> None:
    receiver.decide = lambda path, event, n: 503 if event["event"] == "room_started" else 200
    hooks, registry = notifier([f"{receiver.base}/hook"], max_attempts=3)
    await hooks.start()
    hooks.notify("room_started", room("demo"))
    hooks.notify("room_finished", room("demo"))
    await wait_for(lambda: hooks.pending == 0)
    assert [e["event"] for e in receiver.accepted["/hook"]] == ["room_finished"]
    assert receiver.requests == 4
    assert sample(registry, "sfu_webhooks_retries_total", reason="http_status") == 2
    assert sample(registry, "sfu_webhooks_dropped_total", reason="gave_up") == 1
    await hooks.close(1.0)


async def test_unreachable_url_is_retried_as_connection_failure(receiver: Receiver) -> None:
    # A port that was just free: nothing listens there.
    spare = Receiver()
    dead = await spare.start()
    await spare.stop()
    hooks, registry = notifier([f"{dead}/hook", f"{receiver.base}/hook"], max_attempts=2)
    await hooks.start()
    hooks.notify("room_started", room("demo"))
    await wait_for(lambda: hooks.pending == 0)
    assert len(receiver.accepted["/hook"]) == 1
    assert sample(registry, "sfu_webhooks_retries_total", reason="connection") == 1
    assert sample(registry, "sfu_webhooks_dropped_total", reason="gave_up") == 1
    await hooks.close(1.0)


async def test_slow_room_and_slow_url_hold_up_no_other(receiver: Receiver) -> None:
    gate = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        event = verify_webhook(body, request.headers.get("Authorization"), KEYS)
        if event["room"]["name"] == "slow" or request.path == "/stuck":
            await gate.wait()
        receiver.accepted[request.path].append(event)
        return web.Response(status=204)

    receiver.handle = handle  # type: ignore[method-assign]
    await receiver.stop()
    await receiver.start()
    hooks, _ = notifier([f"{receiver.base}/hook", f"{receiver.base}/stuck"], timeout_s=10.0)
    await hooks.start()
    hooks.notify("room_started", room("slow"))
    hooks.notify("participant_joined", room("slow"), {"sid": "PA_s"})
    for i in range(10):
        hooks.notify("participant_joined", room("fast"), {"sid": f"PA_{i}"})
    started = time.monotonic()
    await wait_for(lambda: len(receiver.accepted["/hook"]) == 10, timeout=2.0)
    assert time.monotonic() - started < 1.0
    assert {e["room"]["name"] for e in receiver.accepted["/hook"]} == {"fast"}
    assert receiver.accepted["/stuck"] == []
    gate.set()
    await wait_for(lambda: hooks.pending == 0)
    slow = [e["event"] for e in receiver.accepted["/hook"] if e["room"]["name"] == "slow"]
    assert slow == ["room_started", "participant_joined"]
    assert len(receiver.accepted["/stuck"]) == 12
    await hooks.close(1.0)


async def test_close_flushes_then_cancels_without_leaks(receiver: Receiver) -> None:
    gate = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(status=200)

    receiver.handle = hang  # type: ignore[method-assign]
    await receiver.stop()
    await receiver.start()
    before = asyncio.all_tasks()
    hooks, registry = notifier([f"{receiver.base}/hook"], timeout_s=10.0)
    await hooks.start()
    for i in range(4):
        hooks.notify("participant_joined", room(f"r{i % 2}"), {"sid": f"PA_{i}"})
    started = time.monotonic()
    await hooks.close(0.2)
    assert time.monotonic() - started < 1.0
    assert sample(registry, "sfu_webhooks_dropped_total", reason="closed") == 4
    assert sample(registry, "sfu_webhooks_queued") == 0
    assert hooks.pending == 0 and hooks._session is None
    assert hooks._workers == {}
    assert [t for t in asyncio.all_tasks() - before if t.get_name().startswith("webhooks")] == []
    hooks.notify("participant_left", room("r0"), {"sid": "PA_0"})
    assert sample(registry, "sfu_webhooks_dropped_total", reason="closed") == 5
    gate.set()


async def test_events_queued_before_start_are_sent_by_start(receiver: Receiver) -> None:
    hooks, _ = notifier([f"{receiver.base}/hook"])
    hooks.notify("room_started", room("early"))
    await asyncio.sleep(0.05)
    assert hooks.pending == 1
    await hooks.start()
    await hooks.close(5.0)
    assert [e["event"] for e in receiver.accepted["/hook"]] == ["room_started"]


def test_constructor_refuses_bad_configuration() -> None:
    for urls in (["ftp://example.org/x"], ["/relative"]):
        with pytest.raises(ValueError):
            WebhookNotifier(urls, API_KEY, API_SECRET)
    with pytest.raises(TypeError):
        WebhookNotifier("http://127.0.0.1/one-string", API_KEY, API_SECRET)
    with pytest.raises(ValueError):
        WebhookNotifier(["http://127.0.0.1/x"], "", API_SECRET)
    with pytest.raises(ValueError):
        WebhookNotifier(["http://127.0.0.1/x"], API_KEY, API_SECRET, queue_limit=0)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    hooks = WebhookNotifier(["http://127.0.0.1/x"], API_KEY, API_SECRET, backoff_s=0.5, backoff_max_s=3.0)
    hooks._random = lambda: 1.0
    assert [hooks._backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    hooks._random = lambda: 0.0
    assert hooks._backoff(2) == 0.5


# -- verification ------------------------------------------------------------------------

BODY = json.dumps({"id": "EV_x", "event": "room_started", "createdAt": 1, "room": {"name": "demo"}}).encode()


def test_verify_accepts_a_signed_body_with_or_without_bearer() -> None:
    token = sign_webhook(BODY, API_KEY, API_SECRET)
    assert verify_webhook(BODY, token, KEYS)["event"] == "room_started"
    assert verify_webhook(BODY, f"Bearer {token}", KEYS)["room"] == {"name": "demo"}
    claims = jwt.decode(token, API_SECRET, algorithms=["HS256"])
    assert claims["iss"] == API_KEY and claims["sha256"] == body_digest(BODY)
    assert claims["exp"] - claims["nbf"] == 300


@pytest.mark.parametrize(
    ("body", "authorization", "keys", "now", "why"),
    [
        (BODY.replace(b"demo", b"dem0"), None, KEYS, None, "sha256"),
        (BODY, None, {"otherkey": API_SECRET}, None, "unknown API key"),
        (BODY, None, {API_KEY: "another-secret-of-at-least-32-bytes!!"}, None, "signature"),
        (BODY, None, KEYS, time.time() + 3600, "expired"),
        (BODY, None, KEYS, time.time() - 3600, "not valid yet"),
        (BODY, "", KEYS, None, "no Authorization"),
        (BODY, "not.a.jwt", KEYS, None, "malformed"),
        (
            BODY,
            jwt.encode({"iss": API_KEY, "sha256": body_digest(BODY), "exp": 2**40}, API_SECRET * 2, algorithm="HS512"),
            KEYS,
            None,
            "HS256",
        ),
        (
            BODY,
            jwt.encode({"iss": API_KEY, "exp": 2**40}, API_SECRET, algorithm="HS256"),
            KEYS,
            None,
            "sha256",
        ),
        # Signed now and given an "exp" far ahead: a token made at collection time must
        # not expire before a long suite reaches this test.
        (b"[1]", jwt.encode({"iss": API_KEY, "sha256": body_digest(b"[1]"), "exp": 2**40}, API_SECRET, algorithm="HS256"),
         KEYS, None, "not a webhook event"),
    ],
)
def test_verify_refuses(body: bytes, authorization: str | None, keys: dict, now: float | None, why: str) -> None:
    if authorization is None:
        authorization = sign_webhook(BODY, API_KEY, API_SECRET)
    with pytest.raises(WebhookVerificationError, match=why):
        verify_webhook(body, authorization, keys, now=now)


def test_unsigned_token_is_refused() -> None:
    token = jwt.encode({"iss": API_KEY, "sha256": body_digest(BODY), "exp": 2**40}, None, algorithm="none")
    with pytest.raises(WebhookVerificationError, match="HS256"):
        verify_webhook(BODY, token, KEYS)
