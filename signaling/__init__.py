"""The room service: an aiohttp app with the WebSocket room protocol (docs/PROTOCOL.md),
``/healthz``, ``/metrics`` and the static browser client. It never touches RTP."""
