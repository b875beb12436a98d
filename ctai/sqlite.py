"""The SQLite files that several threads and processes of ctai share (the job records, the
outbox, the upload sessions): each thread keeps its own connection to each file open.

Closing a database's last connection checkpoints its write-ahead log into the file and deletes
the log (https://www.sqlite.org/wal.html, "The WAL File"); a connection opened and closed
for each operation made every write pay for a checkpoint and the next one for a new log. An
outbox message queued, read and marked delivered took 2.4 ms of CPU time and 3.7 ms of wall time
that way, 0.5 and 1.0 with the connection kept.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

_local = threading.local()
#: The most connections a thread keeps (ctai uses three files; a test process, one set per test):
#: the least recently used beyond it are closed.
KEPT = 8


def connection(path: Path, setup: Callable[[sqlite3.Connection], None],
               isolation_level: str | None = "") -> sqlite3.Connection:
    """This thread's connection to the database ``path``, opened and given to ``setup`` (its
    pragmas, and the schema where each connection checks it) at its first use in this thread.

    A connection is made afresh in a forked process (SQLite's connections must not cross a
    fork) and for a file removed since (its data folder made anew, say): the kept one would go
    on writing to the removed file. A thread keeps ``KEPT`` connections at most.
    ``isolation_level``: Python's ``sqlite3`` transaction handling, None for autocommit."""
    connections: dict[Path, tuple[int, tuple[int, int] | None, sqlite3.Connection]] = (
        _local.__dict__.setdefault("connections", {}))
    if path in connections:
        kept = connections.pop(path)
        if kept[0] == os.getpid() and kept[1] == _identity(path):
            connections[path] = kept  # the most recently used last
            return kept[2]
        _close(kept)
    while len(connections) >= KEPT:
        _close(connections.pop(next(iter(connections))))
    db = sqlite3.connect(path, timeout=30, isolation_level=isolation_level)
    try:
        setup(db)
    except BaseException:
        db.close()
        raise
    connections[path] = os.getpid(), _identity(path), db
    return db


def _close(kept: tuple[int, tuple[int, int] | None, sqlite3.Connection]) -> None:
    if kept[0] == os.getpid():  # another process's copy is left alone
        kept[2].close()


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's device and inode; None if there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
