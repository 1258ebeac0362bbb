"""The UpTrack packet cache: one copy per packet, bounded, exact-sequence lookups."""

from sfu.core.packet_cache import PacketCache


def test_get_returns_only_exact_sequence():
    cache = PacketCache(capacity=8)
    for seq in range(100, 110):
        cache.put(seq, f"p{seq}")
    assert cache.get(109) == "p109"
    assert cache.get(102) == "p102"
    assert cache.get(101) is None  # evicted by 109 (same slot)
    assert cache.get(117) is None  # never stored, slot holds 109
    assert 105 in cache and 200 not in cache


def test_capacity_rounds_up_to_power_of_two_and_bounds_memory():
    cache = PacketCache(capacity=100)
    assert cache.capacity == 128
    for seq in range(100_000):
        cache.put(seq, seq)
    assert sum(1 for s in range(100_000) if s in cache) == 128
