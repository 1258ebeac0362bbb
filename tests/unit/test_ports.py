"""The UDP port range of the media sockets (sfu/rtc/ports.py), on a real loop."""

import asyncio
import socket

import aioice.ice
import pytest

from sfu.rtc.ports import PortRangeFull, port_range, set_udp_port_range


def _free_pair() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            low = s.getsockname()[1]
        if low < 65535:
            return low
    raise RuntimeError("no port")


async def test_binds_inside_the_range_then_reports_it_full():
    low = _free_pair()
    set_udp_port_range(low, low + 1)
    try:
        assert port_range() == (low, low + 1)
        loop = aioice.ice.asyncio.get_running_loop()  # what aioice sees
        ports, transports = set(), []
        for _ in range(2):
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            transports.append(transport)
            ports.add(transport.get_extra_info("sockname")[1])
        assert ports == {low, low + 1}
        with pytest.raises(PortRangeFull):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        for t in transports:
            t.close()
    finally:
        set_udp_port_range(None)
    assert aioice.ice.asyncio is asyncio and port_range() is None


def test_bad_ranges():
    for low, high in ((0, 10), (10, 5), (60000, 70000)):
        with pytest.raises(ValueError):
            set_udp_port_range(low, high)
    assert port_range() is None
