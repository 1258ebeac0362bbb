"""SDP text split into lines by m-section (RFC 8866 §5), for the few attributes aiortc
does not handle (simulcast, rejected m-lines). Pure text processing."""

from __future__ import annotations

__all__ = ["split_sections", "join_sections", "attribute", "section_mid"]


def split_sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """(session-level lines, one list of lines per m-section starting with its ``m=``
    line); CRLF or LF line ends, empty lines dropped."""
    session: list[str] = []
    media: list[list[str]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def join_sections(session: list[str], media: list[list[str]]) -> str:
    """The SDP text again, every line ending in CRLF."""
    return "\r\n".join(session + [line for section in media for line in section]) + "\r\n"


def attribute(lines: list[str], name: str) -> list[str]:
    """The values of every ``a=<name>:<value>`` line, stripped."""
    prefix = f"a={name}:"
    return [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]


def section_mid(section: list[str]) -> str | None:
    """The ``a=mid`` of an m-section, or None."""
    mids = attribute(section, "mid")
    return mids[0] if mids else None
