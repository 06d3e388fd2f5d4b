"""Who gets the next stream slot of an HTTP/2 connection, and in what order (sans-IO).

A connection may carry at most the server's SETTINGS_MAX_CONCURRENT_STREAMS
streams at once. Requests beyond that wait, and are served in arrival order: a
FIFO of waiters, so that no worker waits while later ones go ahead. The caller
does the waiting; this class only decides who is granted a slot when.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

W = TypeVar("W")


class StreamSlots(Generic[W]):
    """At most `limit` slots held at once; waiters granted one in arrival order.

    Methods that can free or add slots return the waiters granted one by that
    call, oldest first: the caller wakes them. A granted waiter holds its slot
    until it calls `release()`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.held = 0
        self._queue: deque[W] = deque()
        #: set by close(): nothing is granted any more
        self.closed = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody is queued before us.

        A newcomer never overtakes a queued waiter, even when a slot is free.
        """
        if self.closed or self._queue or self.held >= self.limit:
            return False
        self.held += 1
        return True

    def enqueue(self, waiter: W) -> bool:
        """Queue `waiter` for a later grant; False if closed (it must go elsewhere)."""
        if self.closed:
            return False
        self._queue.append(waiter)
        return True

    def release(self) -> list[W]:
        """Give a slot back."""
        self.held = max(0, self.held - 1)
        return self._grant()

    def set_limit(self, limit: int) -> list[W]:
        """The server changed its limit. Lowering it takes no slot away: holders
        finish, and new grants wait until fewer than `limit` are held."""
        self.limit = max(0, limit)
        return self._grant()

    def withdraw(self, waiter: W) -> bool:
        """`waiter` gives up (timeout, cancellation). True if it was still queued;
        False if it left the queue meanwhile: granted a slot (it must `release()`
        it) or handed back by `close()` (it holds nothing)."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            return False
        return True

    def close(self) -> list[W]:
        """No more grants (the connection is draining or lost): every queued waiter,
        to be woken without a slot and sent elsewhere."""
        self.closed = True
        waiters = list(self._queue)
        self._queue.clear()
        return waiters

    def _grant(self) -> list[W]:
        granted: list[W] = []
        queue = self._queue
        while queue and self.held < self.limit and not self.closed:
            granted.append(queue.popleft())
            self.held += 1
        return granted
