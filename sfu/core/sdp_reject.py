"""Answer an offer's audio/video m-lines that have no codec the SFU can forward as
rejected, instead of failing the whole offer.

aiortc refuses an offer outright when one m-line has no codec in common with it. The
SFU hides such m-lines from aiortc (it sees them ``inactive`` with a codec it knows)
and then writes them into the answer as rejected: port 0 and ``a=inactive``
(RFC 3264 §6), and out of the BUNDLE group (RFC 8843 §7.3.3). Pure text processing.
"""

from __future__ import annotations

from .sdp_lines import join_sections, section_mid, split_sections

__all__ = ["unsupported_mids", "hide_unsupported", "reject_in_answer"]


def _mimes(section: list[str]) -> list[str]:
    """``kind/name`` of every rtpmap in an m-section (lower case)."""
    kind = section[0][2:].split(" ", 1)[0]
    out = []
    for line in section:
        if line.startswith("a=rtpmap:"):
            parts = line.split(" ", 1)
            if len(parts) == 2:
                out.append(f"{kind}/{parts[1].split('/')[0]}".lower())
    return out


def _media_fields(section: list[str]) -> list[str] | None:
    """The m-line's fields (``kind port proto fmt...``) of an audio or video m-section
    that is not rejected already (port 0) and has at least kind, port and proto;
    None for any other (left as it is)."""
    parts = section[0][2:].split()
    if len(parts) < 3 or parts[0] not in ("audio", "video") or parts[1] == "0":
        return None
    return parts


def unsupported_mids(offer_sdp: str, supported: dict[str, set[str]]) -> list[str]:
    """Mids of audio/video m-lines (not already rejected with port 0) whose codecs
    include none of ``supported[kind]`` (lower-case mime types like ``video/vp8``;
    RTX, RED, FEC and comfort noise do not count)."""
    aux = ("/rtx", "/red", "/ulpfec", "/flexfec-03", "/cn", "/telephone-event")
    out = []
    _, media = split_sections(offer_sdp)
    for section in media:
        parts = _media_fields(section)
        if parts is None:
            continue
        mimes = [m for m in _mimes(section) if not m.endswith(aux)]
        if not any(m in supported.get(parts[0], set()) for m in mimes):
            mid = section_mid(section)
            if mid is not None:
                out.append(mid)
    return out


def hide_unsupported(offer_sdp: str, mids: list[str], stand_in: dict[str, str]) -> str:
    """The offer as aiortc should see it: each m-line in ``mids`` carries only the
    stand-in codec of its kind (``stand_in["video"] = "VP8/90000"``) and is
    ``inactive``."""
    session, media = split_sections(offer_sdp)
    for i, section in enumerate(media):
        parts = _media_fields(section)
        if parts is None or parts[0] not in stand_in or section_mid(section) not in mids:
            continue
        kind, port, proto = parts[:3]
        kept = [
            line
            for line in section[1:]
            if not line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:", "a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive", "a=ssrc", "a=rid:", "a=simulcast:"))
        ]
        media[i] = [f"m={kind} {port} {proto} 96", *kept, f"a=rtpmap:96 {stand_in[kind]}", "a=inactive"]
    return join_sections(session, media)


def reject_in_answer(answer_sdp: str, offer_sdp: str, mids: list[str]) -> str:
    """Write the m-lines ``mids`` of an answer as rejected (port 0, the offer's first
    format, ``a=mid``, ``a=inactive``) and take them out of ``a=group:BUNDLE``."""
    if not mids:
        return answer_sdp
    _, offered = split_sections(offer_sdp)
    # The offer's audio/video sections that unsupported_mids looked at (a malformed
    # one sharing a mid with them is not one of them).
    offered_by_mid = {section_mid(s): s for s in offered if _media_fields(s) is not None}
    session, media = split_sections(answer_sdp)
    for i, section in enumerate(media):
        mid = section_mid(section)
        if mid not in mids:
            continue
        offer = offered_by_mid.get(mid, section)
        fields = offer[0][2:].split()
        if len(fields) < 3:
            continue  # neither the offer nor the answer has an m-line to write it from
        kind, _, proto, *fmts = fields
        fmt = fmts[0] if fmts else "0"
        rtpmap = next((line for line in offer if line.startswith(f"a=rtpmap:{fmt} ")), None)
        media[i] = [f"m={kind} 0 {proto} {fmt}", "c=IN IP4 0.0.0.0", f"a=mid:{mid}", "a=inactive"]
        if rtpmap is not None:
            media[i].append(rtpmap)
    kept_session = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            tokens = [t for t in line.split()[1:] if t not in mids]
            if not tokens:
                continue  # an empty group is not valid SDP
            line = " ".join(["a=group:BUNDLE", *tokens])
        kept_session.append(line)
    return join_sections(kept_session, media)
