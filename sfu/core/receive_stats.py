"""Reception statistics of one incoming SSRC and the RR report block built from them.

RFC 3550 §6.4.1 (report block fields), §A.3 (expected and lost packets, fraction lost),
§A.8 (interarrival jitter), and the LSR/DLSR fields that let the sender compute RTT.
"""

from __future__ import annotations

from .rtcp import ReportBlock

__all__ = ["ReceiveStats", "ntp_middle32", "rtt_from_report_ms"]


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp (RFC 3550 §6.4.1, LSR)."""
    return (ntp >> 16) & 0xFFFFFFFF


def rtt_from_report_ms(block: ReportBlock, now_ntp: int) -> float | None:
    """Round-trip time from a report block about our SR (RFC 3550 §6.4.1, A = now).

    Args:
        block: a block whose ``lsr``/``dlsr`` echo an SR we sent.
        now_ntp: the current 64-bit NTP time.

    Returns:
        RTT in ms, or None when the block echoes no SR or the result is negative.
    """
    if block.lsr == 0:
        return None
    rtt = (ntp_middle32(now_ntp) - block.lsr - block.dlsr) & 0xFFFFFFFF
    if rtt >= 0x80000000:
        return None
    return rtt * 1000.0 / 65536.0


class ReceiveStats:
    """Counts what arrived on one SSRC to fill RTCP report blocks.

    Args:
        ssrc: the source SSRC being reported on.
        clock_rate: the RTP clock rate in Hz (90000 for video, 48000 for Opus).
    """

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.received = 0
        self.base_seq: int | None = None
        self.max_seq: int | None = None
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        self.jitter = 0.0
        self._last_sr: int = 0
        self._last_sr_arrival_ms: float | None = None

    def on_packet(self, ext_seq: int, rtp_timestamp: int, arrival_ms: float) -> None:
        """Count a packet: unwrapped sequence number, 32-bit RTP timestamp, arrival (ms)."""
        self.received += 1
        if self.base_seq is None or ext_seq < self.base_seq:
            self.base_seq = ext_seq if self.base_seq is None else min(self.base_seq, ext_seq)
        if self.max_seq is None or ext_seq > self.max_seq:
            self.max_seq = ext_seq
        # A.8: transit difference in RTP clock units.
        arrival_ticks = arrival_ms * self.clock_rate / 1000.0
        transit = arrival_ticks - rtp_timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < self.clock_rate * 10:  # ignore timestamp jumps (stream restarts)
                self.jitter += (d - self.jitter) / 16.0
        self._transit = transit

    def on_sender_report(self, ntp_timestamp: int, arrival_ms: float) -> None:
        """Remember the last SR from this source for the LSR/DLSR fields."""
        self._last_sr = ntp_middle32(ntp_timestamp)
        self._last_sr_arrival_ms = arrival_ms

    @property
    def lost(self) -> int:
        """Cumulative packets lost (expected − received; negative with duplicates)."""
        if self.base_seq is None or self.max_seq is None:
            return 0
        return (self.max_seq - self.base_seq + 1) - self.received

    def report_block(self, now_ms: float) -> ReportBlock | None:
        """A report block for an RR/SR sent at ``now_ms``; None before any packet.

        Updates the interval counters (the fraction lost covers the time since the
        previous call, RFC 3550 §A.3).
        """
        if self.base_seq is None or self.max_seq is None:
            return None
        expected = self.max_seq - self.base_seq + 1
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._last_sr_arrival_ms is not None:
            dlsr = int((now_ms - self._last_sr_arrival_ms) * 65536 / 1000.0) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            cumulative_lost=self.lost,
            # The Unwrapper starts one 16-bit cycle up; report RFC 3550 cycles from 0.
            highest_sequence=(self.max_seq - 0x10000) & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=self._last_sr,
            dlsr=dlsr,
        )
