"""What the single-port demultiplexer (``sfu/rtc/udp_mux.py``) adds per datagram, in
isolation: the routing of one received SRTP datagram by its source address, and the
extra call of one ``sendto`` through a connection's virtual transport, each against
the call the normal mode makes directly (no system call in either: the protocol and the
socket's ``sendto`` are no-ops here).

    python -m loadtest.bench_udp_mux --connections 50 --datagrams 1000000 --repeat 5

The end-to-end figure, with the system calls and the event loop, is
``python -m loadtest.bench_forward --compare-udp-port P`` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aioice
from aioice import stun

from sfu.rtc.udp_mux import SharedSocket, UdpMux

SRTP = b"\x80\x60" + bytes(1100)  # a video-sized SRTP datagram


class _NullProtocol(asyncio.DatagramProtocol):
    """A connection's protocol that does nothing with what it receives."""

    def __init__(self) -> None:
        self.receiver = aioice.Connection(ice_controlling=False)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        pass


class _NullTransport:
    """The shared socket's transport, minus the system call."""

    def sendto(self, data: bytes, addr: Any = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name == "sockname" else default

    def is_closing(self) -> bool:
        return False


def _per_call_ns(fn: Any, calls: list[tuple[Any, ...]], rounds: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(rounds):
        for args in calls:
            fn(*args)
    return (time.perf_counter_ns() - start) / (rounds * len(calls))


async def _run(args: argparse.Namespace) -> None:
    mux = UdpMux(9)  # never bound: the shared socket below is attached by hand
    shared = SharedSocket()
    shared.connection_made(_NullTransport())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    mux._sockets["127.0.0.1"] = loop.create_future()  # a benchmark of the internals
    mux._sockets["127.0.0.1"].set_result(shared)
    transports, addrs = [], []
    for i in range(args.connections):
        muxed, protocol = await mux.endpoint(_NullProtocol, "127.0.0.1")
        addr = ("10.0.0.1", 20000 + i)
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = f"{muxed.ufrag}:client"
        check.add_message_integrity(muxed.key)
        shared.datagram_received(bytes(check), addr)
        assert addr in muxed.addresses
        transports.append((muxed, protocol))
        addrs.append(addr)
    rounds = max(1, args.datagrams // args.connections)
    routed = [(shared.datagram_received, SRTP, a) for a in addrs]
    direct_receive = [(p.datagram_received, SRTP, a) for (_, p), a in zip(transports, addrs)]
    sends = [(m.sendto, SRTP, a) for (m, _), a in zip(transports, addrs)]
    null_send = _NullTransport().sendto
    results: dict[str, list[float]] = {k: [] for k in ("receive direct", "receive routed", "send direct", "send muxed")}
    for _ in range(args.repeat):
        results["receive direct"].append(_per_call_ns(lambda f, d, a: f(d, a), direct_receive, rounds))
        results["receive routed"].append(_per_call_ns(lambda f, d, a: f(d, a), routed, rounds))
        results["send direct"].append(_per_call_ns(lambda f, d, a: null_send(d, a), sends, rounds))
        results["send muxed"].append(_per_call_ns(lambda f, d, a: f(d, a), sends, rounds))
    print(f"{args.connections} connections, {rounds * args.connections:,} datagrams per measurement, "
          f"{args.repeat} repeats (median, ns per datagram)")
    median = {k: statistics.median(v) for k, v in results.items()}
    for key, values in results.items():
        print(f"  {key:<15} {median[key]:7.1f}   ({', '.join(f'{v:.1f}' for v in values)})")
    print(f"routing one received datagram: +{median['receive routed'] - median['receive direct']:.1f} ns; "
          f"one sendto through the virtual transport: +{median['send muxed'] - median['send direct']:.1f} ns")
    for muxed, _ in transports:
        muxed.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_udp_mux", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50, help="connections on the shared socket (default 50)")
    parser.add_argument("--datagrams", type=int, default=1_000_000, help="datagrams per measurement (default 10^6)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements of each (default 5)")
    args = parser.parse_args(argv)
    if not (1 <= args.connections <= 10_000 and 1 <= args.datagrams <= 10**8 and 1 <= args.repeat <= 50):
        parser.error("--connections 1-10000, --datagrams 1-10^8, --repeat 1-50")
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
