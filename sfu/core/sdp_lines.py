"""SDP text split into lines by m-section (RFC 8866 §5), for the few attributes aiortc
does not handle (simulcast, rejected m-lines). Pure text processing."""

from __future__ import annotations

__all__ = ["split_sections", "join_sections", "attribute", "section_mid", "check_offer_structure"]


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


def check_offer_structure(sdp: str) -> None:
    """Refuse what aiortc 1.16 would apply only halfway (leaving a PeerConnection with
    a transceiver but no transport): every m-section needs exactly one ``a=mid``
    (RFC 8843 §7.2.1; a rejected one, port 0, at most one), the mids are unique and every mid of a BUNDLE group names an
    m-section (§7.1), and DTLS needs ``a=setup`` (RFC 5763 §5), ``a=fingerprint``
    (RFC 8122 §5) and ICE credentials (RFC 8839 §5.4), each at session level or in
    every m-section that is not rejected (port 0).

    Raises:
        ValueError: which rule the offer breaks.
    """
    session, media = split_sections(sdp)
    mids: list[str] = []
    for index, section in enumerate(media):
        found = attribute(section, "mid")
        fields = section[0][2:].split()
        rejected = len(fields) > 1 and fields[1] == "0"
        if len(found) > 1 or (not found and not rejected):
            raise ValueError(f"m-line {index} has {len(found)} a=mid lines (one is needed)")
        mids += found
        if rejected:
            continue
        for name in ("setup", "fingerprint", "ice-ufrag", "ice-pwd"):
            if not attribute(section, name) and not attribute(session, name):
                raise ValueError(f"m-line {index} has no a={name}")
    if len(set(mids)) != len(mids):
        raise ValueError("two m-lines have the same a=mid")
    for group in attribute(session, "group"):
        tokens = group.split()
        if tokens and tokens[0] == "BUNDLE" and not set(tokens[1:]) <= set(mids):
            raise ValueError("a=group:BUNDLE names a mid no m-line has")
