"""The media plane of the SFU: rooms, participants, UpTracks, DownTracks and forwarding.

``sfu.core`` holds the sans-IO packet logic (time is always a parameter);
``sfu.rtc`` is the only place that touches aiortc internals.
"""
