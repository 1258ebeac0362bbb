"""Active-speaker detection from RFC 6464 audio levels.

Publishers put the level of each audio packet in the ``ssrc-audio-level`` header
extension: 0 is the loudest (0 dBov), 127 silence (-127 dBov). Every interval the room
feeds each participant's loudest level of the interval; the speaker is the
loudest participant above ``threshold_dbov``. To avoid flapping the speaker changes
only when someone else is louder by ``margin_db`` or the speaker fell silent, and not
within ``hold_ms`` of the last change. Pure: time is a parameter (ms).
"""

from __future__ import annotations

__all__ = ["ActiveSpeakerDetector"]


class ActiveSpeakerDetector:
    """Picks the active speaker of one room.

    Args:
        threshold_dbov: levels quieter than this (dBov, e.g. -50) never speak.
        margin_db: how much louder (dB) a challenger must be than the speaker.
        hold_ms: minimum time between two changes.
        smoothing: weight of the newest interval in the smoothed loudness (0..1].
    """

    def __init__(self, threshold_dbov: float = -50.0, margin_db: float = 6.0, hold_ms: float = 1000.0, smoothing: float = 0.5) -> None:
        self.threshold_dbov = threshold_dbov
        self.margin_db = margin_db
        self.hold_ms = hold_ms
        self.smoothing = smoothing
        self.speaker: str | None = None
        self._loudness: dict[str, float] = {}  # participant -> smoothed dBov (<= 0)
        self._changed_ms: float | None = None

    def update(self, now_ms: float, levels: dict[str, float | None]) -> str | None:
        """Feed one interval: participant id -> its loudest RFC 6464 level (0..127) in
        the interval, or None for no audio in it (counts as silence).

        Returns:
            the new speaker's id when the speaker changed, else None.
        """
        for pid in list(self._loudness):
            if pid not in levels:
                del self._loudness[pid]
        for pid, level in levels.items():
            dbov = -127.0 if level is None else -float(level)
            old = self._loudness.get(pid)
            self._loudness[pid] = dbov if old is None else old + self.smoothing * (dbov - old)
        if self.speaker is not None and self.speaker not in self._loudness:
            self.speaker = None
        if not self._loudness:
            return None
        loudest, loudness = max(self._loudness.items(), key=lambda kv: kv[1])
        if loudest == self.speaker or loudness < self.threshold_dbov:
            return None
        if self._changed_ms is not None and now_ms - self._changed_ms < self.hold_ms:
            return None
        current = self._loudness.get(self.speaker) if self.speaker is not None else None
        if current is not None and current >= self.threshold_dbov and loudness - current < self.margin_db:
            return None
        self.speaker = loudest
        self._changed_ms = now_ms
        return loudest
