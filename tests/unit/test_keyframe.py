"""Keyframe request coalescing, throttling and retries on a virtual clock."""

from sfu.core.keyframe import KeyframeRequester


def test_requests_coalesce_and_retry_until_keyframe():
    k = KeyframeRequester(min_interval_ms=300, retry_ms=1000)
    assert k.request(0) is True  # first PLI at once
    assert k.request(10) is False  # coalesced
    assert k.request(500) is False
    assert k.poll(999) is False
    assert k.poll(1000) is True  # publisher ignored it: retry
    k.on_keyframe(1100)
    assert not k.pending
    assert k.poll(5000) is False


def test_new_request_soon_after_a_keyframe_waits_for_the_min_interval():
    k = KeyframeRequester(min_interval_ms=300, retry_ms=1000)
    assert k.request(0)
    k.on_keyframe(50)
    assert k.request(100) is False  # Chrome ignores a PLI within ~300 ms
    assert k.poll(299) is False
    assert k.poll(300) is True
    assert k.sent == 2


def test_gives_up_eventually():
    k = KeyframeRequester(retry_ms=1000, give_up_ms=3000)
    assert k.request(0)
    sent = sum(k.poll(t) for t in range(0, 10_000, 100))
    assert sent == 3 and not k.pending
