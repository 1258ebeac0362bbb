"""The end-of-run report of a :class:`~loadtest.runner.LoadRun`: a JSON-ready dict
(:func:`build_report`) and its text form (:func:`render_text`).

Units in the dict: bit rates in bit/s (``*_bps``), times in ms (``*_ms``) or s
(``*_s``), loss as a fraction (0.01 = 1 %), CPU as a fraction of one core.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

from .bots import Role
from .runner import LoadRun, metric_sum, percentiles

__all__ = ["build_report", "render_text"]


def _pct(values: Any, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float] | None:
    result = percentiles(values, qs)
    if result is None:
        return None
    return {f"p{q:g}": round(v, 3) for q, v in zip(qs, result, strict=True)}


def _delta(run: LoadRun, name: str) -> float | None:
    """The growth of a server counter over the run; a labelled counter that had no
    sample yet at the start counts from 0. None when the server does not export it."""
    before, after = metric_sum(run.server_before, name), metric_sum(run.server_after, name)
    if after is None or run.server_before is None:
        return None
    return after - (before or 0.0)


def build_report(run: LoadRun) -> dict[str, Any]:
    """Everything the run measured, JSON-ready (see the module docstring for units)."""
    config = run.config
    end = run.ended_at
    totals = run.final_totals
    joins_ok = [b for b in run.bots if b.join_ms is not None]
    failed = [b for b in run.bots if b.state == "failed"]
    reasons: dict[str, int] = {}
    for bot in failed:
        reasons[bot.error or "?"] = reasons.get(bot.error or "?", 0) + 1
    states: dict[str, int] = {}
    for bot in run.bots:
        states[bot.state] = states.get(bot.state, 0) + 1
    layers = run.layers

    roles: dict[str, Any] = {}
    subscribers: list[dict[str, Any]] = []
    for role in Role:
        bots = [b for b in run.bots if b.role is role]
        if not bots:
            continue
        recv_rates, sent_rates, fps = [], [], []
        packets = expected = lost = frames = keyframes = gaps = rtp_sent = 0
        all_latency: list[float] = []
        for bot in bots:
            t = totals.get(bot.name)
            if t is None:
                continue
            packets += t.recv_packets
            expected += t.recv_expected
            lost += t.recv_lost
            frames += t.recv_frames
            keyframes += t.recv_keyframes
            gaps += t.recv_gaps
            rtp_sent += bot.rtp_sent
            received_for = t.last_arrival - t.first_arrival
            recv_bps = t.recv_bytes * 8 / received_for if t.recv_packets > 1 and received_for > 0 else None
            if recv_bps is not None:
                recv_rates.append(recv_bps)
                if t.video_streams:
                    fps.append(t.recv_frames / received_for / t.video_streams)
            if t.sent_since and t.sent_bytes:
                sent_rates.append(t.sent_bytes * 8 / max(1e-6, min(end, t.at) - t.sent_since))
            latency = run.latencies.get(bot.name, ())
            all_latency.extend(latency)
            if role is Role.SUBSCRIBER:
                subscribers.append({
                    "name": bot.name, "room": bot.room, "state": bot.state, "error": bot.error,
                    "join_ms": None if bot.join_ms is None else round(bot.join_ms, 1),
                    "video_streams": t.video_streams, "audio_streams": t.audio_streams,
                    "recv_bps": None if recv_bps is None else round(recv_bps),
                    "packets": t.recv_packets, "lost": t.recv_lost, "gaps": t.recv_gaps,
                    "loss": t.recv_lost / t.recv_expected if t.recv_expected else 0.0,
                    "frames": t.recv_frames, "keyframes": t.recv_keyframes,
                    "latency_ms": _pct(latency),
                    "layers": layers.get(bot.name, {}),
                })
        roles[role.value] = {
            "bots": len(bots),
            "joined": sum(1 for b in bots if b.join_ms is not None),
            "recv_bps_mean": round(sum(recv_rates) / len(recv_rates)) if recv_rates else None,
            "recv_bps_total": round(sum(recv_rates)) if recv_rates else 0,
            "sent_bps_mean": round(sum(sent_rates) / len(sent_rates)) if sent_rates else None,
            "packets_received": packets,
            "packets_expected": expected,
            "packets_lost": lost,
            "loss": lost / expected if expected else 0.0,
            "frames_received": frames,
            "keyframes_received": keyframes,
            "gaps": gaps,
            "fps_mean": round(sum(fps) / len(fps), 2) if fps else None,
            "rtp_packets_sent": rtp_sent,
            "latency_ms": _pct(all_latency, (50, 95, 99, 100)),
            "latency_samples": len(all_latency),
        }

    data = None
    if config.data_rate > 0:
        data = {
            "rate_per_bot": config.data_rate,
            "sent": sum(t.data_sent for t in totals.values()),
            "skipped": sum(t.data_skipped for t in totals.values()),
            "received": sum(t.data_received for t in totals.values()),
            "latency_ms": _pct(run.data_latencies, (50, 95, 99, 100)),
        }

    server = None
    if run.server_after is not None and run.server_before is not None:
        window = end - run.started_at
        cpu = _delta(run, "process_cpu_seconds_total")
        server = {
            "rtp_packets_received": _delta(run, "sfu_rtp_packets_received_total"),
            "rtp_packets_sent": _delta(run, "sfu_rtp_packets_sent_total"),
            "rtp_packets_dropped": _delta(run, "sfu_rtp_packets_dropped_total"),
            "datachannel_messages_sent": _delta(run, "sfu_datachannel_messages_sent_total"),
            "cpu_s": cpu,
            "cpu_share": cpu / window if cpu is not None and window > 0 else None,
            "participants_at_end": metric_sum(run.server_after, "sfu_participants"),
            "rss_bytes_at_end": metric_sum(run.server_after, "process_resident_memory_bytes"),
        }

    steady = [s for s in run.samples if s.t >= run.steady_at - run.started_at]
    errors: dict[str, int] = {}
    for bot in run.bots:
        if bot.error:
            key = f"{bot.state}: {bot.error}"
            errors[key] = errors.get(key, 0) + 1
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "run_s": round(end - run.started_at, 3),
        "steady_s": round(end - run.steady_at, 3),
        "joins": {
            "attempted": sum(1 for b in run.bots if b.state != "not_started"),
            "ok": len(joins_ok),
            "failed": len(failed),
            "failed_by_reason": reasons,
            "join_ms": _pct([b.join_ms for b in joins_ok], (50, 95, 100)),
        },
        "bots": {"total": len(run.bots), "by_state": states, "killed": list(run.killed)},
        "roles": roles,
        "subscribers": subscribers,
        "datachannels": data,
        "server": server,
        "cpu": {
            "bots_mean": _mean([s.bots_cpu for s in steady]),
            "server_mean": _mean([s.server_cpu for s in steady if s.server_cpu is not None]),
        },
        "errors": errors,
        "run_errors": list(run.errors),
        "timeline": [dataclasses.asdict(s) for s in run.samples],
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _bps(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.2f} Mbit/s" if value >= 1e5 else f"{value / 1e3:.1f} kbit/s"


def _ms(p: dict[str, float] | None, keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    if not p:
        return "-"
    return " / ".join(f"{p[k]:.1f}" for k in keys if k in p) + " ms"


def _share(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f} % of a core"


def render_text(report: dict[str, Any], max_subscribers: int = 20) -> str:
    """The report for people: joins, per role figures, subscribers, DataChannels,
    server counters, CPU, errors. At most ``max_subscribers`` subscriber rows."""
    c = report["config"]
    j = report["joins"]
    lines = [
        f"Load test against {c['url']}: {c['rooms']} room(s) x ({c['video_publishers']} video publishers, "
        f"{c['audio_publishers']} audio publishers, {c['subscribers']} subscribers), "
        f"{c['width']}x{c['height']} VP8 {c['fps']} fps",
        f"run {report['run_s']:.1f} s, steady {report['steady_s']:.1f} s; bots by state: "
        + ", ".join(f"{k} {v}" for k, v in sorted(report["bots"]["by_state"].items())),
        "",
        f"joins: {j['ok']} ok, {j['failed']} failed"
        + (" (" + ", ".join(f"{k} {v}" for k, v in j["failed_by_reason"].items()) + ")" if j["failed"] else "")
        + f"; join time p50 / p95 / max: {_ms(j['join_ms'], ('p50', 'p95', 'p100'))}",
    ]
    if report["bots"]["killed"]:
        lines.append(f"killed mid-run: {', '.join(report['bots']['killed'])}")
    lines += ["", f"{'role':<16} {'bots':>5} {'joined':>6} {'recv/bot':>13} {'sent/bot':>13} "
              f"{'loss':>8} {'gaps':>5} {'fps':>6}  latency p50/p95/p99"]
    for role, r in report["roles"].items():
        lines.append(
            f"{role:<16} {r['bots']:>5} {r['joined']:>6} {_bps(r['recv_bps_mean']):>13} {_bps(r['sent_bps_mean']):>13} "
            f"{100 * r['loss']:>7.2f}% {r['gaps']:>5} {r['fps_mean'] if r['fps_mean'] is not None else '-':>6}  "
            f"{_ms(r['latency_ms'])}"
        )
    subs = report["subscribers"]
    if subs:
        lines += ["", f"{'subscriber':<22} {'state':<8} {'streams':>7} {'bitrate':>13} {'loss':>8} "
                  f"{'frames':>7} {'key':>4}  {'latency p50/p99':<18} layers"]
        for s in subs[:max_subscribers]:
            lat = _ms(s["latency_ms"], ("p50", "p99"))
            layer_text = ",".join(sorted(set(s["layers"].values()))) or "-"
            lines.append(
                f"{s['name']:<22} {s['state']:<8} {s['video_streams'] + s['audio_streams']:>7} {_bps(s['recv_bps']):>13} "
                f"{100 * s['loss']:>7.2f}% {s['frames']:>7} {s['keyframes']:>4}  {lat:<18} {layer_text}"
            )
        if len(subs) > max_subscribers:
            lines.append(f"... and {len(subs) - max_subscribers} more (see --json)")
    d = report["datachannels"]
    if d:
        lines += ["", f"DataChannel: {d['rate_per_bot']:g} msg/s per bot; sent {d['sent']}, skipped {d['skipped']}, "
                  f"delivered {d['received']}; latency p50/p95/p99 {_ms(d['latency_ms'])}"]
    s = report["server"]
    if s:
        def n(v: float | None) -> str:
            return "-" if v is None else f"{v:,.0f}"
        lines += ["", f"server counters over the run: RTP received {n(s['rtp_packets_received'])}, "
                  f"forwarded {n(s['rtp_packets_sent'])}, dropped {n(s['rtp_packets_dropped'])}; "
                  f"CPU {_share(s['cpu_share'])}; participants at end {n(s['participants_at_end'])}"]
    cpu = report["cpu"]
    lines.append(f"CPU in the steady phase: bots {_share(cpu['bots_mean'])}, server {_share(cpu['server_mean'])}")
    if report["errors"] or report["run_errors"]:
        lines += ["", "errors:"]
        lines += [f"  {count} x {key}" for key, count in sorted(report["errors"].items())]
        lines += [f"  {e}" for e in report["run_errors"]]
    else:
        lines += ["", "errors: none"]
    return "\n".join(lines)
