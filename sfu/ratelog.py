"""Logging that an attacker cannot turn into a flood: one line per kind of event per
interval, with how many were left out since, and untrusted strings shown with ``repr``
(quoted, escaped, truncated) so that they cannot forge log lines."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog", "shown"]

MAX_SHOWN_CHARS = 80


def shown(value: object) -> str:
    """An untrusted value as it may appear in a log line: its ``repr`` (quotes and
    escapes, so no newline or control character gets through), cut to
    ``MAX_SHOWN_CHARS``."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


class RateLimitedLog:
    """Logs at most one message per ``key`` every ``interval_s`` seconds on ``logger``;
    the next one that gets through says how many were left out. Memory is bounded:
    at most ``max_keys`` keys are remembered (the oldest is forgotten first).

    Args:
        logger: where the lines go.
        interval_s: seconds between two lines of one key.
        max_keys: keys remembered.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, max_keys: int = 256) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}  # key -> (when logged, left out since)

    def log(self, key: str, level: int, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``message % args`` unless ``key`` was logged within the interval.

        Returns:
            True when the line was written.
        """
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        suppressed = last[1] if last is not None else 0
        self._last.pop(key, None)
        self._last[key] = (now, 0)
        while len(self._last) > self.max_keys:
            del self._last[next(iter(self._last))]
        if suppressed:
            message += " (%d more like it not logged)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
