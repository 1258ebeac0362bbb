"""NACK generation for what the server receives from a publisher (RFC 4585 §6.2.1).

The UpTrack tells the generator every unwrapped sequence number that arrives; gaps
become missing entries that :meth:`NackGenerator.poll` returns for NACKing, each at
most ``max_retries`` times, spaced by the round-trip time, and forgotten after
``max_age_ms`` or when they fall out of the window.
"""

from __future__ import annotations

__all__ = ["NackGenerator"]


class _Missing:
    __slots__ = ("first_ms", "sent_ms", "retries")

    def __init__(self, first_ms: float) -> None:
        self.first_ms = first_ms
        self.sent_ms: float | None = None
        self.retries = 0


class NackGenerator:
    """Tracks missing sequence numbers of one incoming SSRC.

    Args:
        max_retries: NACKs sent per missing packet at most.
        max_age_ms: a packet missing longer than this is given up (ms).
        window: sequence numbers behind the highest that are still tracked; a jump
            larger than this (e.g. a stream restart) clears the list.
        reorder_ms: wait this long after a gap appears before the first NACK, since
            small reordering is common (ms).
    """

    def __init__(
        self,
        max_retries: int = 8,
        max_age_ms: float = 1000.0,
        window: int = 512,
        reorder_ms: float = 5.0,
    ) -> None:
        self.max_retries = max_retries
        self.max_age_ms = max_age_ms
        self.window = window
        self.reorder_ms = reorder_ms
        self._highest: int | None = None
        self._missing: dict[int, _Missing] = {}

    @property
    def missing(self) -> list[int]:
        """The unwrapped sequence numbers currently missing, ascending."""
        return sorted(self._missing)

    def on_packet(self, seq: int, now_ms: float) -> bool:
        """Record the arrival of unwrapped ``seq`` at ``now_ms``.

        Returns:
            True when ``seq`` had been missing (a retransmission or late packet).
        """
        highest = self._highest
        if highest is None:
            self._highest = seq
            return False
        if seq > highest:
            if seq - highest > self.window:
                self._missing.clear()
            else:
                for s in range(highest + 1, seq):
                    self._missing[s] = _Missing(now_ms)
            self._highest = seq
            return False
        return self._missing.pop(seq, None) is not None

    def poll(self, now_ms: float, rtt_ms: float) -> list[int]:
        """The unwrapped sequence numbers to NACK now.

        A missing packet is NACKed first ``reorder_ms`` after its gap appeared, then
        again every ``max(rtt_ms, 20)`` ms up to ``max_retries`` times.
        """
        if not self._missing:
            return []
        interval = max(rtt_ms, 20.0)
        out = []
        lowest_kept = (self._highest or 0) - self.window
        for seq in list(self._missing):
            m = self._missing[seq]
            if seq < lowest_kept or now_ms - m.first_ms > self.max_age_ms or m.retries >= self.max_retries:
                del self._missing[seq]
                continue
            if m.sent_ms is None:
                if now_ms - m.first_ms < self.reorder_ms:
                    continue
            elif now_ms - m.sent_ms < interval:
                continue
            m.sent_ms = now_ms
            m.retries += 1
            out.append(seq)
        out.sort()
        return out
