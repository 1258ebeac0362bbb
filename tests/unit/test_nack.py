"""NACK generation on a virtual clock (RFC 4585 §6.2.1)."""

from sfu.core.nack import NackGenerator


def test_gap_is_nacked_after_reorder_wait_and_retried_per_rtt():
    g = NackGenerator(max_retries=3, reorder_ms=5)
    g.on_packet(1000, now_ms=0)
    g.on_packet(1003, now_ms=1)  # 1001, 1002 missing
    assert g.poll(now_ms=2, rtt_ms=50) == []  # within the reorder window
    assert g.poll(now_ms=10, rtt_ms=50) == [1001, 1002]
    assert g.poll(now_ms=30, rtt_ms=50) == []  # not again before one RTT
    assert g.on_packet(1001, now_ms=40) is True  # recovered
    assert g.poll(now_ms=61, rtt_ms=50) == [1002]
    assert g.poll(now_ms=112, rtt_ms=50) == [1002]
    assert g.poll(now_ms=200, rtt_ms=50) == []  # max_retries reached, given up
    assert g.missing == []


def test_reordered_packet_within_wait_is_never_nacked():
    g = NackGenerator(reorder_ms=10)
    g.on_packet(1, 0)
    g.on_packet(3, 1)
    g.on_packet(2, 3)
    assert g.poll(20, 50) == []


def test_old_losses_expire_and_huge_jump_resets():
    g = NackGenerator(max_age_ms=100, window=100)
    g.on_packet(0, 0)
    g.on_packet(5, 0)
    assert g.poll(200, 10) == []  # older than max_age
    g.on_packet(10, 200)
    g.on_packet(10_000, 201)  # stream restart: no 9989 NACKs
    assert g.missing == []


def test_wrap_is_handled_by_unwrapped_input():
    g = NackGenerator()
    g.on_packet(65535 + 65536, 0)
    g.on_packet(65537 + 65536, 0)
    assert [s & 0xFFFF for s in g.poll(100, 20)] == [0]
