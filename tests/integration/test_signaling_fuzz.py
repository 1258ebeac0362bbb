"""A property-based fuzz (hypothesis) of the signaling endpoint over a real WebSocket.

The strategies, the per-message property and the harness are in
:mod:`tests.fuzz.signaling` (its docstring says what is generated and checked); this test
runs ~10^4 messages of it against one server in development mode (joins without a
token), with seeded hypothesis runs (the same choices every time; frames that embed
run-time values, the server's tokens and aiortc's offers, differ a little). The
long run (10^6 messages) is ``python -m tests.fuzz.signaling --messages 1000000``;
figures in docs/BENCHMARKS.md.

After the fuzz: no message went unanswered or got ``internal``, the server log holds no
traceback, the calm pair in room ``calm`` stayed connected and still receives, and the
server's RSS and asyncio task count are back near where they started.
"""

from __future__ import annotations

from loadtest.server import ServerProcess
from tests.fuzz.signaling import SignalingFuzz, text_frame

MESSAGES = 6_000  # frames sent and judged (each also followed by a ping); long runs: docs/BENCHMARKS.md
SEED = 20261201  # hypothesis seed of the first batch; batch n uses SEED + n
WARMUP = 1_000  # frames before the baseline sample (lazy imports, first PeerConnections)
MIB = 1024 * 1024
RSS_GROWTH_LIMIT = 50 * MIB  # end of the fuzz vs. before it
RSS_PEAK_LIMIT = 150 * MIB  # at any time (frames of up to 512 KiB on 3 connections at once)
TASK_SLACK = 3  # asyncio tasks at the end vs. before the fuzz

# Frames that once broke the property, sent first (the fuzz found them).
REGRESSIONS = [
    # a lone surrogate in a join's token: PyJWT raised UnicodeEncodeError -> 'internal'
    '{"type": "join", "token": "\\ud800", "name": "y"}',
    '{"type": "join", "token": "eyJhbGciOiJIUzI1NiJ9.e30.\\udfff"}',
]


def test_fuzzed_signaling_gets_answers_and_leaves_other_rooms_alone(server: ServerProcess) -> None:
    fuzz = SignalingFuzz(server)
    try:
        fuzz.start()
        fuzz.run_example([[text_frame(frame, "regression") for frame in REGRESSIONS]])
        fuzz.run(MESSAGES, seed=SEED, batch=100, warmup=WARMUP)
        report = fuzz.finish()
    finally:
        fuzz.close()
    print(report.format())
    stats = report.stats
    summary = report.format()

    assert stats.messages >= MESSAGES
    assert not stats.violations, summary
    assert not report.tracebacks, summary
    # Most frames were really handled: answered by something other than rate_limited.
    assert stats.answered >= 0.9 * stats.messages, summary
    assert stats.rate_limited <= 0.01 * stats.messages, summary
    assert stats.errors["bad_message"] > 500 and stats.errors["bad_json"] > 500, summary
    assert stats.replies["joined"] > 100 and stats.replies["answer"] > 50, summary

    # The calm pair in another room never noticed.
    assert not report.calm_problems, summary
    assert report.calm_packets > 1000 and report.calm_packets_after > 0, summary
    assert report.calm_max_stall_s < 5.0, summary

    # Bounded resources.
    assert report.rss_end - report.rss_start < RSS_GROWTH_LIMIT, summary
    assert report.rss_peak - report.rss_start < RSS_PEAK_LIMIT, summary
    if report.tasks_start is None or report.tasks_end is None:
        print("sfu_asyncio_tasks is not on /metrics: the task count was not checked")
    else:
        assert report.tasks_end <= report.tasks_start + TASK_SLACK, summary
