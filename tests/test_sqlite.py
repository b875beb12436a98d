"""Each thread keeps its connection to a shared SQLite file (``ctai.sqlite``)."""

import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from ctai.sqlite import KEPT, connection


class Setup:
    """Counts the connections it set up."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, db: sqlite3.Connection) -> None:
        self.count += 1
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (x)")


def test_a_thread_keeps_its_connection_and_another_thread_has_its_own(tmp_path: Path):
    path, setup = tmp_path / "a.sqlite3", Setup()
    first = connection(path, setup)
    with first:
        first.execute("INSERT INTO t VALUES (1)")
    others: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: others.append(connection(path, setup)))
    thread.start()
    thread.join()
    assert connection(path, setup) is first
    assert others[0] is not first
    assert setup.count == 2
    assert (tmp_path / "a.sqlite3-wal").exists()  # no checkpoint at each use: the connection stays open


def test_a_file_removed_under_a_running_process_is_made_afresh(tmp_path: Path):
    folder = tmp_path / "data"
    folder.mkdir()
    path, setup = folder / "a.sqlite3", Setup()
    with connection(path, setup) as db:
        db.execute("INSERT INTO t VALUES (1)")
    shutil.rmtree(folder)  # a data folder made anew: the kept connection would write to the removed file
    folder.mkdir()
    with connection(path, setup) as db:
        db.execute("INSERT INTO t VALUES (2)")
    assert setup.count == 2
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT x FROM t").fetchall() == [(2,)]
    other.close()


def test_a_forked_process_makes_its_own_connection(tmp_path: Path):
    path, setup = tmp_path / "a.sqlite3", Setup()
    parents = connection(path, setup)
    child = os.fork()
    if child == 0:  # SQLite's connections must not cross a fork
        os._exit(0 if connection(path, setup) is not parents else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert connection(path, setup) is parents


def test_a_thread_keeps_a_bounded_number_of_connections(tmp_path: Path):
    setup = Setup()
    first = connection(tmp_path / "0.sqlite3", setup)
    for index in range(1, KEPT + 1):
        connection(tmp_path / f"{index}.sqlite3", setup)
    with pytest.raises(sqlite3.ProgrammingError):  # closed: the least recently used
        first.execute("SELECT 1")
    assert connection(tmp_path / f"{KEPT}.sqlite3", setup).execute("SELECT 1").fetchone() == (1,)
    assert setup.count == KEPT + 1
