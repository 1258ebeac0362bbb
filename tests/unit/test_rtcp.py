"""RTCP parse/build round trips (RFC 3550 §6.4, RFC 4585 §6.2.1/§6.3.1, RFC 5104, REMB)."""

import pytest

from sfu.core.rtcp import (
    NACK_MAX_LOST,
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    SenderReport,
    UnknownRtcp,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sr,
    nack_pairs,
    parse_rtcp,
)


def test_compound_round_trip():
    block = ReportBlock(ssrc=5, fraction_lost=25, cumulative_lost=-3, highest_sequence=70000, jitter=12, lsr=0xABCD, dlsr=655)
    sr = SenderReport(ssrc=1, ntp_timestamp=0x0123456789ABCDEF, rtp_timestamp=90000, packet_count=10, octet_count=1000, reports=[block])
    data = build_sr(sr) + build_rr(ReceiverReport(2, [block])) + build_pli(Pli(3, 4)) + build_fir(Fir(3, [(9, 7)]))
    assert parse_rtcp(data) == [sr, ReceiverReport(2, [block]), Pli(3, 4), Fir(3, [(9, 7)])]


def test_nack_round_trip_packs_bitmask():
    lost = [65534, 65535, 0, 5, 100]
    (nack,) = parse_rtcp(build_nack(Nack(1, 2, lost)))
    assert sorted(nack.lost) == sorted(lost)
    # PID 65534 carries 65535, 0 and 5 in its bitmask across the wrap; 100 needs its own
    assert len(nack_pairs(lost)) == 2


def test_a_nack_naming_thousands_lists_the_first_ones_and_counts_the_rest():
    """A hostile NACK may name every sequence number a datagram can: the parsed NACK
    lists the first NACK_MAX_LOST in the packet's order and counts the others."""
    named = [(60000 + i) & 0xFFFF for i in range(4800)]  # crosses the wrap
    (nack,) = parse_rtcp(build_nack(Nack(1, 2, named)))
    assert nack.lost == named[:NACK_MAX_LOST]
    assert nack.omitted == len(named) - NACK_MAX_LOST
    # Sparse: a pair per number, the bound reached in the middle of nothing
    sparse = [i * 20 for i in range(NACK_MAX_LOST + 7)]
    (nack,) = parse_rtcp(build_nack(Nack(1, 2, sparse)))
    assert (nack.lost, nack.omitted) == (sparse[:NACK_MAX_LOST], 7)
    (small,) = parse_rtcp(build_nack(Nack(1, 2, [5, 6, 40])))
    assert (small.lost, small.omitted) == ([5, 6, 40], 0)


@pytest.mark.parametrize("bitrate", [0, 1, 150_000, 2_500_000, 2**18 - 1, 2**18, 10**9])
def test_remb_round_trip_within_mantissa_precision(bitrate):
    (remb,) = parse_rtcp(build_remb(Remb(7, bitrate, [11, 12])))
    assert remb.ssrcs == [11, 12]
    assert remb.bitrate <= bitrate and bitrate - remb.bitrate < max(1, bitrate >> 17)


def test_unknown_and_bye():
    sdes = bytes([0x81, 202, 0, 1]) + b"\x00\x00\x00\x01"
    bye = bytes([0x81, 203, 0, 1]) + b"\x00\x00\x00\x09"
    packets = parse_rtcp(sdes + bye)
    assert isinstance(packets[0], UnknownRtcp) and packets[0].packet_type == 202
    assert packets[1] == Bye([9])


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\xc9\x00",  # truncated header
        b"\x80\xc9\x00\x05\x00\x00\x00\x01",  # length past the end
        b"\x40\xc9\x00\x00",  # version 1
        b"\x81\xc9\x00\x01\x00\x00\x00\x01",  # RR announcing a block that is absent
    ],
)
def test_malformed_rtcp_raises(data):
    with pytest.raises(ValueError):
        parse_rtcp(data)
