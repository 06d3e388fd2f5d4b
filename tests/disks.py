"""A run store whose disk the test controls: commits that stall until released."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from ballista.daemon.store import Store


class StallingStore(Store):
    """Once `armed`, each commit waits for `release`: a disk that stops answering in
    the middle of a write (the transaction open, SQLite's write lock held).
    `stalled` is set when a commit starts waiting. Every thread that runs SQLite
    is noted in `threads`."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.threads = {threading.get_ident()}
        self.armed = False
        self.stalled = threading.Event()
        self.release = threading.Event()
        super().__init__(path, **kwargs)

    def _commit(self, db: sqlite3.Connection) -> None:
        self.threads.add(threading.get_ident())
        if self.armed:
            self.stalled.set()
            self.release.wait(60)
        super()._commit(db)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        self.threads.add(threading.get_ident())
        return super()._read(sql, args)
