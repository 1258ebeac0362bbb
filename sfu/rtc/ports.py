"""Media sockets inside a UDP port range (``sfu serve --udp-port-range LOW-HIGH``), so
that a firewall can allow exactly those ports.

aioice binds each ICE host candidate's socket with
``asyncio.get_running_loop().create_datagram_endpoint(..., local_addr=(address, 0))``.
With a range set, the ``asyncio`` that ``aioice.ice`` sees is a thin proxy whose loop
binds such sockets to a free port of the range instead (tried from a random start, one
port after another); everything else goes to the real asyncio and loop. When every port
of the range is taken the bind fails with :class:`PortRangeFull` (an ``OSError``, which
aioice logs and skips): the connection gets no host candidate, and
:meth:`sfu.rtc.adapter.SfuPeerConnection.answer` refuses the offer with
:class:`NoMediaPort`. Private API of aioice 0.13 (the module's ``asyncio`` global).
"""

from __future__ import annotations

import asyncio
import errno
import random
from typing import Any

import aioice.ice

__all__ = ["NoMediaPort", "PortRangeFull", "port_range", "set_udp_port_range"]

_range: tuple[int, int] | None = None


class PortRangeFull(OSError):
    """Every port of the range is bound already."""


class NoMediaPort(ValueError):
    """A PeerConnection could bind no media socket (the port range is full)."""


def port_range() -> tuple[int, int] | None:
    """The range in force, (low, high) inclusive, or None."""
    return _range


class _Loop:
    """The running loop, binding aioice's ``(address, 0)`` sockets inside the range."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, local_addr: Any = None, **kwargs: Any) -> Any:
        bounds = _range
        if bounds is None or local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr, **kwargs)
        low, high = bounds
        count = high - low + 1
        start = random.randrange(count)
        for i in range(count):
            port = low + (start + i) % count
            try:
                return await self._loop.create_datagram_endpoint(factory, local_addr=(local_addr[0], port), **kwargs)
            except OSError as exc:
                # uvloop says "could not bind" with no errno; asyncio keeps EADDRINUSE.
                if exc.errno not in (errno.EADDRINUSE, None):
                    raise
        raise PortRangeFull(errno.EADDRINUSE, f"every UDP port of {low}-{high} is in use")


class _Asyncio:
    """``asyncio`` as aioice.ice sees it: the same, but its running loop is a :class:`_Loop`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def get_running_loop() -> Any:
        return _Loop(asyncio.get_running_loop())


def set_udp_port_range(low: int | None, high: int | None = None) -> None:
    """Bind every ICE host socket of this process inside ``low``-``high`` (inclusive);
    None to bind anywhere again.

    Raises:
        ValueError: not 1 <= low <= high <= 65535.
    """
    global _range
    if low is None:
        _range = None
        aioice.ice.asyncio = asyncio  # type: ignore[attr-defined]
        return
    high = low if high is None else high
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"a UDP port range is 1 <= LOW <= HIGH <= 65535, not {low}-{high}")
    _range = (low, high)
    aioice.ice.asyncio = _Asyncio()  # type: ignore[attr-defined]
