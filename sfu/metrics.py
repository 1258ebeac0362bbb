"""Process-wide media counters, exposed to Prometheus through a custom collector.

The hot path increments plain int attributes (tens of nanoseconds); prometheus-client
reads them only when ``/metrics`` is scraped, so forwarding pays no label lookup or
lock per packet. Names follow Prometheus conventions: ``sfu_`` prefix, base units,
``_total`` for counters (docs/METRICS.md lists them).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import Counter
from typing import Callable, Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "BucketHistogram",
    "KindCounters",
    "MediaCounters",
    "COUNTERS",
    "MediaCollector",
    "RuntimeCollector",
    "LATENCY_SAMPLE_EVERY",
]

# Forwarding latency is measured on one incoming packet in this many.
LATENCY_SAMPLE_EVERY = 16


class BucketHistogram:
    """A histogram of plain ints: ``observe`` costs a bisect and two additions, no lock.

    Args:
        bounds: the upper bounds of the buckets, ascending (``+Inf`` is implicit).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The Prometheus histogram family (cumulative buckets)."""
        buckets = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class KindCounters:
    """RTP counters of one media kind (``audio`` or ``video``)."""

    __slots__ = ("packets_received", "bytes_received", "packets_sent", "bytes_sent")

    def __init__(self) -> None:
        self.packets_received = 0
        self.bytes_received = 0
        self.packets_sent = 0
        self.bytes_sent = 0


class MediaCounters:
    """All process-wide media counters; one instance, :data:`COUNTERS`.

    ``per_packet`` (default True) turns the per-packet counting and latency sampling
    on; ``sfu serve --no-media-metrics`` turns it off, to measure what metrics cost.
    """

    def __init__(self) -> None:
        self.per_packet = True
        self.kinds = {"audio": KindCounters(), "video": KindCounters()}
        self.dropped: Counter[str] = Counter()
        self.nacks_received = 0
        self.nack_refused = 0  # NACKed sequence numbers not resent: over the bounds
        self.nacks_sent = 0
        self.retransmissions_sent = 0
        self.plis_received = 0
        self.firs_received = 0
        self.plis_sent = 0
        self.rtcp_malformed = 0
        self.dc_messages_received = 0
        self.dc_bytes_received = 0
        self.dc_messages_sent = 0
        self.dc_bytes_sent = 0
        self.dc_dropped: Counter[str] = Counter()
        # Simulcast: (direction, reason) -> layer changes; probing padding.
        self.layer_switches: Counter[tuple[str, str]] = Counter()
        self.padding_bytes_sent = 0
        self.probes: Counter[str] = Counter()
        # Seconds from a packet reaching Python to its last subscriber's sendto.
        self.forwarding_latency = BucketHistogram(
            (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
        )
        # Subscribers' REMB estimates, bit/s.
        self.subscriber_bitrate = BucketHistogram(
            (100e3, 250e3, 500e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6, 30e6)
        )
        # The server's downlink estimate per subscriber, at each allocation, bit/s.
        self.downlink_estimate = BucketHistogram(
            (100e3, 250e3, 500e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6, 30e6)
        )
        # transport-cc feedback packets: "received" from subscribers, "sent" to publishers.
        self.transport_feedback: Counter[str] = Counter()
        # Datagrams the single-port demultiplexer (sfu/rtc/udp_mux.py) could not route, by reason.
        self.udp_mux_dropped: Counter[str] = Counter()


COUNTERS = MediaCounters()


class MediaCollector(Collector):
    """Exposes :data:`COUNTERS` and live gauges from ``gauges()`` at scrape time.

    Args:
        gauges: returns (rooms, participants, published tracks by kind, DownTracks).
        layers: returns the video DownTracks by layer label (``0``/``1``/``2`` for
            simulcast layers, ``single``, ``paused``, ``starting``).
    """

    def __init__(
        self,
        gauges: Callable[[], tuple[int, int, dict[str, int], int]],
        layers: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._gauges = gauges
        self._layers = layers

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        c = COUNTERS
        packets_in = CounterMetricFamily(
            "sfu_rtp_packets_received", "RTP packets received from publishers", labels=["kind"]
        )
        bytes_in = CounterMetricFamily(
            "sfu_rtp_received_bytes", "RTP bytes received from publishers", labels=["kind"]
        )
        packets_out = CounterMetricFamily(
            "sfu_rtp_packets_sent", "RTP packets forwarded to subscribers", labels=["kind"]
        )
        bytes_out = CounterMetricFamily(
            "sfu_rtp_sent_bytes", "RTP bytes forwarded to subscribers", labels=["kind"]
        )
        for kind, k in c.kinds.items():
            packets_in.add_metric([kind], k.packets_received)
            bytes_in.add_metric([kind], k.bytes_received)
            packets_out.add_metric([kind], k.packets_sent)
            bytes_out.add_metric([kind], k.bytes_sent)
        yield from (packets_in, bytes_in, packets_out, bytes_out)

        dropped = CounterMetricFamily(
            "sfu_rtp_packets_dropped", "RTP packets not forwarded, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        mux_dropped = CounterMetricFamily(
            "sfu_udp_mux_dropped",
            "datagrams on the shared UDP port (--udp-port) routed to no connection, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(c.udp_mux_dropped.items()):
            mux_dropped.add_metric([reason], n)
        yield mux_dropped

        for name, doc, value in (
            ("sfu_rtcp_nacks_received", "NACK packets received from subscribers", c.nacks_received),
            ("sfu_rtcp_nacks_sent", "NACK packets sent to publishers", c.nacks_sent),
            ("sfu_rtp_retransmissions_sent", "packets retransmitted to subscribers", c.retransmissions_sent),
            ("sfu_rtcp_nack_refused", "NACKed packets not resent: over a bound (per NACK, per second, within a round trip)", c.nack_refused),
            ("sfu_rtcp_plis_received", "PLIs received from subscribers", c.plis_received),
            ("sfu_rtcp_firs_received", "FIRs received from subscribers", c.firs_received),
            ("sfu_rtcp_plis_sent", "PLIs sent to publishers", c.plis_sent),
            ("sfu_rtcp_malformed", "RTCP datagrams dropped as malformed", c.rtcp_malformed),
        ):
            yield CounterMetricFamily(name, doc, value=value)

        for name, doc, value in (
            ("sfu_datachannel_messages_received", "DataChannel messages received from participants", c.dc_messages_received),
            ("sfu_datachannel_received_bytes", "DataChannel bytes received from participants", c.dc_bytes_received),
            ("sfu_datachannel_messages_sent", "DataChannel messages delivered to participants", c.dc_messages_sent),
            ("sfu_datachannel_sent_bytes", "DataChannel bytes delivered to participants", c.dc_bytes_sent),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        dc_dropped = CounterMetricFamily(
            "sfu_datachannel_messages_dropped",
            "DataChannel messages not delivered to a receiver (or refused from a sender), by reason",
            labels=["reason"],
        )
        for reason, n in sorted(c.dc_dropped.items()):
            dc_dropped.add_metric([reason], n)
        yield dc_dropped

        yield c.forwarding_latency.family(
            "sfu_forwarding_latency_seconds",
            f"time from a packet's arrival to its send to the last subscriber (1 packet in {LATENCY_SAMPLE_EVERY})",
        )
        yield c.subscriber_bitrate.family(
            "sfu_subscriber_bandwidth_estimate_bits_per_second", "subscribers' bandwidth estimates (REMB), bit/s"
        )
        yield c.downlink_estimate.family(
            "sfu_downlink_estimate_bits_per_second",
            "the server's estimate of each subscriber's downlink at each layer allocation (transport-cc or REMB), bit/s",
        )
        feedback = CounterMetricFamily(
            "sfu_transport_feedback", "transport-cc feedback packets, by direction", labels=["direction"]
        )
        for direction in ("received", "sent"):
            feedback.add_metric([direction], c.transport_feedback[direction])
        yield feedback

        rooms, participants, tracks, downtracks = self._gauges()
        yield GaugeMetricFamily("sfu_rooms", "rooms with at least one participant", value=rooms)
        yield GaugeMetricFamily("sfu_participants", "participants joined", value=participants)
        published = GaugeMetricFamily("sfu_tracks_published", "published tracks", labels=["kind"])
        for kind in ("audio", "video"):
            published.add_metric([kind], tracks.get(kind, 0))
        yield published
        yield GaugeMetricFamily("sfu_downtracks", "tracks being forwarded to subscribers", value=downtracks)
        by_layer = GaugeMetricFamily(
            "sfu_video_downtracks_by_layer",
            "video DownTracks by the layer forwarded (simulcast index, single, paused, starting)",
            labels=["layer"],
        )
        for layer, n in sorted(self._layers().items()):
            by_layer.add_metric([layer], n)
        yield by_layer
        switches = CounterMetricFamily(
            "sfu_layer_switches", "layer changes of video DownTracks, by direction and reason", labels=["direction", "reason"]
        )
        for (direction, reason), n in sorted(c.layer_switches.items()):
            switches.add_metric([direction, reason], n)
        yield switches
        yield CounterMetricFamily(
            "sfu_padding_sent_bytes", "bytes of probing padding sent to subscribers", value=c.padding_bytes_sent
        )
        probes = CounterMetricFamily("sfu_bandwidth_probes", "subscriber downlink probes, by result", labels=["result"])
        for result, n in sorted(c.probes.items()):
            probes.add_metric([result], n)
        yield probes


class RuntimeCollector(Collector):
    """Exposes ``sfu_asyncio_tasks``: the event loop's unfinished asyncio tasks, counted
    at scrape time (``len(asyncio.all_tasks())``, the task serving the scrape included).

    A task count that grows with every participant who came and went is a leak; the
    soak benchmark (``loadtest/bench_soak.py``) compares it with a baseline.
    Outside a running event loop (a scrape from another thread) it yields nothing.
    """

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no running event loop in this thread
            return
        yield GaugeMetricFamily("sfu_asyncio_tasks", "unfinished asyncio tasks of the event loop", value=tasks)
