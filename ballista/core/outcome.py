"""What one request produced: the error kinds and the Sample handed to the recorder."""

from __future__ import annotations

import enum
from typing import NamedTuple


class ErrorKind(enum.IntEnum):
    """Why a request got no HTTP response. Values index plain lists on the hot path."""

    CONNECT_REFUSED = 0
    CONNECT_TIMEOUT = 1
    READ_TIMEOUT = 2
    WRITE_TIMEOUT = 3
    POOL_TIMEOUT = 4
    RESET = 5
    REFUSED_STREAM = 6
    GOAWAY = 7
    PROTOCOL = 8
    TLS = 9
    DNS = 10
    #: still in flight when the run ended and its grace period was over
    UNFINISHED = 11
    OTHER = 12

    @property
    def label(self) -> str:
        """The contract name (`connect_refused`, ...) used in JSON and metrics."""
        return self.name.lower()


ERROR_KINDS: tuple[ErrorKind, ...] = tuple(ErrorKind)
ERROR_LABELS: tuple[str, ...] = tuple(k.label for k in ErrorKind)

#: Sentinel for "no error" in Sample.error.
NO_ERROR = -1


class Sample(NamedTuple):
    """One finished request.

    `status` is the HTTP status, or 0 when no response arrived (then `error`
    is an ErrorKind value, else NO_ERROR). `latency` is seconds from the
    intended start (the scheduled time in the open model); `service_time` is
    seconds from the moment the request was actually sent. `request` is the
    index of the named request in the run's configuration (0 for a plain URL).
    """

    request: int
    status: int
    error: int
    latency: float
    service_time: float
    bytes_sent: int
    bytes_received: int
