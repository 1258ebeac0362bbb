"""Simulcast in SDP: read a publisher's ``a=rid``/``a=simulcast`` offer, write the answer.

aiortc parses neither ``a=rid`` (RFC 8851) nor ``a=simulcast`` (RFC 8853), nor does
it answer the ``rtp-stream-id``/``repaired-rtp-stream-id`` header extensions
(RFC 8852). Chrome sends only its first encoding unless the answer has them, so the
SFU reads them from the offer text and adds them to aiortc's answer text.

Pure text processing: no I/O, no aiortc.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .rtp import URI_RID, URI_RRID
from .sdp_lines import attribute, join_sections, split_sections

__all__ = ["MAX_LAYERS", "SimulcastOffer", "parse_simulcast_offers", "rid_extension_ids", "munge_answer"]

MAX_LAYERS = 3
_RID_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")  # RFC 8851 §10 rid-id, at most 16 chars


@dataclass(slots=True)
class SimulcastOffer:
    """The simulcast part of one offered m-line that the client sends on.

    ``rids``: the RIDs the SFU receives, in the offer's order (lowest layer first by
    this project's convention, docs/PROTOCOL.md), at most :data:`MAX_LAYERS`;
    ``rejected``: offered send RIDs that are not received (invalid, duplicate, past
    the limit, or with no ``a=rid`` line); ``rid_extension_id``/``rrid_extension_id``:
    the offer's header-extension ids for RID and repaired RID (None if not offered).
    """

    mid: str
    rids: list[str]
    rejected: list[str] = field(default_factory=list)
    rid_extension_id: int | None = None
    rrid_extension_id: int | None = None


def parse_simulcast_offers(sdp: str) -> dict[str, SimulcastOffer]:
    """The simulcast send streams of every video m-line of an offer, by mid.

    An m-line counts when it has ``a=simulcast:send ...`` (RFC 8853 §5.1) with at least
    one RID that also has an ``a=rid:<id> send`` line (RFC 8851 §4). Alternatives
    (``a,b``) keep their first RID; the paused prefix ``~`` is ignored (the layer is
    received when it arrives). Never raises: what it cannot read is left out.
    """
    out: dict[str, SimulcastOffer] = {}
    _, sections = split_sections(sdp)
    for lines in sections:
        if not lines[0].startswith("m=video"):
            continue
        mids = attribute(lines, "mid")
        simulcast = attribute(lines, "simulcast")
        if not mids or not simulcast:
            continue
        declared = set()
        for value in attribute(lines, "rid"):
            parts = value.split()
            if len(parts) >= 2 and parts[1] == "send":
                declared.add(parts[0])
        tokens = simulcast[0].split()
        send_list = next((tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i] == "send"), None)
        if send_list is None:
            continue
        rids: list[str] = []
        rejected: list[str] = []
        for stream in send_list.split(";"):
            rid = stream.split(",")[0].lstrip("~")
            if _RID_RE.match(rid) and rid in declared and rid not in rids and len(rids) < MAX_LAYERS:
                rids.append(rid)
            else:
                rejected.append(rid)
        if not rids:
            continue
        extensions = _extension_ids(lines)
        if URI_RID not in extensions:
            continue  # without the RID extension packets cannot be told apart
        out[mids[0]] = SimulcastOffer(
            mid=mids[0],
            rids=rids,
            rejected=rejected,
            rid_extension_id=extensions.get(URI_RID),
            rrid_extension_id=extensions.get(URI_RRID),
        )
    return out


def _extension_ids(lines: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in attribute(lines, "extmap"):
        parts = value.split()
        if len(parts) >= 2:
            try:
                out[parts[1]] = int(parts[0].split("/")[0])
            except ValueError:
                continue
    return out


def rid_extension_ids(offer_sdp: str) -> dict[str, tuple[int | None, int | None]]:
    """The RID and repaired-RID extension ids each video m-line of an offer carries,
    by mid (m-lines with neither are left out)."""
    out: dict[str, tuple[int | None, int | None]] = {}
    _, sections = split_sections(offer_sdp)
    for lines in sections:
        mids = attribute(lines, "mid")
        if not lines[0].startswith("m=video") or not mids:
            continue
        ids = _extension_ids(lines)
        if URI_RID in ids or URI_RRID in ids:
            out[mids[0]] = (ids.get(URI_RID), ids.get(URI_RRID))
    return out


def munge_answer(
    answer_sdp: str,
    offers: dict[str, SimulcastOffer],
    extension_ids: dict[str, tuple[int | None, int | None]] | None = None,
) -> str:
    """Add simulcast to an answer.

    Every video m-line in ``extension_ids`` (see :func:`rid_extension_ids`) that is not
    rejected gets ``a=extmap`` lines for RID and repaired RID with the offer's ids
    (RFC 8852): with BUNDLE, Chrome leaves extensions an answer did not accept out of
    its later m-lines, so a client that first only receives could never publish
    simulcast. Each m-line in ``offers`` whose answer direction is ``recvonly`` also
    gets ``a=rid:<id> recv`` per received RID and ``a=simulcast:recv <id>;<id>...``
    (RFC 8853 §5.3). Lines end with CRLF (RFC 8866 §5).
    """
    extension_ids = dict(extension_ids or {})
    for mid, offer in offers.items():
        extension_ids.setdefault(mid, (offer.rid_extension_id, offer.rrid_extension_id))
    session, sections = split_sections(answer_sdp)
    out = list(session)
    for lines in sections:
        mids = attribute(lines, "mid")
        mid = mids[0] if mids else None
        if mid not in extension_ids or lines[0].split()[1:2] == ["0"]:
            out.extend(lines)
            continue
        kept = [line for line in lines if not line.startswith(("a=rid:", "a=simulcast:"))]
        have = _extension_ids(kept)
        rid_id, rrid_id = extension_ids[mid]
        extra = []
        if URI_RID not in have and rid_id is not None:
            extra.append(f"a=extmap:{rid_id} {URI_RID}")
        if URI_RRID not in have and rrid_id is not None:
            extra.append(f"a=extmap:{rrid_id} {URI_RRID}")
        offer = offers.get(mid)
        if offer is not None and "a=recvonly" in lines:
            extra += [f"a=rid:{rid} recv" for rid in offer.rids]
            extra.append("a=simulcast:recv " + ";".join(offer.rids))
        out.extend(kept + extra)
    return join_sections(out, [])
