"""The embedded demo target: an ASGI app on hypercorn with realistic latency and errors."""
