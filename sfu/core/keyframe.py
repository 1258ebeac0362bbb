"""Keyframe requests to a publisher: coalesced, throttled and retried.

Many subscribers (new ones, ones that lost packets, PLI/FIR from browsers) may ask for
a keyframe of one stream at once; the publisher should see one PLI (RFC 4585 §6.3.1),
not one per subscriber. Chrome ignores a PLI within ~300 ms of the previous request,
and sometimes ignores one altogether, so a request that no keyframe answers is repeated.
"""

from __future__ import annotations

__all__ = ["KeyframeRequester"]


class KeyframeRequester:
    """Decides when to send a PLI for one publisher stream.

    Args:
        min_interval_ms: never two PLIs closer than this (ms).
        retry_ms: repeat a PLI that no keyframe answered after this long (ms).
        give_up_ms: stop retrying a request this old (ms).

    Call :meth:`request` when a keyframe is wanted and :meth:`poll` periodically; each
    returns True when a PLI must be sent now. :meth:`on_keyframe` ends the request.
    """

    def __init__(
        self, min_interval_ms: float = 300.0, retry_ms: float = 1000.0, give_up_ms: float = 10000.0
    ) -> None:
        self.min_interval_ms = min_interval_ms
        self.retry_ms = retry_ms
        self.give_up_ms = give_up_ms
        self._pending_since: float | None = None
        self._last_sent: float | None = None
        self.sent = 0

    @property
    def pending(self) -> bool:
        """True while a keyframe has been asked for and none has arrived."""
        return self._pending_since is not None

    def request(self, now_ms: float) -> bool:
        """A keyframe is wanted from now on; returns True when a PLI must go out now."""
        if self._pending_since is None:
            self._pending_since = now_ms
        return self.poll(now_ms)

    def poll(self, now_ms: float) -> bool:
        """Returns True when a pending request needs a PLI now (first send or retry)."""
        since = self._pending_since
        if since is None:
            return False
        if now_ms - since > self.give_up_ms:
            self._pending_since = None
            return False
        last = self._last_sent
        if last is None:
            due = True
        elif last < since:
            # The last PLI predates this request: only the anti-flood gap applies.
            due = now_ms - last >= self.min_interval_ms
        else:
            due = now_ms - last >= self.retry_ms
        if due:
            self._last_sent = now_ms
            self.sent += 1
        return due

    def on_keyframe(self, now_ms: float) -> None:
        """A keyframe arrived at ``now_ms``: the pending request, if any, is satisfied."""
        self._pending_since = None
