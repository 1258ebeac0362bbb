"""Transport-wide congestion control plumbing (draft-holmer-rmcat-transport-wide-cc-extensions-01
§2, §3.1): feedback parse/build, the sender's SendHistory, the receiver's TwccReceiver."""

import random
import struct
import time

import pytest

from sfu.core import rtcp, twcc
from sfu.core.rtcp import (
    Pli,
    ReceiverReport,
    UnknownRtcp,
    build_pli,
    build_rr,
    parse_rtcp,
)
from sfu.core.send_history import PacketResult, SendHistory
from sfu.core.twcc import (
    MAX_PARSED_STATUSES,
    TwccFeedback,
    TwccReceiver,
    build_twcc,
    parse_twcc,
)

# A feedback written by hand from the §3.1 layout:
#   base sequence 65534, status count 21, reference time -1 (24-bit 0xFFFFFF = -64 ms),
#   feedback packet count 7;
#   chunk 1, run length: T=0 S=01 (small delta) run 3            -> 0 01 0000000000011 = 0x2003
#            seqs 65534, 65535, 0 received
#   chunk 2, one-bit vector: T=1 S=0, 1 0 0 1 1 0 0 0 0 0 0 0 0 1 -> 0xA601
#            seqs 1..14: 1, 4, 5, 14 received
#   chunk 3, two-bit vector: T=1 S=1, 10 00 01 10 | 01 01 00      -> 0xE194
#            seqs 15..18: large, lost, small, large; the last 3 symbols are past the count
#   receive deltas (250 µs): 4, 0, 255 | 1, 2, 3, 10 | -8 (2 bytes), 5, 1000 (2 bytes)
#   two bytes of zero padding.
HAND_FCI = bytes.fromhex(
    "fffe0015" "ffffff07"
    "2003" "a601" "e194"
    "0400ff" "0102030a" "fff8" "05" "03e8"
    "0000"
)
HAND_PACKETS = [
    (65534, -64000 + 1000),  # -63000
    (65535, -63000),
    (0, -63000 + 63750),  # 750
    (1, 1000),
    (2, None),
    (3, None),
    (4, 1500),
    (5, 2250),
    *[(s, None) for s in range(6, 14)],
    (14, 4750),
    (15, 2750),  # negative delta: arrived before 14 (reordered)
    (16, None),
    (17, 4000),
    (18, 254000),
]


