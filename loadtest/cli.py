"""``sfu-loadtest`` / ``python -m loadtest``: headless bots against a room server.

    python -m loadtest --url ws://127.0.0.1:8080/ws --rooms 2 --video-publishers 1 \\
        --subscribers 5 --duration 30 --json report.json --plots plots/

Starts the bots (:mod:`loadtest.runner`), shows live progress on stderr while they
run, then prints the report (:mod:`loadtest.report`) on stdout, and optionally writes
it as JSON and draws PNG plots (:mod:`loadtest.plots`).

Only point it at a server you run: by default the URL must be on loopback
(127.0.0.0/8, ::1, localhost); ``--allow-remote`` accepts another address, such as a
test host in a network namespace you created. Every bot connects to that URL only.

Ctrl-C (SIGINT) or SIGTERM ends the run early; the report is still printed.
Exit status: 0 when the run completed (failed joins and dead bots are in the report),
2 for invalid arguments, 1 when the run itself broke.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .bots import Role
from .report import build_report, render_text
from .runner import LoadConfig, LoadRun, Sample

__all__ = ["main", "parse_args"]

PLAIN_PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("resolution is WIDTHxHEIGHT, e.g. 640x480") from None
    return width, height


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is a loopback address or ``localhost``."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line. Exits with status 2 on invalid arguments."""
    p = argparse.ArgumentParser(prog="sfu-loadtest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="room service WebSocket URL (a server you run)")
    p.add_argument("--allow-remote", action="store_true",
                   help="accept a non-loopback URL (only a test host of your own)")
    p.add_argument("--rooms", type=int, default=1, help="rooms")
    p.add_argument("--video-publishers", type=int, default=1, help="per room: bots publishing VP8 video + Opus")
    p.add_argument("--audio-publishers", type=int, default=0, help="per room: bots publishing Opus only")
    p.add_argument("--subscribers", type=int, default=2, help="per room: bots that subscribe to every track")
    p.add_argument("--resolution", type=_resolution, default=(640, 480), help="video WIDTHxHEIGHT")
    p.add_argument("--fps", type=int, default=30, help="video frames per second")
    p.add_argument("--video-bitrate", type=int, default=1_000_000, help="video bit rate, bit/s")
    p.add_argument("--simulcast", action="store_true", help="video publishers send three RID layers (q/h/f at 1/4, 1/2 and full size)")
    p.add_argument("--join-rate", type=float, default=5.0, help="bots starting to join per second")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds to run after the last bot started joining")
    p.add_argument("--data-rate", type=float, default=0.0,
                   help="DataChannel messages per second each bot sends to its room")
    p.add_argument("--data-size", type=int, default=100, help="bytes per DataChannel message")
    p.add_argument("--join-timeout", type=float, default=20.0, help="seconds for a bot to be ready")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--room-prefix", default="load", help="room names are PREFIX-0, PREFIX-1, ...")
    p.add_argument("--no-server-metrics", action="store_true",
                   help="do not read the server's /metrics and /admin/rooms")
    p.add_argument("--kill-bots", type=int, default=0,
                   help="abruptly kill this many running bots (subscribers first) mid-run, as crashes")
    p.add_argument("--kill-at", type=float, default=None,
                   help="seconds into the steady phase at which to kill them (default: half the duration)")
    p.add_argument("--json", type=Path, help="write the report as JSON to this file")
    p.add_argument("--plots", type=Path, help="write bitrate.png, latency.png and cpu.png into this directory")
    p.add_argument("--progress", choices=["auto", "rich", "plain", "none"], default="auto",
                   help="live progress on stderr (auto: rich on a terminal, else a line every 5 s)")
    p.add_argument("--max-rows", type=int, default=20, help="subscriber rows in the text report")
    p.add_argument("-v", "--verbose", action="store_true", help="log bot events")
    args = p.parse_args(argv)
    if not args.allow_remote and not is_loopback_url(args.url):
        p.error(f"{args.url} is not on loopback; pass --allow-remote only for a test host you run")
    if args.kill_at is None:
        args.kill_at = args.duration / 2
    return args


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The :class:`LoadConfig` the arguments describe."""
    return LoadConfig(
        url=args.url, rooms=args.rooms, video_publishers=args.video_publishers,
        audio_publishers=args.audio_publishers, subscribers=args.subscribers,
        width=args.resolution[0], height=args.resolution[1], fps=args.fps, video_bitrate=args.video_bitrate,
        simulcast=args.simulcast, join_rate=args.join_rate, duration=args.duration,
        data_rate=args.data_rate, data_size=args.data_size, join_timeout=args.join_timeout,
        interval=args.interval, room_prefix=args.room_prefix, loopback_only=is_loopback_url(args.url),
        server_metrics=not args.no_server_metrics, kill_bots=args.kill_bots, kill_at=args.kill_at,
    )


def _progress_table(run: LoadRun, sample: Sample) -> Table:
    planned = run.ramp + run.config.duration
    table = Table(title=f"sfu-loadtest {sample.t:5.1f} s of ~{planned:.0f} s  ({run.config.url})", expand=False)
    for column in ("bots", "subscribers recv", "publishers sent", "latency p50/p95/p99", "loss",
                   "DataChannel/s", "CPU bots / server"):
        table.add_column(column, justify="right")
    states = ", ".join(f"{k} {v}" for k, v in sorted(sample.bots.items()))
    table.add_row(states, *_progress_cells(sample))
    return table


def _progress_cells(sample: Sample) -> list[str]:
    recv = sample.recv_bps.get(Role.SUBSCRIBER.value, 0.0)
    sent = sample.sent_bps.get(Role.VIDEO.value, 0.0) + sample.sent_bps.get(Role.AUDIO.value, 0.0)
    latency = "/".join(f"{v:.1f}" for v in sample.latency_ms) + " ms" if sample.latency_ms else "-"
    server = f"{100 * sample.server_cpu:.0f} %" if sample.server_cpu is not None else "-"
    return [f"{recv / 1e6:.2f} Mbit/s", f"{sent / 1e6:.2f} Mbit/s", latency, f"{100 * sample.loss:.2f} %",
            f"{sample.data_received_per_s:.0f}", f"{100 * sample.bots_cpu:.0f} % / {server}"]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    run = LoadRun(config_from_args(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop early, still report
        loop.add_signal_handler(sig, run.request_stop)
    mode = args.progress
    console = Console(stderr=True)
    if mode == "auto":
        mode = "rich" if console.is_terminal else "plain"
    if mode == "rich":
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            await run.run(lambda r, s: live.update(_progress_table(r, s)))
    elif mode == "plain":
        last = [-PLAIN_PROGRESS_EVERY]

        def line(r: LoadRun, s: Sample) -> None:
            if s.t - last[0] >= PLAIN_PROGRESS_EVERY:
                last[0] = s.t
                states = ", ".join(f"{k} {v}" for k, v in sorted(s.bots.items()))
                print(f"[{s.t:6.1f} s] {states} | " + " | ".join(_progress_cells(s)), file=sys.stderr, flush=True)

        await run.run(line)
    else:
        await run.run()
    return build_report(run)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        # aiortc/aioice log every failed or closed connection; the report counts them.
        for name in ("aioice", "aiortc", "loadtest.client"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        config_from_args(args).validate()
    except ValueError as exc:
        print(f"sfu-loadtest: error: {exc}", file=sys.stderr)
        return 2
    report = uvloop.run(_run(args))
    print(render_text(report, args.max_rows))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nJSON report: {args.json}")
    if args.plots:
        from .plots import write_plots

        paths = write_plots(report, args.plots)
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
