"""Which simulcast layer each of a subscriber's video tracks gets.

:func:`allocate` shares one subscriber's estimated downlink across its video tracks in
the manner of mediasoup's priority loop: tracks are visited in priority order (screen
share, then the active speaker, then the others), each pass raises every track by one
layer if the rest of the budget carries it, and passes repeat until nothing fits. So
every track gets its lowest layer before any gets a second one, and a track whose
lowest layer does not fit is paused. Audio is not allocated: the caller takes it off
the budget first, it always goes through.

:class:`LayerSelector` adds time: it goes down at once, but up only when the higher
allocation has held for ``up_stable_ms`` (or a probe just proved the budget), so a
noisy estimate does not make the layer flap; a change of the subscriber's cap acts at
once. Both are pure (time is a parameter).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = [
    "UP_MARGIN",
    "BANDWIDTH",
    "PREFERENCE",
    "PAUSED",
    "LAYER_LOST",
    "REASONS",
    "PRIORITY_SCREEN",
    "PRIORITY_SPEAKER",
    "PRIORITY_OTHER",
    "TrackDemand",
    "Allocation",
    "LayerChange",
    "allocate",
    "covering_layer",
    "LayerSelector",
]

BANDWIDTH = "bandwidth"
PREFERENCE = "preference"
PAUSED = "paused"
LAYER_LOST = "publisher_layer_lost"
REASONS = (BANDWIDTH, PREFERENCE, PAUSED, LAYER_LOST)

PRIORITY_SCREEN = 0
PRIORITY_SPEAKER = 1
PRIORITY_OTHER = 2

UP_MARGIN = 1.15  # going above the current layer needs 15 % headroom


@dataclass(slots=True)
class TrackDemand:
    """One video track a subscriber receives, as the allocator sees it.

    Attributes:
        key: identifies the track (e.g. the subscriber's mid).
        layer_bitrates: bit/s each layer needs, lowest layer first; None for a layer
            the publisher is not sending. A single-encoding track has one layer.
        max_layer: the highest layer the subscriber's preference allows (None: any).
        paused: the subscriber paused the track.
        priority: lower first (:data:`PRIORITY_SCREEN`, ...).
        current: the layer it gets now (None: nothing yet or paused); going above it
            needs :data:`UP_MARGIN` headroom.
    """

    key: Hashable
    layer_bitrates: Sequence[int | None]
    max_layer: int | None = None
    paused: bool = False
    priority: int = PRIORITY_OTHER
    current: int | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    """The layer a track gets (None: paused), why, and the bit/s it takes."""

    layer: int | None
    reason: str
    bitrate: int


@dataclass(frozen=True, slots=True)
class LayerChange:
    """A decided change of one track's layer (``layer`` None: paused)."""

    key: Hashable
    previous: int | None
    layer: int | None
    reason: str


def covering_layer(
    sizes: Sequence[tuple[int | None, int | None]], max_width: int | None, max_height: int | None
) -> int | None:
    """The layer that covers a tile: the smallest layer at least ``max_width`` wide and
    ``max_height`` tall (device pixels), so the picture is never upscaled while a
    larger layer exists (LiveKit's adaptive stream chooses the same way); the largest
    known layer when none covers it.

    Args:
        sizes: (width, height) of each layer in pixels, lowest layer first; None where
            not known yet (no keyframe seen). An unknown layer is taken to be half the
            size of the known layer above it, or twice the one below (the usual
            simulcast ratio), so that a late keyframe of a middle layer does not send
            a subscriber past it.
        max_width, max_height: the tile's size; None for a side that is not capped.

    Returns:
        the layer index to cap at, or None (no cap: no size asked for, or no layer
        size known).
    """
    if max_width is None and max_height is None:
        return None
    known = {i: (w, h) for i, (w, h) in enumerate(sizes) if h is not None}
    if not known:
        return None
    estimated: list[tuple[int | None, float]] = []
    for i in range(len(sizes)):
        if i in known:
            w, h = known[i]
            estimated.append((w, h))
            continue
        nearest = min(known, key=lambda k: abs(k - i))
        w, h = known[nearest]
        scale = 2.0 ** (i - nearest)
        estimated.append((None if w is None else int(w * scale), h * scale))
    for i, (w, h) in enumerate(estimated):
        if (max_height is None or h >= max_height) and (max_width is None or w is None or w >= max_width):
            return i
    return len(sizes) - 1


def _active(demand: TrackDemand) -> list[int]:
    return [i for i, b in enumerate(demand.layer_bitrates) if b is not None]


def _ceiling(demand: TrackDemand, active: list[int]) -> int:
    """The best layer the preference allows (the lowest active one if it allows none)."""
    if demand.max_layer is None:
        return active[-1]
    allowed = [i for i in active if i <= demand.max_layer]
    return allowed[-1] if allowed else active[0]


def allocate(budget_bps: float, demands: Sequence[TrackDemand], up_margin: float = UP_MARGIN) -> dict[Hashable, Allocation]:
    """Share ``budget_bps`` (bit/s, audio already taken off) across ``demands``.

    Returns:
        key -> Allocation for every demand. Reasons: ``paused`` (the subscriber paused
        it), ``publisher_layer_lost`` (its current layer, or every layer, is not being
        sent, or the layer its cap asks for is not sent and everything sent below it
        fits), ``preference`` (it gets the best layer its cap allows, below the best
        one sent, or the very layer its cap names), else ``bandwidth``.
    """
    out: dict[Hashable, Allocation] = {}
    layers: dict[Hashable, int | None] = {}
    ceilings: dict[Hashable, int] = {}
    order: list[TrackDemand] = []
    for d in demands:
        active = _active(d)
        if d.paused:
            out[d.key] = Allocation(None, PAUSED, 0)
        elif not active:
            out[d.key] = Allocation(None, LAYER_LOST, 0)
        else:
            layers[d.key] = None
            ceilings[d.key] = _ceiling(d, active)
            order.append(d)
    order.sort(key=lambda d: d.priority)  # stable: equal priorities keep their order
    remaining = float(budget_bps)
    progress = True
    while progress:
        progress = False
        for d in order:
            cur = layers[d.key]
            bitrates = d.layer_bitrates
            nxt = next(
                (i for i in range(0 if cur is None else cur + 1, ceilings[d.key] + 1) if bitrates[i] is not None), None
            )
            if nxt is None:
                continue
            need_next = bitrates[nxt] or 0
            need_cur = (bitrates[cur] or 0) if cur is not None else 0
            margin = up_margin if d.current is None or nxt > d.current else 1.0
            if need_next * margin - need_cur <= remaining:
                layers[d.key] = nxt
                remaining -= need_next - need_cur
                progress = True
    for d in order:
        layer = layers[d.key]
        active = _active(d)
        bitrates = d.layer_bitrates
        capped = d.max_layer is not None
        wanted = min(d.max_layer, len(bitrates) - 1) if capped else len(bitrates) - 1  # type: ignore[type-var]
        if d.current is not None and d.current not in active and layer != d.current:
            reason = LAYER_LOST
        elif capped and layer is not None and layer == ceilings[d.key] and any(b is None for b in bitrates[layer + 1 : wanted + 1]):
            # A tile's covering layer is not sent (not started yet, or stopped by the
            # publisher's encoder): the best layer sent below it is not the link's doing.
            reason = LAYER_LOST
        elif layer is not None and layer == ceilings[d.key] and (layer < active[-1] or (capped and layer >= wanted)):
            # Held below the best layer sent by the cap, or given exactly the layer the cap
            # asks for (whether or not a better one is sent yet): the subscriber's choice.
            reason = PREFERENCE
        else:
            reason = BANDWIDTH
        out[d.key] = Allocation(layer, reason, (d.layer_bitrates[layer] or 0) if layer is not None else 0)
    return out


class LayerSelector:
    """One subscriber's layer decisions over time, with hysteresis.

    Args:
        up_stable_ms: an allocation above the current layer must hold this long (ms)
            before the layer goes up; going down (and pausing) is immediate, and so
            is the first layer of a track.
        up_margin: headroom factor for going up (see :func:`allocate`).
    """

    def __init__(self, up_stable_ms: float = 2000.0, up_margin: float = UP_MARGIN) -> None:
        self.up_stable_ms = up_stable_ms
        self.up_margin = up_margin
        self.layers: dict[Hashable, int | None] = {}
        self._started: set[Hashable] = set()
        self._up_since: dict[Hashable, float] = {}
        self._reasons: dict[Hashable, str] = {}
        self._caps: dict[Hashable, int | None] = {}  # each track's max_layer last time
        self.last_allocation: dict[Hashable, Allocation] = {}

    def select(
        self, now_ms: float, budget_bps: float, demands: Sequence[TrackDemand], verified: bool = False
    ) -> list[LayerChange]:
        """Allocate at ``now_ms`` and return the changes to apply (in demand order).

        ``demands[i].current`` is filled in from the selector's own state. ``verified``:
        the budget was just proven (a probe reached it), so going up need not wait.
        """
        keys = {d.key for d in demands}
        for key in list(self.layers):
            if key not in keys:
                self.forget(key)
        for d in demands:
            d.current = self.layers.get(d.key)
        allocation = allocate(budget_bps, demands, self.up_margin)
        self.last_allocation = allocation
        caps, self._caps = self._caps, {d.key: d.max_layer for d in demands}
        changes: list[LayerChange] = []
        for d in demands:
            a = allocation[d.key]
            cur = self.layers.get(d.key)
            started = d.key in self._started
            going_up = a.layer is not None and (cur is None or a.layer > cur)
            if a.layer == cur and started:
                self._up_since.pop(d.key, None)
                continue
            if a.layer is None and a.reason == LAYER_LOST:
                # Nothing arrives from the publisher (not started yet, or a stall of
                # every layer, e.g. a CPU-starved encoder): nothing better to switch
                # to, and a pause would cost a keyframe when it comes back. Keep waiting.
                continue
            # Immediate when the subscriber acted (raised its cap, ended its pause) or the
            # publisher lost a layer; not merely because the result sits at the cap.
            cap_raised = d.key in caps and caps[d.key] != d.max_layer
            lost_current = cur is not None and d.layer_bitrates[cur] is None
            immediate = lost_current or cap_raised or self._reasons.get(d.key) == PAUSED
            if going_up and started and not immediate and not verified:
                since = self._up_since.setdefault(d.key, now_ms)
                if now_ms - since < self.up_stable_ms:
                    continue
            self._up_since.pop(d.key, None)
            self._started.add(d.key)
            self.layers[d.key] = a.layer
            self._reasons[d.key] = a.reason
            changes.append(LayerChange(d.key, cur, a.layer, a.reason))
        return changes

    def forget(self, key: Hashable) -> None:
        """A track is gone (unsubscribed or unpublished)."""
        self.layers.pop(key, None)
        self._started.discard(key)
        self._up_since.pop(key, None)
        self._reasons.pop(key, None)
        self._caps.pop(key, None)
        self.last_allocation.pop(key, None)
