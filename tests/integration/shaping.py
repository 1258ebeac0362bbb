"""Shaping loopback links with ``tc`` (iproute2, root) for tests: traffic to one UDP
port goes through an HTB class of a given rate with a short FIFO, so what exceeds the
rate is dropped (the kernel here has no netem). See TESTING.md."""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator

__all__ = ["shaped_port", "set_rate", "candidate_port", "random_loss"]


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def shaped_port(port: int | list[int], rate_kbit: int, queue_packets: int = 10) -> Iterator[None]:
    """Limit UDP traffic to local ``port`` (or to any of a list of ports: every candidate
    of one peer, which may move its media to another of its pairs) to ``rate_kbit``
    kbit/s together, dropping what overflows a FIFO of ``queue_packets``; everything else
    on ``lo`` is untouched. The shaping is removed on exit, whatever happened."""
    _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q", "100000")
    try:
        _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit")
        _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
            "rate", f"{rate_kbit}kbit", "ceil", f"{rate_kbit}kbit")
        _tc("qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "pfifo", "limit", str(queue_packets))
        for one in [port] if isinstance(port, int) else port:
            _tc("filter", "add", "dev", "lo", "protocol", "ip", "parent", "1:", "prio", "1", "u32",
                "match", "ip", "protocol", "17", "0xff", "match", "ip", "dport", str(one), "0xffff", "flowid", "1:20")
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)


def set_rate(rate_kbit: int) -> None:
    """Change the rate of the link that :func:`shaped_port` set up (it must be in
    effect) to ``rate_kbit`` kbit/s, keeping its port filter and FIFO: models a link
    that degrades or recovers while a test runs."""
    _tc("class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
        "rate", f"{rate_kbit}kbit", "ceil", f"{rate_kbit}kbit")


def candidate_port(sdp: str) -> int:
    """The port of the first 127.0.0.1 host candidate in an SDP.

    Raises:
        ValueError: there is none.
    """
    match = re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host", sdp)
    if match is None:
        raise ValueError("no 127.0.0.1 host candidate in the SDP")
    return int(match.group(1))


@contextlib.contextmanager
def random_loss(probability: float, *, sport: int | None = None, dport: int | None = None) -> Iterator[None]:
    """Drop UDP datagrams on ``lo`` from source port ``sport`` and/or to destination
    port ``dport`` at random with ``probability`` (0..1): loss without a queue, the
    way a lossy radio link loses (iptables ``statistic`` match, TESTING.md; this kernel
    has no netem). The rule is deleted on exit, whatever happened.

    Raises:
        ValueError: neither port given.
    """
    if sport is None and dport is None:
        raise ValueError("random_loss needs a port to match")
    ports = (["--sport", str(sport)] if sport is not None else []) + (["--dport", str(dport)] if dport is not None else [])
    rule = ["INPUT", "-i", "lo", "-p", "udp", *ports,
            "-m", "statistic", "--mode", "random", "--probability", f"{probability:.4f}", "-j", "DROP"]
    subprocess.run(["iptables", "-A", *rule], check=True, capture_output=True, text=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], capture_output=True)
