"""huey storages that hold each taken message until its task has run, so that a worker killed
between taking a message and claiming its job (``ctai.worker``) loses nothing.

huey's own storages delete a message as a worker takes it (Redis BRPOP, an SQLite DELETE), and
its scheduler takes a due retry out of the schedule before it queues it again: a process killed
in between drops the job, whose record then says "pending" for ever. Here a taker (one worker
process, named by its owner token "host:pid:worker") moves each message atomically into a list
of its own (Redis LMOVE, the "reliable queue" pattern; SQLite, one transaction) and lets go of
it once huey has run the task or scheduled its retry (``HoldingHuey.execute``); due retries go
from the schedule to the queue atomically. A taker renews its heartbeat (``beat``); a worker that
finds another taker dead (``Worker._abandoned``) queues that one's held messages again
(``give_back``). A message queued twice is harmless: a job runs once more only if no run started
after it was queued (``JobStore.claim``).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from huey import Huey
from huey.storage import RedisStorage, SqliteStorage
from huey.storage import TimeoutError as RedisTimeout  # redis's, which is an optional extra of ctai

from ctai.redisdb import translated


class HoldingHuey(Huey):
    """A huey whose storage holds the message of each task it runs until the task is done."""

    storage: RedisHoldingStorage | SqliteHoldingStorage

    def execute(self, task: Any, timestamp: datetime | None = None) -> Any:
        try:
            return super().execute(task, timestamp)
        finally:  # after huey ran the task, or put its retry in the schedule
            self.storage.let_go()


# KEYS: schedule, queue. ARGV: now. Due messages join the queue as huey queues them (LPUSH).
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, data in ipairs(due) do redis.call('LPUSH', KEYS[2], data) end
if #due > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) end
return #due
"""

# KEYS: held list, queue, takers. ARGV: taker. Returns how many messages went back.
_GIVE_BACK = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') do n = n + 1 end
redis.call('HDEL', KEYS[3], ARGV[1])
return n
"""


class RedisHoldingStorage(RedisStorage):
    """huey's Redis storage; messages taken by ``taker`` wait in "huey.held.<queue>.<taker>",
    the takers' heartbeats in the hash "huey.takers.<queue>". Its own calls raise ctai's
    ``RedisUnavailable`` and ``RedisMisconfigured``."""

    def __init__(self, name: str, url: str, taker: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, url=url, **kwargs)
        self.url = url
        self.taker = taker
        self.takers_key = f"huey.takers.{self.name}"
        self._held = threading.local()
        self._move_due = self.conn.register_script(_MOVE_DUE)
        self._give_back = self.conn.register_script(_GIVE_BACK)

    def _held_key(self, taker: str) -> str:
        return f"huey.held.{self.name}.{taker}"

    def dequeue(self) -> bytes | None:
        if self.taker is None:
            raise RuntimeError("only a worker (a storage with a taker) takes messages")
        try:
            data = self.conn.blmove(self.queue_key, self._held_key(self.taker), self.read_timeout, "RIGHT", "LEFT")
        except RedisTimeout:  # nothing came (a ConnectionError goes on to huey, which backs off)
            return None
        self._held.data = data
        return data

    def let_go(self) -> None:
        data, self._held.data = getattr(self._held, "data", None), None
        if data is not None:
            with translated(self.url):
                self.conn.lrem(self._held_key(str(self.taker)), 1, data)

    def read_schedule(self, ts: datetime) -> list[bytes]:
        self._move_due(keys=[self.schedule_key, self.queue_key], args=[self.convert_ts(ts)])
        return []

    def beat(self, until: float) -> None:
        """This taker lives at least until ``until`` (a time.time())."""
        with translated(self.url):
            self.conn.hset(self.takers_key, str(self.taker), repr(until))

    def takers(self) -> dict[str, float]:
        """Each taker with the time its heartbeat runs out."""
        with translated(self.url):
            return {k.decode(): float(v) for k, v in self.conn.hgetall(self.takers_key).items()}

    def give_back(self, taker: str) -> int:
        """Queue again the messages ``taker`` holds, and forget it; how many there were."""
        with translated(self.url):
            return int(self._give_back(keys=[self._held_key(taker), self.queue_key, self.takers_key],
                                       args=[taker]))


class SqliteHoldingStorage(SqliteStorage):
    """huey's SQLite storage, with the tables "held" (messages taken) and "takers" (heartbeats)."""

    ddl = [*SqliteStorage.ddl,
           "create table if not exists held (id integer not null primary key, queue text not null,"
           " taker text not null, data blob not null, priority real not null default 0.0)",
           "create table if not exists takers (queue text not null, taker text not null,"
           " until real not null, primary key (queue, taker))"]

    def __init__(self, name: str, taker: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.taker = taker
        self._held = threading.local()

    def dequeue(self) -> bytes | None:
        if self.taker is None:
            raise RuntimeError("only a worker (a storage with a taker) takes messages")
        if not self.sql("select 1 from task where queue = ? limit 1", (self.name,), results=True):
            return None  # as huey: no exclusive lock while the queue is empty
        with self.db(commit=True) as curs:
            row = curs.execute("select id, data, priority from task where queue = ?"
                               " order by priority desc, id limit 1", (self.name,)).fetchone()
            if row is None:
                return None
            curs.execute("delete from task where id = ?", (row[0],))
            curs.execute("insert into held (queue, taker, data, priority) values (?, ?, ?, ?)",
                         (self.name, self.taker, row[1], row[2]))
            self._held.id = curs.lastrowid
            return row[1]

    def let_go(self) -> None:
        held, self._held.id = getattr(self._held, "id", None), None
        if held is not None:
            self.sql("delete from held where id = ?", (held,), commit=True)

    def read_schedule(self, ts: datetime) -> list[bytes]:
        with self.db(commit=True) as curs:
            due = (self.name, ts.timestamp())
            curs.execute("insert into task (queue, data) select queue, data from schedule"
                         " where queue = ? and timestamp <= ? order by timestamp, id", due)
            curs.execute("delete from schedule where queue = ? and timestamp <= ?", due)
        return []

    def beat(self, until: float) -> None:
        self.sql("insert or replace into takers (queue, taker, until) values (?, ?, ?)",
                 (self.name, self.taker, until), commit=True)

    def takers(self) -> dict[str, float]:
        return dict(self.sql("select taker, until from takers where queue = ?", (self.name,), results=True))

    def give_back(self, taker: str) -> int:
        with self.db(commit=True) as curs:
            curs.execute("insert into task (queue, data, priority) select queue, data, priority from held"
                         " where queue = ? and taker = ? order by id", (self.name, taker))
            n = curs.rowcount
            curs.execute("delete from held where queue = ? and taker = ?", (self.name, taker))
            curs.execute("delete from takers where queue = ? and taker = ?", (self.name, taker))
        return n
