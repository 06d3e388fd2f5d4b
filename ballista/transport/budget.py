"""How many control frames an HTTP/2 server may send that cost us work: the flood limits.

A PING or a SETTINGS frame must be answered, and empty DATA frames cost a
parse each while carrying nothing. Servers limit what clients may send of
these (nghttp2: 1,000 unanswered ACKs queued, a "glitch" rate; Go: 10,000
queued control frames); Ballista holds servers to the same, per connection:

- `ControlBudget`: a token bucket. A burst of `burst` frames, then `rate` per
  second, plus one for each response received (a server may answer each
  request with such a frame, e.g. a PING to measure the round trip). Beyond
  it, the server is flooding: the connection is dropped as a protocol error.
- `MAX_UNSENT_ACKS`: ACKs h2 has queued that the writer has not yet written.
  A server that floods within the budget but does not read its ACKs would
  otherwise grow that queue without end.

Plain code, time passed in: tests drive it without sockets or clocks.
"""

from __future__ import annotations

#: Frames a connection may receive at once before the rate applies (nghttp2's glitch burst).
CONTROL_BURST = 1000
#: Frames per second a connection may receive for good, beyond those its responses explain.
CONTROL_RATE = 100.0
#: ACKs queued and not yet written, at most (nghttp2's max_outbound_ack).
MAX_UNSENT_ACKS = 1000


class ControlBudget:
    """A token bucket of control frames for one connection."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(
        self, now: float, *, burst: int = CONTROL_BURST, rate: float = CONTROL_RATE
    ) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._at = now

    @property
    def tokens(self) -> float:
        """Frames the server may still send now (as of the last `spend`)."""
        return self._tokens

    def credit(self, frames: int = 1) -> None:
        """Frames our own traffic explains (a response received), up to the burst."""
        self._tokens = min(self._burst, self._tokens + frames)

    def spend(self, now: float, frames: int = 1) -> bool:
        """Take `frames` received at `now`; False once the server is past its budget."""
        if now > self._at:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
        self._tokens -= frames
        return self._tokens >= 0
