"""Sequence number and timestamp unwrapping (RFC 3550 §A.1) across wrap-around."""

import pytest

from sfu.core.seqnum import Unwrapper, seq_newer


@pytest.mark.parametrize(
    "wire, expected_delta",
    [
        # in order across the 16-bit wrap
        ([65533, 65534, 65535, 0, 1], [0, 1, 2, 3, 4]),
        # reordering across the wrap, both ways
        ([65535, 1, 0, 2], [0, 2, 1, 3]),
        ([1, 65535, 2], [0, -2, 1]),
        # a forward jump under half the range stays in the cycle
        ([100, 30000], [0, 29900]),
        # a jump beyond half the range is read as going back
        ([100, 100 + 40000], [0, 40000 - 65536]),
    ],
)
def test_sequence_unwrap(wire, expected_delta):
    u = Unwrapper(16)
    out = [u.unwrap(s) for s in wire]
    assert [o - out[0] for o in out] == expected_delta


def test_many_wraps_accumulate_cycles():
    u = Unwrapper(16)
    first = u.unwrap(0)
    value = first
    steps = range(1000, 5 * 65536 + 10, 1000)
    for i in steps:
        value = u.unwrap(i & 0xFFFF)
    assert value - first == steps[-1]


def test_timestamp_unwrap_32bit():
    u = Unwrapper(32)
    a = u.unwrap(0xFFFF_FF00)
    b = u.unwrap(0x0000_0100)  # 512 ticks later, after the wrap
    c = u.unwrap(0xFFFF_FFF0)  # late packet from before the wrap
    assert b - a == 0x200
    assert c - a == 0xF0
    assert u.last == b


def test_seq_newer():
    assert seq_newer(1, 65535)
    assert not seq_newer(65535, 1)
    assert not seq_newer(7, 7)


def test_validator_accepts_order_gaps_and_late_packets():
    from sfu.core.seqnum import SequenceValidator

    v = SequenceValidator()
    first = v.accept(65530)
    assert [v.accept(s) for s in (65531, 65535, 2, 1, 100)] == [first + 1, first + 5, first + 8, first + 7, first + 106]
    assert v.accept(2) == first + 8  # a duplicate keeps its number
    assert v.accept((100 - 500) & 0xFFFF) == first + 106 - 500  # late within the misorder window


def test_a_single_stray_packet_far_ahead_does_not_move_the_stream():
    """RFC 3550 §A.1 probation: one packet 30,000 ahead is not accepted, and the normal
    packets after it go on (before, every one was dropped as too old)."""
    from sfu.core.seqnum import SequenceValidator

    restarts = []
    v = SequenceValidator(lambda: restarts.append(True))
    base = v.accept(1000)
    assert v.accept(31_000) is None
    assert [v.accept(s) for s in range(1001, 1004)] == [base + 1, base + 2, base + 3]
    assert v.accept((1003 - 2000) & 0xFFFF) is None  # far behind: a stray too
    assert v.accept(1004) == base + 4
    assert restarts == []


def test_two_packets_in_sequence_after_a_jump_are_a_restart():
    from sfu.core.seqnum import SequenceValidator

    restarts = []
    v = SequenceValidator(lambda: restarts.append(True))
    base = v.accept(1000)
    assert v.accept(40_000) is None
    restarted = v.accept(40_001)
    assert restarts == [True] and v.restarts == 1
    assert restarted > base and restarted & 0xFFFF == 40_001
    assert v.accept(40_002) == restarted + 1
    assert v.accept(1001) is None  # the old numbering is over