def _rtcp(fmt: int, body: bytes) -> bytes:
    assert len(body) % 4 == 0
    return bytes([0x80 | fmt, 205]) + struct.pack("!H", len(body) // 4) + body


def _fci(base: int, count: int, reference: int, fb: int, rest: bytes) -> bytes:
    return struct.pack("!HHI", base, count, ((reference & 0xFFFFFF) << 8) | fb) + rest


def _rounded(us):
    """An arrival (µs) rounded to 250 µs, half up, as the builder does."""
    return None if us is None else int((us + 125) // 250) * 250


def _parse_all(packets: list[bytes]) -> list[TwccFeedback]:
    out = []
    for data in packets:
        (fb,) = parse_rtcp(data)
        assert isinstance(fb, TwccFeedback)
        out.append(fb)
    return out


def _statuses(packets: list[bytes]) -> list[tuple[int, int | None]]:
    return [p for fb in _parse_all(packets) for p in fb.packets]


# --- parse -------------------------------------------------------------------------------


def test_hand_built_feedback_decoded_field_by_field():
    fb = parse_twcc(0x11111111, 0x22222222, HAND_FCI)
    assert fb.sender_ssrc == 0x11111111
    assert fb.media_ssrc == 0x22222222
    assert fb.base_sequence == 65534
    assert fb.feedback_count == 7
    assert fb.reference_time_us == -64000
    assert len(fb.packets) == 21
    assert fb.packets == HAND_PACKETS


def test_hand_built_feedback_in_a_compound_packet_and_other_rtpfb_fmt_is_unknown():
    rr = build_rr(ReceiverReport(5))
    tmmbr = _rtcp(3, struct.pack("!II", 1, 2) + struct.pack("!II", 9, 0x04000001))
    data = rr + _rtcp(15, struct.pack("!II", 1, 2) + HAND_FCI) + tmmbr + build_pli(Pli(1, 2))
    packets = parse_rtcp(data)
    assert packets[0] == ReceiverReport(5)
    assert packets[1] == TwccFeedback(1, 2, 65534, 7, -64000, HAND_PACKETS)
    assert isinstance(packets[2], UnknownRtcp)
    assert (packets[2].packet_type, packets[2].fmt) == (205, 3)
    assert packets[3] == Pli(1, 2)
    # FMT 15 is never read as a NACK, nor any other RTPFB FMT but 1
    for fmt in (0, 2, 4, 7, 31):
        (other,) = parse_rtcp(_rtcp(fmt, struct.pack("!II", 1, 2) + HAND_FCI))
        assert isinstance(other, UnknownRtcp) and other.fmt == fmt


def test_header_constants_agree_with_rtcp():
    assert rtcp.FMT_TWCC == twcc.FMT_TWCC == 15
    assert rtcp.PT_RTPFB == twcc._PT_RTPFB == 205


def test_malformed_twcc_in_a_compound_packet_raises():
    good = _rtcp(15, struct.pack("!II", 1, 2) + _fci(0, 1, 0, 0, b"\x20\x01\x00\x00"))
    assert parse_rtcp(good) == [TwccFeedback(1, 2, 0, 0, 0, [(0, 0)])]  # one small delta of 0
    bad = _rtcp(15, struct.pack("!II", 1, 2) + _fci(0, 1, 0, 0, b"\x60\x01\x00\x00"))
    with pytest.raises(ValueError):
        parse_rtcp(build_rr(ReceiverReport(5)) + bad)


def test_run_length_chunk_of_lost_longer_than_the_count():
    fb = parse_twcc(1, 2, _fci(100, 5, 0, 0, struct.pack("!H", 0x1FFF) + b"\x00\x00"))
    assert fb.packets == [(s, None) for s in range(100, 105)]


def test_run_length_of_large_deltas_and_positive_reference():
    # run length chunk T=0 S=10 run 2 -> 0x4002; deltas +1 s and -0.5 s; reference 3 × 64 ms
    fb = parse_twcc(1, 2, _fci(7, 2, 3, 255, struct.pack("!Hhh", 0x4002, 4000, -2000) + b"\x00\x00"))
    assert fb.reference_time_us == 192000
    assert fb.feedback_count == 255
    assert fb.packets == [(7, 192000 + 1_000_000), (8, 192000 + 500_000)]


def test_one_bit_vector_alone():
    # 1 1 0 1 0 0 0 0 0 0 0 0 1 1 -> 0x8000 | 0b11010000000011 = 0xB403
    fb = parse_twcc(1, 2, _fci(0xFFF8, 14, 0, 0, b"\xb4\x03" + bytes([1, 2, 3, 4, 5]) + b"\x00"))
    received = [(s, t) for s, t in fb.packets if t is not None]
    assert [s for s, _ in fb.packets] == [(0xFFF8 + i) & 0xFFFF for i in range(14)]
    assert received == [(0xFFF8, 250), (0xFFF9, 750), (0xFFFB, 1500), (4, 2500), (5, 3750)]


def test_two_bit_vector_alone_with_the_count_ending_inside():
    # 01 10 00 01 00 00 00 with a count of 4 -> 0xC000 | 01 10 00 01 00 00 00 = 0xD840
    fb = parse_twcc(1, 2, _fci(50, 4, 0, 0, b"\xd8\x40" + b"\x08" + struct.pack("!h", -4) + b"\x02"))
    assert fb.packets == [(50, 2000), (51, 1000), (52, None), (53, 1500)]


def test_reference_time_sign_extension():
    fb = parse_twcc(1, 2, _fci(0, 0, 0x800000, 0, b""))
    assert fb.reference_time_us == -(1 << 23) * 64000
    assert fb.packets == []
    fb = parse_twcc(1, 2, _fci(0, 0, 0x7FFFFF, 0, b""))
    assert fb.reference_time_us == ((1 << 23) - 1) * 64000


@pytest.mark.parametrize(
    "fci",
    [
        b"",
        b"\x00\x01\x00\x05\x00\x00\x00",  # FCI header truncated
        _fci(0, 3, 0, 0, b""),  # no chunk at all
        _fci(0, 20, 0, 0, b"\x20\x0a" + bytes(10)),  # chunks cover 10 of 20
        _fci(0, 3, 0, 0, b"\x60\x03" + bytes(6)),  # run length with symbol 11
        _fci(0, 3, 0, 0, b"\xf0\x00" + bytes(6)),  # two-bit vector starting with 11
        _fci(0, 3, 0, 0, b"\xc3\x00" + bytes(6)),  # 11 as the third symbol
        _fci(0, 3, 0, 0, b"\x20\x03\x01\x02"),  # three small deltas, two present
        _fci(0, 1, 0, 0, b"\x40\x01\x01"),  # a large delta cut in half
        _fci(0, 14, 0, 0, b"\xbf\xff" + bytes(13)),  # one-bit vector of 14 received, 13 deltas
        _fci(0, 65535, 0, 0, b"\x20\x0a"),  # huge count, chunks for 10
    ],
)
def test_truncated_or_malformed_fci_raises(fci):
    with pytest.raises(ValueError):
        parse_twcc(1, 2, fci)


def test_reserved_symbol_past_the_count_is_ignored():
    # two-bit vector 01 11 11 ... with a count of 1: the 11s are past the count
    fb = parse_twcc(1, 2, _fci(0, 1, 0, 0, b"\xdf\xff\x04\x00"))
    assert fb.packets == [(0, 1000)]


def test_huge_count_is_bounded_by_the_bytes_present():
    hostile = _fci(0, 65535, 0, 0, b"\x3f\xff" * 6)  # received runs claiming 49146 deltas
    start = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(ValueError):
            parse_twcc(1, 2, hostile)
    assert time.perf_counter() - start < 0.5  # ~µs each, nothing allocated per status
    # 65535 statuses do fit in 9 run length chunks of lost packets: valid, and only the
    # first MAX_PARSED_STATUSES are read (expanding them all would cost ~5 ms)
    fb = parse_twcc(1, 2, _fci(0, 65535, 0, 0, b"\x1f\xff" * 9 + b"\x00\x00"))
    assert len(fb.packets) == MAX_PARSED_STATUSES and fb.packets[-1] == (MAX_PARSED_STATUSES - 1, None)


# --- build -------------------------------------------------------------------------------


def _chunks(packet: bytes) -> list[int]:
    """The packet chunk words of a built packet (parsed here independently)."""
    count = struct.unpack_from("!H", packet, 14)[0]
    words, covered, pos = [], 0, 20
    while covered < count:
        word = struct.unpack_from("!H", packet, pos)[0]
        pos += 2
        words.append(word)
        covered += (word & 0x1FFF) if not word & 0x8000 else (7 if word & 0x4000 else 14)
    return words


def test_build_header_fields():
    (packet,) = build_twcc(0xAABBCCDD, 0x01020304, 42, [(1000, 200_000), (1001, None), (1002, 201_000)])
    assert packet[0] == 0x80 | 15 and packet[1] == 205
    assert len(packet) % 4 == 0 and struct.unpack_from("!H", packet, 2)[0] == len(packet) // 4 - 1
    sender, media, base, count, word = struct.unpack_from("!IIHHI", packet, 4)
    assert (sender, media, base, count) == (0xAABBCCDD, 0x01020304, 1000, 3)
    assert word >> 8 == 3  # 200 ms floored to 64 ms
    assert word & 0xFF == 42
    fb = parse_twcc(sender, media, packet[12:])
    assert fb.packets == [(1000, 200_000), (1001, None), (1002, 201_000)]


def test_chunk_choice_run_length_one_bit_and_two_bit():
    # 20 received 1 ms apart: one run length chunk of small deltas
    (packet,) = build_twcc(1, 2, 0, [(s, 64_000 + s * 1000) for s in range(20)])
    assert _chunks(packet) == [0x2000 | 20]
    # alternating received / lost with small deltas: one-bit vectors of 14
    pattern = [(s, 64_000 + s * 1000 if s % 2 == 0 else None) for s in range(28)]
    (packet,) = build_twcc(1, 2, 0, pattern)
    assert _chunks(packet) == [0xAAAA, 0xAAAA]
    # a large delta among the next 7: two-bit vector
    pattern = [(0, 64_000), (1, None), (2, 164_000), (3, 165_000), (4, None), (5, 166_000), (6, None)]
    (packet,) = build_twcc(1, 2, 0, pattern)
    assert _chunks(packet) == [0xC000 | 0b01_00_10_01_00_01_00]
    # a long run of losses between received packets: run length of 00
    pattern = [(0, 64_000), *[(s, None) for s in range(1, 501)], (501, 65_000)]
    (packet,) = build_twcc(1, 2, 0, pattern)
    # one-bit vector (the received packet and 13 lost), run length of the 487 other lost,
    # run length of the last received packet
    assert _chunks(packet) == [0xA000, 487, 0x2001]
    assert len(packet) == 28
    assert _statuses([packet]) == pattern


def test_build_across_the_sequence_wrap_and_negative_deltas():
    arrivals = [10_000_000, 10_001_000, 9_999_000, None, 9_000_000, 10_500_000]
    packets = [(65534 + i, t) for i, t in enumerate(arrivals)]  # unwrapped: 65534 .. 65539
    (packet,) = build_twcc(1, 2, 0, packets)
    fb = _parse_all([packet])[0]
    assert fb.base_sequence == 65534
    assert fb.packets == [((65534 + i) & 0xFFFF, t) for i, t in enumerate(arrivals)]
    assert [s for s, _ in fb.packets] == [65534, 65535, 0, 1, 2, 3]


def test_arrivals_round_to_250us():
    packets = [(0, 1_000_124), (1, 1_000_125), (2, 1_000_374.9), (3, 1_000_375)]
    assert _statuses(build_twcc(1, 2, 0, packets)) == [
        (0, 1_000_000),
        (1, 1_000_250),
        (2, 1_000_250),
        (3, 1_000_500),
    ]


@pytest.mark.parametrize(
    "arrival_us, reference_field, parsed_reference_us",
    [
        (-200, 0xFFFFFF, -64000),  # negative arrival: reference -1
        (-64200, 0xFFFFFE, -128000),
        ((1 << 24) * 64000 + 50_000, 0, 0),  # wrapped: modulo 2**24
        ((1 << 23) * 64000, 0x800000, -(1 << 23) * 64000),  # upper half reads negative
    ],
)
def test_reference_time_wraps_at_24_bits(arrival_us, reference_field, parsed_reference_us):
    (packet,) = build_twcc(1, 2, 0, [(0, arrival_us), (1, arrival_us + 1000)])
    assert struct.unpack_from("!I", packet, 16)[0] >> 8 == reference_field
    fb = _parse_all([packet])[0]
    assert fb.reference_time_us == parsed_reference_us
    shift = _rounded(arrival_us) - fb.packets[0][1]
    assert shift % ((1 << 24) * 64000) == 0
    assert fb.packets[1][1] - fb.packets[0][1] == 1000


def test_split_when_a_delta_does_not_fit_16_bits():
    # +8191.75 ms (32767 ticks) still fits ...
    out = build_twcc(1, 2, 9, [(0, 0), (1, 8_191_750), (2, 8_191_750 - 8_192_000)])
    assert len(out) == 1  # ... and so does -8192 ms
    # +8192 ms does not: the late packet starts a second feedback with the next count
    packets = [(10, 1_000_000), (11, None), (12, 9_192_000), (13, 9_193_000)]
    out = build_twcc(1, 2, 255, packets)
    assert len(out) == 2
    first, second = _parse_all(out)
    assert (first.base_sequence, first.feedback_count) == (10, 255)
    assert (second.base_sequence, second.feedback_count) == (12, 0)
    assert first.packets + second.packets == packets
    # and a negative jump of more than 8192 ms
    packets = [(0, 20_000_000), (1, 20_000_000 - 8_192_250)]
    assert [fb.packets for fb in _parse_all(build_twcc(1, 2, 0, packets))] == [[packets[0]], [packets[1]]]


def test_split_at_the_size_limit():
    rng = random.Random(7)
    t = 1_000_000
    packets = []
    for s in range(3000):
        t += rng.choice([-300_000, 300_000, 1000, 70_000])  # half of them large deltas
        packets.append((s, t if rng.random() > 0.05 else None))
    packets[0] = (0, 1_000_000)
    for limit in (1200, 300, 24, 27):
        out = build_twcc(1, 2, 3, packets, max_packet_bytes=limit)
        assert all(len(p) <= limit for p in out)
        assert len(out) > 1
        fbs = _parse_all(out)
        assert [fb.feedback_count for fb in fbs] == [(3 + i) & 0xFF for i in range(len(out))]
        assert [p for fb in fbs for p in fb.packets] == [(s & 0xFFFF, _rounded(a)) for s, a in packets]
    assert len(build_twcc(1, 2, 0, packets[:400])) == 1


def test_long_loss_run_after_a_size_split_starts_a_packet_without_received():
    packets = [(s, 1000 * s) for s in range(30)] + [(s, None) for s in range(30, MAX_PARSED_STATUSES - 30)]
    out = build_twcc(1, 2, 0, packets, max_packet_bytes=40)
    assert all(len(p) <= 40 for p in out)
    assert _statuses(out) == [(s & 0xFFFF, a) for s, a in packets]


@pytest.mark.parametrize("seed", range(40))
def test_random_round_trips(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 600)
    first = rng.randrange(0, 200_000)
    t = rng.randint(-(10**9), 10**10)
    loss = rng.choice([0.0, 0.02, 0.3, 0.9])
    step = rng.choice([(0, 2000), (-3000, 20_000), (-100_000, 900_000), (-9_000_000, 9_000_000)])
    packets = []
    for i in range(n):
        t += rng.randint(*step)
        received = i == 0 or rng.random() >= loss
        packets.append((first + i, t + rng.random() if received else None))
    out = build_twcc(11, 22, seed, packets, max_packet_bytes=rng.choice([1200, 100, 64]))
    fbs = _parse_all(out)
    got = [p for fb in fbs for p in fb.packets]
    assert [s for s, _ in got] == [s & 0xFFFF for s, _ in packets]
    assert [a is None for _, a in got] == [a is None for _, a in packets]
    span = (1 << 24) * 64000
    for (_, a), (_, b) in zip(got, packets):
        if a is not None:
            assert (a - _rounded(b)) % span == 0
    assert all(fb.sender_ssrc == 11 and fb.media_ssrc == 22 for fb in fbs)


@pytest.mark.parametrize(
    "packets, limit",
    [
        ([], 1200),
        ([(5, None), (6, 1000)], 1200),
        ([(5, 1000), (7, 2000)], 1200),
        ([(5, 1000), (5, 2000)], 1200),
        ([(5, 1000)], 23),
    ],
)
def test_build_rejects_bad_input(packets, limit):
    with pytest.raises(ValueError):
        build_twcc(1, 2, 0, packets, max_packet_bytes=limit)


# --- SendHistory -------------------------------------------------------------------------


def _feedback(packets, reference_us=0, count=0):
    base = packets[0][0] if packets else 0
    return TwccFeedback(9, 0, base, count, reference_us, packets)


def test_send_history_results_match_send_times_sizes_and_clusters():
    h = SendHistory()
    assert h.newest_sequence is None
    sent = []
    for i in range(10):
        seq = h.next(now_ms=1000.0 + i * 5, cluster=(7 if i % 3 == 0 else None))
        h.set_size(seq, 100 + i)
        sent.append(seq)
    assert sent == list(range(10))
    assert h.newest_sequence == 9
    assert h.in_flight_bytes() == sum(100 + i for i in range(10))
    fb = _feedback([(s, None if s == 4 else 50_000 + s * 5000) for s in range(6)])
    results = h.on_feedback(fb)
    assert results == [
        PacketResult(s, 1000.0 + s * 5, 100 + s, None if s == 4 else 50.0 + s * 5, 7 if s % 3 == 0 else None)
        for s in range(6)
    ]
    assert h.in_flight_bytes() == sum(100 + i for i in range(6, 10))


def test_send_history_unwraps_across_65535():
    h = SendHistory(capacity=1024)
    for i in range(65540):
        seq = h.next(float(i))
        h.set_size(seq, 1)
    assert seq == (65539 & 0xFFFF) == 3
    assert h.newest_sequence == 65539
    fb = _feedback([(65533, 1000), (65534, 2000), (65535, None), (0, 3000), (1, 4000)])
    results = h.on_feedback(fb)
    assert [r.sequence for r in results] == [65533, 65534, 65535, 65536, 65537]
    assert [r.send_ms for r in results] == [65533.0, 65534.0, 65535.0, 65536.0, 65537.0]
    assert [r.arrival_ms for r in results] == [1.0, 2.0, None, 3.0, 4.0]
    assert h.in_flight_bytes() == 1024 - 5  # the ring's 1024 packets, but those reported


def test_send_history_duplicates_and_lost_then_received():
    h = SendHistory()
    for i in range(6):
        h.set_size(h.next(i * 10.0), 1000)
    first = h.on_feedback(_feedback([(0, 5000), (1, None), (2, None), (3, 8000)]))
    assert [(r.sequence, r.arrival_ms) for r in first] == [(0, 5.0), (1, None), (2, None), (3, 8.0)]
    assert h.in_flight_bytes() == 2000
    # overlapping feedback: 0 and 3 again (skipped), 1 arrived late (reported again as
    # received), 2 lost again (not repeated), 4 and 5 new
    second = h.on_feedback(_feedback([(0, 5000), (1, 9000), (2, None), (3, 8000), (4, None), (5, 10_000)]))
    assert [(r.sequence, r.arrival_ms) for r in second] == [(1, 9.0), (4, None), (5, 10.0)]
    assert h.in_flight_bytes() == 0
    # once received, a later "lost" is ignored too
    assert h.on_feedback(_feedback([(1, None), (5, None)])) == []


def test_send_history_ignores_unknown_and_too_old_sequence_numbers():
    h = SendHistory(capacity=16)
    assert h.on_feedback(_feedback([(0, 1000)])) == []  # nothing sent yet
    for i in range(40):
        h.next(float(i))
    results = h.on_feedback(_feedback([(s, 1000 * s) for s in range(20, 45)] + [(60000, 1), (65535, 2)]))
    # 20..23 fell out of the ring (40 - 16 = 24 is the oldest kept); 40..44 never sent
    assert [r.sequence for r in results] == list(range(24, 40))


def test_send_history_capacity_must_be_a_power_of_two():
    for bad in (0, 1000, -8, 65536):
        with pytest.raises(ValueError):
            SendHistory(bad)
    assert SendHistory(32768).capacity == 32768


def test_send_history_set_size_updates_in_flight_once():
    h = SendHistory(capacity=4)
    seq = h.next(0.0)
    h.set_size(seq, 500)
    h.set_size(seq, 700)  # corrected size
    assert h.in_flight_bytes() == 700
    for i in range(4):  # seq 0 leaves the ring unreported
        h.set_size(h.next(1.0), 10)
    assert h.in_flight_bytes() == 40


def test_send_history_unwraps_the_reference_time_across_feedbacks():
    h = SendHistory()
    for i in range(4):
        h.next(float(i))
    span = (1 << 24) * 64000
    top = span // 2 - 64000  # the last positive 24-bit reference
    a = h.on_feedback(_feedback([(0, top), (1, top + 60_000)], reference_us=top))
    # the next reference wrapped to the most negative value
    b = h.on_feedback(_feedback([(2, top + 70_000 - span)], reference_us=top + 64000 - span))
    assert [r.arrival_ms for r in a + b] == [top / 1000, (top + 60_000) / 1000, (top + 70_000) / 1000]


# --- TwccReceiver ------------------------------------------------------------------------


def test_receiver_feedback_after_packets_with_a_gap():
    r = TwccReceiver(sender_ssrc=0x5EED)
    assert r.feedback(media_ssrc=1) == []
    for seq, t in [(100, 1000.0), (101, 1001.5), (104, 1003.0), (103, 1002.25)]:
        r.on_packet(seq, t)
    out = r.feedback(media_ssrc=77)
    (fb,) = _parse_all(out)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.feedback_count) == (0x5EED, 77, 0)
    assert fb.packets == [(100, 1_000_000), (101, 1_001_500), (102, None), (103, 1_002_250), (104, 1_003_000)]
    assert r.feedback(media_ssrc=77) == []  # nothing new
    r.on_packet(102, 1010.0)  # too late: already reported (as lost)
    r.on_packet(99, 1010.0)
    assert r.feedback(media_ssrc=77) == []
    r.on_packet(107, 1020.0)
    (fb,) = _parse_all(r.feedback(media_ssrc=77))
    assert fb.feedback_count == 1
    assert fb.packets == [(105, None), (106, None), (107, 1_020_000)]


def test_receiver_duplicates_keep_the_first_arrival_and_seq_wraps():
    r = TwccReceiver(1)
    r.on_packet(65535, 10.0)
    r.on_packet(0, 11.0)
    r.on_packet(0, 15.0)
    r.on_packet(65535, 16.0)
    r.on_packet(1, 12.0)
    assert _statuses(r.feedback(2)) == [(65535, 10_000), (0, 11_000), (1, 12_000)]


def test_receiver_reordering_before_the_first_feedback_moves_the_start_back():
    r = TwccReceiver(1)
    r.on_packet(10, 5.0)
    r.on_packet(8, 6.0)
    assert _statuses(r.feedback(2)) == [(8, 6000), (9, None), (10, 5000)]


def test_receiver_huge_forward_jump_stays_bounded():
    r = TwccReceiver(1, max_window=64)
    for s in range(10):
        r.on_packet(s, float(s))
    r.on_packet(20_000, 100.0)  # 10..19999 never allocated, 0..9 forgotten
    statuses = _statuses(r.feedback(2))
    assert len(statuses) == 64
    assert statuses[-1] == (20_000, 100_000)
    assert all(a is None for _, a in statuses[:-1])
    # a loss gap within the window of a big receiver stays a few bytes
    r = TwccReceiver(1)
    r.on_packet(0, 0.0)
    r.on_packet(4000, 1.0)
    out = r.feedback(2)
    assert len(out) == 1 and len(out[0]) <= 32
    with pytest.raises(ValueError):
        TwccReceiver(1, max_window=1000)


def test_receiver_feedback_count_increments_per_packet_built():
    r = TwccReceiver(1, max_packet_bytes=64)
    for s in range(200):
        r.on_packet(s, s * 300.0)  # 300 ms apart: every delta is large
    out = r.feedback(2)
    assert len(out) > 1 and all(len(p) <= 64 for p in out)
    assert [fb.feedback_count for fb in _parse_all(out)] == list(range(len(out)))
    r.on_packet(200, 60_000.0)
    assert _parse_all(r.feedback(2))[0].feedback_count == len(out)


def test_send_history_and_receiver_end_to_end_fixed_offset():
    offset_ms = 123_456.789  # the receiver's clock is ahead of the sender's by this much
    history = SendHistory()
    receiver = TwccReceiver(sender_ssrc=0xFEED)
    sent = {}
    lost = set()
    now = 5000.0
    for i in range(300):
        now += 0.37 + (i % 7) * 1.3
        seq16 = history.next(now, cluster=i // 100)
        history.set_size(seq16, 1000 + i)
        sent[history.newest_sequence] = (now, 1000 + i, i // 100)
        if i % 11 == 5:
            lost.add(history.newest_sequence)
        else:
            receiver.on_packet(seq16, now + offset_ms)
    results = []
    for packet in receiver.feedback(media_ssrc=0x1234):
        (fb,) = parse_rtcp(packet)
        assert fb.sender_ssrc == 0xFEED and fb.media_ssrc == 0x1234
        results += history.on_feedback(fb)
    assert [r.sequence for r in results] == list(range(300))
    for r in results:
        assert (r.send_ms, r.size, r.cluster) == sent[r.sequence]
        if r.sequence in lost:
            assert r.arrival_ms is None
        else:
            assert abs(r.arrival_ms - r.send_ms - offset_ms) <= 0.25
    assert history.in_flight_bytes() == 0


@pytest.mark.parametrize("seed", range(5))
def test_send_history_and_receiver_end_to_end_across_the_wrap(seed):
    rng = random.Random(seed)
    offset_ms = rng.uniform(-50_000.0, 50_000.0) + 3_000_000.0
    history = SendHistory(capacity=4096)
    receiver = TwccReceiver(sender_ssrc=0xFEED)
    sent = {}
    now = 0.0
    checked = 0
    for _ in range(70_000 // 20):  # 70000 packets: the 16-bit sequence number wraps
        in_network = []
        for _ in range(20):
            now += rng.uniform(0.0, 2.0)
            seq16 = history.next(now)
            size = rng.randint(50, 1200)
            history.set_size(seq16, size)
            if rng.random() < 0.03:
                continue  # lost
            # up to 30 ms of jitter: packets arrive reordered
            in_network.append((seq16, now + offset_ms + rng.uniform(0.0, 30.0)))
            sent[history.newest_sequence] = (now, size)
        for seq16, arrival in sorted(in_network, key=lambda p: p[1]):
            receiver.on_packet(seq16, arrival)
        arrivals = dict(in_network)
        for packet in receiver.feedback(media_ssrc=0):
            (fb,) = parse_rtcp(packet)
            for r in history.on_feedback(fb):
                if r.arrival_ms is None:
                    continue
                assert (r.send_ms, r.size) == sent[r.sequence]
                assert abs(r.arrival_ms - arrivals[r.sequence & 0xFFFF]) <= 0.125 + 1e-6
                checked += 1
    assert history.newest_sequence > 65536
    assert checked == len(sent)
