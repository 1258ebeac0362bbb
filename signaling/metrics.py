"""Room-service metrics (prometheus-client objects on the app's registry).

Names follow docs/METRICS.md: ``sfu_`` prefix, base units (seconds), ``_total`` for
counters. None of these is touched per packet.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SignalingMetrics", "WebhookMetrics", "watch_event_loop_lag"]


class SignalingMetrics:
    """The room service's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.websocket_connections = Gauge(
            "sfu_websocket_connections", "open WebSocket connections to the room service", registry=registry
        )
        self.signaling_errors = Counter(
            "sfu_signaling_errors", "error replies sent to clients, by protocol error code", ["code"], registry=registry
        )
        self.join_duration = Histogram(
            "sfu_join_duration_seconds",
            "time from a participant's join message to the answer of its first offer",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.http_sessions = Gauge(
            "sfu_http_sessions", "open WHIP and WHEP sessions, by kind", ["kind"], registry=registry
        )
        self.http_requests = Counter(
            "sfu_http_session_requests",
            "WHIP and WHEP requests answered, by kind, method and HTTP status",
            ["kind", "method", "status"],
            registry=registry,
        )
        self.event_loop_lag = Histogram(
            "sfu_event_loop_lag_seconds",
            "how late a 250 ms timer of the event loop fires",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.limit_refusals = Counter(
            "sfu_limit_refusals",
            "requests refused because a limit was reached, by limit (docs/CONFIG.md)",
            ["limit"],
            registry=registry,
        )
        self.reconnections = Counter(
            "sfu_reconnections",
            "clients that vanished without leaving and whose place was kept (away), and joins that asked to "
            "resume one: resumed, or not (the grace period was over, or the key did not match)",
            ["outcome"],
            registry=registry,
        )
        self.webhooks = WebhookMetrics(registry)


class WebhookMetrics:
    """Webhook delivery metrics (:class:`signaling.webhooks.WebhookNotifier`), registered
    on ``registry``. One delivery is one event POSTed to one URL; every counter counts
    deliveries.

    Raises:
        ValueError: the names are already registered on ``registry`` (prometheus-client).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "sfu_webhooks_delivered",
            "webhook deliveries answered with a 2xx status, by event",
            ["event"],
            registry=registry,
        )
        self.retries = Counter(
            "sfu_webhooks_retries",
            "failed webhook attempts that are retried after a backoff, by why the attempt failed",
            ["reason"],
            registry=registry,
        )
        self.dropped = Counter(
            "sfu_webhooks_dropped",
            "webhook deliveries given up, by reason (queue_full, gave_up, closed)",
            ["reason"],
            registry=registry,
        )
        self.queued = Gauge(
            "sfu_webhooks_queued", "webhook deliveries waiting or in flight", registry=registry
        )


async def watch_event_loop_lag(histogram: Histogram, interval: float = 0.25) -> None:
    """Observe, every ``interval`` seconds, how much later than asked the loop woke up
    (a busy or blocked loop delays every packet and message). Runs until cancelled."""
    while True:
        start = time.monotonic()
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, time.monotonic() - start - interval))
