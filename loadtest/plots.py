"""PNG plots of a load run's timeline (matplotlib, Agg backend: no display needed).

:func:`write_plots` draws, from a report's ``timeline`` (:mod:`loadtest.report`):

* ``bitrate.png``: received and sent bit rate per role over time (Mbit/s);
* ``latency.png``: media forwarding latency p50 / p95 / p99 per interval (ms), and the
  DataChannel p99 when DataChannels were used;
* ``cpu.png``: CPU of the bots' process and of the server (% of one core), with the
  number of running bots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["write_plots"]


def write_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write the three PNGs into ``directory`` (created if missing).

    Returns:
        the paths written.

    Raises:
        OSError: the directory or a file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    timeline = report["timeline"]
    t = [s["t"] for s in timeline]
    title = (f"{report['config']['rooms']} room(s), {report['config']['video_publishers']}+"
             f"{report['config']['audio_publishers']} publishers, {report['config']['subscribers']} subscribers per room")
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    roles = sorted({role for s in timeline for role in s["recv_bps"]})
    for role in roles:
        recv = [s["recv_bps"].get(role, 0.0) / 1e6 for s in timeline]
        sent = [s["sent_bps"].get(role, 0.0) / 1e6 for s in timeline]
        if any(recv):
            ax.plot(t, recv, label=f"{role} received")
        if any(sent):
            ax.plot(t, sent, linestyle="--", label=f"{role} sent")
    ax.set(xlabel="time (s)", ylabel="Mbit/s (all bots of the role)", title=f"Bit rate: {title}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    paths.append(_save(fig, directory / "bitrate.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, name in enumerate(("p50", "p95", "p99")):
        points = [(s["t"], s["latency_ms"][i]) for s in timeline if s["latency_ms"]]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=f"media {name}")
    data = [(s["t"], s["data_latency_ms"][2]) for s in timeline if s["data_latency_ms"]]
    if data:
        ax.plot(*zip(*data, strict=True), linestyle=":", label="DataChannel p99")
    ax.set(xlabel="time (s)", ylabel="ms", title="Forwarding latency (publisher send to subscriber arrival)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    paths.append(_save(fig, directory / "latency.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [100 * s["bots_cpu"] for s in timeline], label="bots (this process)")
    server = [(s["t"], 100 * s["server_cpu"]) for s in timeline if s["server_cpu"] is not None]
    if server:
        ax.plot(*zip(*server, strict=True), label="server")
    ax.set(xlabel="time (s)", ylabel="% of one core", title="CPU")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    running = ax.twinx()
    running.step(t, [s["bots"].get("running", 0) for s in timeline], where="post", color="grey", alpha=0.5,
                 label="bots running")
    running.set_ylabel("bots running")
    running.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    extra = running.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper left")
    paths.append(_save(fig, directory / "cpu.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
