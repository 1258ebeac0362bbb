"""Transport-wide congestion control in SDP: read what an offer asks for, write it into
the answer.

aiortc 1.16 negotiates neither the transport-wide sequence number header extension
(draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) nor ``a=rtcp-fb:<pt>
transport-cc`` feedback (§4). Chrome and Firefox offer both on every audio and video
m-line; when the answer has them, the browser stamps every packet it sends with a
transport-wide sequence number and sends transport-cc feedback for what it receives.
The SFU reads them from the offer text and adds them to aiortc's answer text.

Pure text processing: no I/O, no aiortc.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rtp import URI_TRANSPORT_CC
from .sdp_lines import attribute, join_sections, split_sections

__all__ = ["TransportCcOffer", "parse_transport_cc", "munge_answer_transport_cc"]


@dataclass(slots=True)
class TransportCcOffer:
    """What one offered m-line asks for: the extension id (1-255) and the payload types
    that have ``transport-cc`` feedback (``all_types``: it was offered for ``*``)."""

    extension_id: int
    payload_types: frozenset[int]
    all_types: bool = False


def parse_transport_cc(offer_sdp: str) -> dict[str, TransportCcOffer]:
    """The audio/video m-lines of an offer that carry both the transport-wide sequence
    number extension and ``transport-cc`` feedback for at least one payload type, by
    mid. Never raises: what it cannot read is left out."""
    out: dict[str, TransportCcOffer] = {}
    _, sections = split_sections(offer_sdp)
    for lines in sections:
        if not lines[0].startswith(("m=audio", "m=video")):
            continue
        mids = attribute(lines, "mid")
        if not mids:
            continue
        ext_id = None
        for value in attribute(lines, "extmap"):
            parts = value.split()
            if len(parts) >= 2 and parts[1] == URI_TRANSPORT_CC:
                try:
                    ext_id = int(parts[0].split("/")[0])
                except ValueError:
                    ext_id = None
                break
        if ext_id is None or not 1 <= ext_id <= 255:
            continue
        types: set[int] = set()
        all_types = False
        for value in attribute(lines, "rtcp-fb"):
            parts = value.split()
            if len(parts) < 2 or parts[1] != "transport-cc":
                continue
            if parts[0] == "*":
                all_types = True
            elif parts[0].isdigit():
                types.add(int(parts[0]))
        if types or all_types:
            out[mids[0]] = TransportCcOffer(ext_id, frozenset(types), all_types)
    return out


def munge_answer_transport_cc(answer_sdp: str, offers: dict[str, TransportCcOffer]) -> tuple[str, dict[str, int]]:
    """Accept transport-wide congestion control in an answer.

    Each answered (port not 0) audio/video m-line whose mid is in ``offers`` gets
    ``a=extmap:<offer's id> <URI>`` and ``a=rtcp-fb:<pt> transport-cc`` for each of
    its payload types that the offer gave that feedback (draft-holmer §4; RFC 8285
    §6: the answer uses the offer's id). Lines end with CRLF.

    Returns:
        (the answer, mid -> extension id of the m-lines that accepted it).
    """
    accepted: dict[str, int] = {}
    session, sections = split_sections(answer_sdp)
    out = list(session)
    for lines in sections:
        mids = attribute(lines, "mid")
        mid = mids[0] if mids else None
        head = lines[0].split()
        offer = offers.get(mid) if mid is not None else None
        if offer is None or len(head) < 4 or head[1] == "0" or not head[0].startswith(("m=audio", "m=video")):
            out.extend(lines)
            continue
        payload_types = [int(pt) for pt in head[3:] if pt.isdigit()]
        rtx = set()
        for value in attribute(lines, "rtpmap"):
            parts = value.split()
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].lower().startswith("rtx/"):
                rtx.add(int(parts[0]))
        feedback = [
            f"a=rtcp-fb:{pt} transport-cc"
            for pt in payload_types
            if pt not in rtx and (offer.all_types or pt in offer.payload_types)
            and f"a=rtcp-fb:{pt} transport-cc" not in lines
        ]
        extra = []
        if not any(v.split()[1:2] == [URI_TRANSPORT_CC] for v in attribute(lines, "extmap")):
            extra.append(f"a=extmap:{offer.extension_id} {URI_TRANSPORT_CC}")
        out.extend(lines + extra + feedback)
        accepted[mid] = offer.extension_id  # type: ignore[index]
    return join_sections(out, []), accepted
