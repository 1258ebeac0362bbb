"""The load-test CLI (``python -m loadtest``) against a real server on loopback.

Each test runs the CLI as a subprocess with a small load for a few seconds and checks
its JSON report against what the server's own counters (``/metrics``) say, and that
bot failures (a refused join, a bot killed mid-run) end up in the report instead of
ending the run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.client import RoomClient
from loadtest.latency import FrameSendLog
from loadtest.media import encode_vp8_clip
from loadtest.runner import metric_sum
from loadtest.server import REPO_ROOT, ServerProcess, free_port
from loadtest.simulcast import simulcast_clips

CLI_TIMEOUT = 90.0  # seconds; a run of these sizes takes ~10 s


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m loadtest ARGS`` (no live progress), bounded by CLI_TIMEOUT."""
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "--progress", "none", *args],
        cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )


def run_report(server: ServerProcess, tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run the CLI against ``server``; return (JSON report, stdout). Fails on a
    non-zero exit status."""
    out = tmp_path / "report.json"
    result = run_cli("--url", server.ws_url, "--json", str(out), *args)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(out.read_text()), result.stdout


def test_report_matches_the_servers_counters(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """2 rooms x (1 video publisher, 1 audio publisher, 2 subscribers) with DataChannel
    traffic: every join succeeds, the subscribers' packet counts add up to what the
    server says it forwarded, the publishers' to what it received, latency is
    measured, and the plots are PNG files."""
    server = start_server()
    before = server.metrics()
    report, stdout = run_report(
        server, tmp_path, "--rooms", "2", "--video-publishers", "1", "--audio-publishers", "1",
        "--subscribers", "2", "--join-rate", "20", "--duration", "4", "--data-rate", "5",
        "--plots", str(tmp_path / "plots"),
    )
    after = server.metrics()

    assert report["joins"] == {**report["joins"], "attempted": 8, "ok": 8, "failed": 0}
    assert "joins: 8 ok, 0 failed" in stdout
    assert report["bots"]["by_state"] == {"left": 8}

    subs = report["roles"]["subscriber"]
    received = subs["packets_received"]
    server_sent = report["server"]["rtp_packets_sent"]
    # The report reads the server's counter just after the bots' own: the difference
    # is what was in flight then (a few ms of 4 subscribers x ~190 packets/s).
    assert 0 < received <= server_sent <= received * 1.03 + 20, (received, server_sent)
    # The whole run, by the test's own reading of /metrics, covers the report's window.
    total_sent = metric_sum(after, "sfu_rtp_packets_sent_total") - metric_sum(before, "sfu_rtp_packets_sent_total")
    assert server_sent <= total_sent

    published = report["roles"]["video_publisher"]["rtp_packets_sent"] + report["roles"]["audio_publisher"]["rtp_packets_sent"]
    server_received = report["server"]["rtp_packets_received"]
    # The publishers' counters are read a moment before the server's: a packet or two
    # sent in between counts at the server only.
    assert 0.97 * published - 20 <= server_received <= published + 5, (published, server_received)

    assert subs["loss"] == 0.0
    for sub in report["subscribers"]:
        assert sub["video_streams"] == 1 and sub["audio_streams"] == 2, sub
        assert 0.5e6 < sub["recv_bps"] < 2.5e6, sub
        assert sub["frames"] > 60 and sub["keyframes"] >= 2, sub
        assert sub["layers"] and set(sub["layers"].values()) == {"single"}, sub
        assert 0 < sub["latency_ms"]["p50"] < 50, sub
    # A latency sample for (almost) every frame: 2 subscribers x 2 rooms.
    assert subs["latency_samples"] >= 0.9 * subs["frames_received"]

    data = report["datachannels"]
    # Each message reaches the 3 others of its room; the last ones may be in flight.
    assert data["sent"] > 100 and 0.9 * 3 * data["sent"] <= data["received"] <= 3 * data["sent"], data
    assert data["latency_ms"]["p50"] < 50

    assert len(report["timeline"]) >= 4
    for name in ("bitrate.png", "latency.png", "cpu.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulcast_publishers_send_three_layers_and_subscribers_get_one(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """With --simulcast a video publisher sends q/h/f as three RID layers: the server
    receives all three (its admin view), every subscriber gets one layer, told by
    ``layer_changed`` (the report's layer), and the packet counts still add up."""
    server = start_server()
    report, _ = run_report(
        server, tmp_path, "--simulcast", "--video-publishers", "1", "--audio-publishers", "0",
        "--subscribers", "2", "--resolution", "640x360", "--video-bitrate", "600000",
        "--join-rate", "20", "--duration", "4",
    )
    assert report["joins"]["ok"] == 3 and report["joins"]["failed"] == 0, report["joins"]
    publisher = report["roles"]["video_publisher"]
    server_received = report["server"]["rtp_packets_received"]
    assert 0.97 * publisher["rtp_packets_sent"] - 20 <= server_received <= publisher["rtp_packets_sent"]
    # Only one of the three layers goes to each subscriber.
    subs = report["roles"]["subscriber"]
    assert 0 < subs["packets_received"] < 0.9 * server_received
    for sub in report["subscribers"]:
        assert sub["video_streams"] == 1 and sub["frames"] > 40, sub
        assert set(sub["layers"].values()) <= {"q", "h", "f"} and sub["layers"], sub
        assert 0 < sub["latency_ms"]["p50"] < 50, sub  # frames of any layer are matched


def test_simulcast_bot_layers_reach_the_server(start_server: Callable[..., ServerProcess]) -> None:
    """The raw-RTP simulcast sender: the server binds q, h and f by RID, measures each
    layer's resolution and bit rate, and the subscriber's layer follows its cap."""

    async def scenario() -> None:
        server = start_server()
        clips = simulcast_clips(640, 360, 20, 600_000)
        pub, sub = RoomClient(server.ws_url, auto_subscribe=False), RoomClient(server.ws_url)
        sender_task = None
        try:
            await pub.join("sim", "pub")
            await sub.join("sim", "sub")
            track_id, sender = await pub.publish_simulcast(clips)
            await pub.wait_connected(10)
            sender_task = asyncio.create_task(sender.run())
            await sub.wait_until(lambda: track_id in sub.subscriptions, timeout=10)
            await sub.next_event("layer_changed", timeout=10)
            await asyncio.sleep(1.5)
            await sub.set_track_settings(track_id, max_height=90)  # q (160x90) covers it
            async with asyncio.timeout(10):
                event = await sub.next_event("layer_changed")
                while event["reason"] != "preference":  # an earlier change may still be queued
                    event = await sub.next_event("layer_changed")
            assert (event["rid"], event["height"]) == ("q", 90), event
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{server.http_url}/admin/rooms") as response:
                    rooms = await response.json()
            (published,) = [p for p in rooms["rooms"][0]["participants"] if p["name"] == "pub"][0]["published"]
            layers = {layer["rid"]: layer for layer in published["layers"]}
            assert set(layers) == {"q", "h", "f"}
            assert [(layers[r]["width"], layers[r]["height"]) for r in "qhf"] == [(160, 90), (320, 180), (640, 360)]
            assert all(layers[r]["packetsReceived"] > 20 and layers[r]["bitrate"] for r in "qhf"), layers
            assert layers["q"]["bitrate"] < layers["h"]["bitrate"] < layers["f"]["bitrate"]
        finally:
            if sender_task is not None:
                sender_task.cancel()
            await asyncio.gather(pub.close(), sub.close())

    asyncio.run(scenario())


def test_refused_joins_are_failed_joins(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """A server that takes 2 participants per room: 2 of 4 bots join, the other 2 are
    reported as failed with the server's reason, and the run completes."""
    server = start_server("--max-participants", "2")
    report, stdout = run_report(server, tmp_path, "--subscribers", "3", "--join-rate", "20", "--duration", "3")
    joins = report["joins"]
    assert (joins["ok"], joins["failed"]) == (2, 2)
    assert joins["failed_by_reason"] == {"room_full": 2}
    assert "2 ok, 2 failed (room_full 2)" in stdout
    assert report["errors"] == {"failed: room_full": 2}
    joined = [s for s in report["subscribers"] if s["state"] == "left"]
    assert len(joined) == 1 and joined[0]["packets"] > 100


def test_a_killed_bot_does_not_stop_the_run(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """One subscriber is killed abruptly 1 s into the steady phase: the run goes on to
    the end, the others keep receiving, and the server sees the killed one leave (once
    the 2 s it keeps a vanished participant's place for a reconnection are over)."""
    server = start_server("--reconnect-grace", "2")
    report, stdout = run_report(
        server, tmp_path, "--subscribers", "3", "--join-rate", "20", "--duration", "5",
        "--kill-bots", "1", "--kill-at", "1",
    )
    assert len(report["bots"]["killed"]) == 1
    assert report["bots"]["by_state"] == {"left": 3, "killed": 1}
    assert "killed mid-run" in stdout
    killed = next(s for s in report["subscribers"] if s["state"] == "killed")
    others = [s for s in report["subscribers"] if s["state"] == "left"]
    assert len(others) == 2
    for sub in others:
        # ~4 s more of media than the killed one (~190 packets/s).
        assert sub["packets"] > killed["packets"] + 400, (sub, killed)
        assert sub["loss"] == 0.0
    # Read before the others left: the publisher and the 2 live subscribers.
    assert report["server"]["participants_at_end"] == 3
    assert report["run_s"] >= 5


def test_sigterm_ends_the_run_early_with_a_report(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """SIGTERM (as Ctrl-C) to a 60 s run: it stops within seconds, the bots leave,
    and the report is still written."""
    server = start_server()
    out = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "--progress", "none", "--url", server.ws_url, "--subscribers", "1",
         "--duration", "60", "--json", str(out)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        # Well past 300, so that what is still in flight at SIGTERM cannot matter below.
        while time.monotonic() < deadline and metric_sum(server.metrics(), "sfu_rtp_packets_sent_total") < 400:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    report = json.loads(out.read_text())
    assert report["run_errors"] == ["stopped early on request"]
    assert report["run_s"] < 30
    assert report["bots"]["by_state"] == {"left": 2}
    assert report["roles"]["subscriber"]["packets_received"] > 300
    assert "stopped early on request" in stdout


def test_no_server_gives_failed_joins_not_a_crash(tmp_path: Path) -> None:
    """Nothing listens on the port: every join fails as ``connection``, the server's
    metrics are reported unreadable, and the run still completes with a report."""
    out = tmp_path / "report.json"
    result = run_cli("--url", f"ws://127.0.0.1:{free_port()}/ws", "--subscribers", "2", "--join-rate", "20",
                     "--duration", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["joins"]["ok"] == 0 and report["joins"]["failed_by_reason"] == {"connection": 3}
    assert report["server"] is None and "server metrics not readable" in report["run_errors"][0]
    assert "0 ok, 3 failed (connection 3)" in result.stdout


def test_invalid_runs_are_refused_with_status_2(tmp_path: Path) -> None:
    """A URL off loopback needs --allow-remote, and counts cannot be negative; both
    exit with status 2 and say why, before any bot connects."""
    result = run_cli("--subscribers", "-1", "--duration", "1")
    assert result.returncode == 2 and "bot counts must be >= 0" in result.stderr
    result = run_cli("--url", "ws://192.0.2.1:8080/ws")
    assert result.returncode == 2 and "not on loopback" in result.stderr


def test_latency_send_log_attributes_a_frame_to_the_right_loop() -> None:
    """The publisher's send log: a frame's fingerprint finds its latest send not after
    the arrival; a frame sent again later (next loop) does not hide the earlier send."""
    clip = encode_vp8_clip(160, 120, seconds=1.0)
    log = FrameSendLog(clip)
    assert len(log.fingerprints) == len(clip.packets)  # every frame told apart
    fingerprint = clip.packets[5][: log.prefix]
    assert log.send_time(fingerprint, 100.0) is None  # never sent
    log.record(5, 10.0)
    assert log.send_time(fingerprint, 10.02) == 10.0
    log.record(5, 11.0)  # the next loop
    assert log.send_time(fingerprint, 10.03) == 10.0
    assert log.send_time(fingerprint, 11.01) == 11.0
    assert log.send_time(b"\x00" * log.prefix, 11.01) is None
