"""Announced addresses: the server's host candidates carry the address clients must
use (a cloud's 1:1 NAT, a Docker port map) while its sockets stay bound to the local
interface. Pure text processing of the server's answer.

Each ``a=candidate`` line of type ``host`` (RFC 8839 §5.1: its connection-address is the
5th field) and each ``c=`` line (RFC 8866 §5.7) gets the announced address of the same
family; an address family with nothing announced is left alone, and so are candidates
of other types. The NAT in front of the server maps the announced address (same ports)
to the local one, as mediasoup's ``announcedAddress`` and LiveKit's ``node_ip`` expect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["announce_addresses", "announced_by_family"]


def announced_by_family(addresses: Sequence[str]) -> dict[int, str]:
    """``{4: IPv4, 6: IPv6}`` from a list of announced addresses (the first of each
    family).

    Raises:
        ValueError: not an IP address.
    """
    out: dict[int, str] = {}
    for text in addresses:
        address = ipaddress.ip_address(text)
        out.setdefault(address.version, str(address))
    return out


def _family(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def announce_addresses(sdp: str, announced: dict[int, str]) -> str:
    """``sdp`` with its host candidates' and ``c=`` addresses replaced by the announced
    address of their family (``announced`` from :func:`announced_by_family`)."""
    if not announced:
        return sdp
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    for i, line in enumerate(lines):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) >= 8 and fields[6] == "typ" and fields[7] == "host":
                family = _family(fields[4])
                if family in announced:
                    fields[4] = announced[family]
                    lines[i] = " ".join(fields)
        elif line.startswith("c=IN IP"):
            fields = line.split(" ")
            if len(fields) == 3:
                family = _family(fields[2])
                if family in announced:
                    lines[i] = f"c=IN IP{family} {announced[family]}"
    return newline.join(lines)
