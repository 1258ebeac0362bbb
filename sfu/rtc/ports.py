"""Media sockets inside a UDP port range (``sfu serve --udp-port-range LOW-HIGH``), so
that a firewall can allow exactly those ports.

aioice binds each ICE host candidate's socket with
``asyncio.get_running_loop().create_datagram_endpoint(..., local_addr=(address, 0))``.
With a range set, such binds go to a free port of the range instead (tried from a
random start, one port after another), through :mod:`sfu.rtc.bind_hook`. When every port
of the range is taken the bind fails with :class:`PortRangeFull` (an ``OSError``, which
aioice logs and skips): the connection gets no host candidate, and
:meth:`sfu.rtc.adapter.SfuPeerConnection.answer` refuses the offer with
:class:`NoMediaPort`.
"""

from __future__ import annotations

import asyncio
import errno
import random
from typing import Any

from .bind_hook import install_binder

__all__ = ["NoMediaPort", "PortRangeFull", "port_range", "set_udp_port_range"]

_range: tuple[int, int] | None = None


class PortRangeFull(OSError):
    """Every port of the range is bound already."""


class NoMediaPort(ValueError):
    """A PeerConnection could bind no media socket (the port range is full)."""


def port_range() -> tuple[int, int] | None:
    """The range in force, (low, high) inclusive, or None."""
    return _range


async def _bind_in_range(loop: asyncio.AbstractEventLoop, factory: Any, address: str, kwargs: dict[str, Any]) -> Any:
    """A :data:`~sfu.rtc.bind_hook.Binder`: the first free port of the range, tried from
    a random start, one port after another.

    Raises:
        PortRangeFull: every port of the range is bound already.
    """
    assert _range is not None
    low, high = _range
    count = high - low + 1
    start = random.randrange(count)
    for i in range(count):
        port = low + (start + i) % count
        try:
            return await loop.create_datagram_endpoint(factory, local_addr=(address, port), **kwargs)
        except OSError as exc:
            # uvloop says "could not bind" with no errno; asyncio keeps EADDRINUSE.
            if exc.errno not in (errno.EADDRINUSE, None):
                raise
    raise PortRangeFull(errno.EADDRINUSE, f"every UDP port of {low}-{high} is in use")


def set_udp_port_range(low: int | None, high: int | None = None) -> None:
    """Bind every ICE host socket of this process inside ``low``-``high`` (inclusive);
    None to bind anywhere again.

    Raises:
        ValueError: not 1 <= low <= high <= 65535.
    """
    global _range
    if low is None:
        _range = None
        install_binder(None)
        return
    high = low if high is None else high
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"a UDP port range is 1 <= LOW <= HIGH <= 65535, not {low}-{high}")
    _range = (low, high)
    install_binder(_bind_in_range)
