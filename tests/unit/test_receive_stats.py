"""Reception statistics for RR report blocks (RFC 3550 §A.3, §A.8) and RTT (§6.4.1)."""

from sfu.core.receive_stats import ReceiveStats, ntp_middle32, rtt_from_report_ms
from sfu.core.rtcp import ReportBlock
from sfu.core.seqnum import Unwrapper


def test_loss_fraction_and_cumulative_over_intervals():
    stats = ReceiveStats(ssrc=9, clock_rate=90000)
    u = Unwrapper(16)
    for seq in range(65530, 65536):
        stats.on_packet(u.unwrap(seq), 0, 0)
    for seq in (0, 1, 2, 3):  # across the wrap, none lost
        stats.on_packet(u.unwrap(seq), 0, 0)
    block = stats.report_block(now_ms=0)
    assert (block.fraction_lost, block.cumulative_lost) == (0, 0)
    assert block.highest_sequence == 65536 + 3  # one cycle, seq 3
    for seq in (4, 6, 8, 10):  # 5, 7, 9 lost: 3 of 7 expected
        stats.on_packet(u.unwrap(seq), 0, 0)
    block = stats.report_block(now_ms=0)
    assert block.cumulative_lost == 3
    assert block.fraction_lost == (3 * 256) // 7


def test_jitter_grows_with_irregular_arrival():
    steady, jittery = ReceiveStats(1, 90000), ReceiveStats(1, 90000)
    for i in range(100):
        steady.on_packet(i, i * 3000, i * (1000 / 30))
        jittery.on_packet(i, i * 3000, i * (1000 / 30) + (15 if i % 2 else 0))
    assert steady.jitter < 1
    assert jittery.jitter > 500  # 15 ms = 1350 ticks of alternating delay


def test_dlsr_and_rtt():
    stats = ReceiveStats(1, 48000)
    stats.on_packet(1, 0, 0)
    sr_ntp = 0x0000_1234_5678_0000
    stats.on_sender_report(sr_ntp, arrival_ms=1000)
    block = stats.report_block(now_ms=1500)
    assert block.lsr == ntp_middle32(sr_ntp)
    assert abs(block.dlsr - 0.5 * 65536) <= 1
    # The sender receives it 100 ms + DLSR after sending the SR.
    now = sr_ntp + int(0.6 * 2**32)
    rtt = rtt_from_report_ms(ReportBlock(1, 0, 0, 0, 0, block.lsr, block.dlsr), now)
    assert abs(rtt - 100) < 1
    assert rtt_from_report_ms(ReportBlock(1, 0, 0, 0, 0, 0, 0), now) is None
