"""Where aioice binds ICE host sockets: the seam of the two media-port modes
(``--udp-port-range``, :mod:`sfu.rtc.ports`; ``--udp-port``, :mod:`sfu.rtc.udp_mux`).

aioice binds each host candidate's socket with
``asyncio.get_running_loop().create_datagram_endpoint(factory, local_addr=(address, 0))``.
:func:`install_binder` makes the ``asyncio`` that ``aioice.ice`` sees a thin proxy whose
running loop hands such binds (port 0) to a binder; everything else goes to the real
asyncio and loop. Private API of aioice 0.13 (the module's ``asyncio`` global).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice

__all__ = ["Binder", "install_binder"]

Binder = Callable[[asyncio.AbstractEventLoop, Any, str, dict[str, Any]], Awaitable[Any]]
"""``binder(loop, protocol_factory, address, kwargs)`` -> ``(transport, protocol)``, as
``loop.create_datagram_endpoint`` returns them, for a socket aioice wants on ``address``
(any port); ``kwargs`` are the call's other keyword arguments."""

_binder: Binder | None = None


class _Loop:
    """The running loop, handing aioice's ``(address, 0)`` binds to the binder."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, local_addr: Any = None, **kwargs: Any) -> Any:
        binder = _binder
        if binder is None or local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr, **kwargs)
        return await binder(self._loop, factory, local_addr[0], kwargs)


class _Asyncio:
    """``asyncio`` as aioice.ice sees it: the same, but its running loop is a :class:`_Loop`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def get_running_loop() -> Any:
        return _Loop(asyncio.get_running_loop())


def install_binder(binder: Binder | None) -> None:
    """Send aioice's host-socket binds to ``binder`` from now on; None: aioice binds
    them itself again (the real ``asyncio``)."""
    global _binder
    _binder = binder
    aioice.ice.asyncio = _Asyncio() if binder is not None else asyncio  # type: ignore[attr-defined]
