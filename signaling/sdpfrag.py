"""Trickle ICE SDP fragments (``application/trickle-ice-sdpfrag``, RFC 8840 §9), as WHIP
and WHEP clients send them in ``PATCH`` requests (RFC 9725 §4.3.1): the ICE
credentials, then per m-section its ``a=mid`` and ``a=candidate`` lines, and
``a=end-of-candidates``. Pure text processing; every input is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["IceFragment", "parse_ice_fragment", "ice_credentials", "MAX_FRAGMENT_BYTES", "MAX_FRAGMENT_CANDIDATES"]

MAX_FRAGMENT_BYTES = 16 * 1024
MAX_FRAGMENT_CANDIDATES = 64
MAX_LINE_CHARS = 1024


@dataclass(slots=True)
class IceFragment:
    """What a fragment carries.

    ``candidates`` are ``(mid, candidate attribute value)`` pairs, the value as in
    ``a=candidate:<value>`` (``mid`` None for a candidate before any ``a=mid``);
    ``ufrag``/``pwd`` are None when the fragment does not name them.
    """

    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)
    end_of_candidates: bool = False


def parse_ice_fragment(text: str) -> IceFragment:
    """Parse a trickle-ice-sdpfrag body (RFC 8840 §9.2 grammar, leniently: unknown
    lines are ignored, CRLF or LF).

    Raises:
        ValueError: over ``MAX_FRAGMENT_BYTES`` or ``MAX_FRAGMENT_CANDIDATES``, a line
            over ``MAX_LINE_CHARS``, or an empty candidate.
    """
    if len(text) > MAX_FRAGMENT_BYTES:
        raise ValueError(f"the fragment is over {MAX_FRAGMENT_BYTES} bytes")
    fragment = IceFragment()
    mid: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_LINE_CHARS:
            raise ValueError(f"a line is over {MAX_LINE_CHARS} characters")
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :].strip()
        elif line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line[len("a=ice-ufrag:") :].strip()
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line[len("a=ice-pwd:") :].strip()
        elif line.startswith("a=candidate:"):
            value = line[len("a=candidate:") :].strip()
            if not value:
                raise ValueError("an empty a=candidate line")
            if len(fragment.candidates) >= MAX_FRAGMENT_CANDIDATES:
                raise ValueError(f"more than {MAX_FRAGMENT_CANDIDATES} candidates")
            fragment.candidates.append((mid, value))
        elif line == "a=end-of-candidates":
            fragment.end_of_candidates = True
    return fragment


def ice_credentials(sdp: str) -> tuple[str | None, str | None]:
    """The first ``a=ice-ufrag`` and ``a=ice-pwd`` of an SDP (session level or the
    first m-section; with BUNDLE they are the same for every section)."""
    ufrag = pwd = None
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if ufrag is None and line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :].strip()
        elif pwd is None and line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :].strip()
        if ufrag is not None and pwd is not None:
            break
    return ufrag, pwd
