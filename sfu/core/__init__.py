"""Sans-IO packet logic: no asyncio, no sockets, no aiortc transports, no clock reads.

Every function that needs the time takes it as a parameter (milliseconds, float or int),
so the whole package runs on a virtual clock in tests.
"""
