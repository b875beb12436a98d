"""A persistent outbox for messages to other systems (HL7 ORU over MLLP, C-STORE or STOW-RS to a PACS,
FHIR to an EHR).

Messages live under the data folder until the peer acknowledged them, so a peer that is down for
an hour, or a restart of ctai, loses nothing: each in SQLite, its payload (up to megabytes: an SC)
in a file of its own beside it. SQLite's own measurements put blobs over about 100 KB faster in
files than in the database (https://www.sqlite.org/intern-v-extern-blob.html); here a 1.6 MB SC
queued, read and marked delivered cost 12.7 ms of CPU time inside SQLite, 3.6 ms as a file.

Per key (a patient for HL7 and FHIR, a study for C-STORE and STOW-RS) messages go out strictly
in the order they were put; a key whose head message fails waits with exponential backoff while
other keys go on. A message is marked delivered only after the peer's positive answer (HL7 AA /
CA, C-STORE Success or Warning). A crash between that answer and the mark resends the message
once more: receivers recognise it by its HL7 message control ID (MSH-10) or its SOP Instance
UID, and a FHIR server creates nothing twice from it (each entry of the Bundle is a conditional
create).

Each channel's sender classifies the peer's answer; the consequences live here:

* it returns: delivered;
* it raises ``Undeliverable`` (the peer refused the message for good): a dead letter at once;
* any other exception (peer down, timeout, out of resources): retried with backoff, and a dead
  letter after ``max_attempts`` attempts.

A dead letter (state ``dead``) is logged at ERROR once, no longer holds up its key, and waits
for a person: ``ctai outbox retry`` makes it pending again, ``ctai outbox drop`` marks it
``dropped`` (the row stays, as an audit trail, and keeps the content from being queued again).
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctai import audit, sqlite
from ctai.config import Config, data_dir
from ctai.disk import fsync_path, write_in_pieces
from ctai.errors import Undeliverable
from ctai.plugins import outbox_senders, plugin_manager
from ctai.types import BatchSender, Outcome, Sender

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    destination TEXT NOT NULL,
    payload BLOB NOT NULL,  -- empty: the payload is in ``file`` (or delivered)
    dedup TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'pending',
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    done REAL,
    last_error TEXT,
    file TEXT  -- the payload's file in the payloads folder; NULL in rows queued before there was one
);
-- What picks the messages due answers from these indexes alone: a row's columns after its
-- payload (megabytes for an SC) are read through the payload's overflow pages.
DROP INDEX IF EXISTS outbox_pending;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (channel, key, id, next_attempt, attempts)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, channel);
-- Before dead letters had a name of their own they were 'failed'.
UPDATE outbox SET state = 'dead' WHERE state = 'failed';
"""


def _synchronous(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA synchronous=FULL")  # a message is durable once ``put`` returns


class _Wakeup:
    """Counts the messages put in this process per channel, so that a channel's sender wakes for
    its own at once instead of at its next poll (another process's messages wait for the poll).
    The other channels' senders stay asleep: each pass costs a database query or more."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._counts: collections.Counter[str | None] = collections.Counter()

    def count(self, channel: str) -> int:
        with self._changed:
            return self._count(channel)

    def _count(self, channel: str) -> int:
        return self._counts[channel] + self._counts[None]

    def notify(self, channel: str | None = None) -> None:
        """A message was put on ``channel``; None wakes every channel's sender (to stop)."""
        with self._changed:
            self._counts[channel] += 1
            self._changed.notify_all()

    def wait(self, channel: str, seen: int, timeout: float) -> None:
        """Return when ``channel``'s count differs from ``seen``, or after ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._count(channel) != seen, timeout)


_put = _Wakeup()


@dataclass(frozen=True)
class Message:
    """A queued message; its payload, up to megabytes, is read when it is sent (``Outbox.payloads``)."""

    id: int
    channel: str
    key: str
    destination: dict[str, Any]
    attempts: int
    state: str = "pending"
    last_error: str | None = None


class PayloadGone(Exception):
    """A message's payload file is missing: it can never be sent (a dead letter at once)."""


#: A payload file that no pending message or dead letter names is removed once it is this old
#: (seconds): a crash left it, between its writing and its row, or a delivery and its removal.
ORPHAN_AGE = 3600


class Outbox:
    """The outbox table in ``path`` (SQLite, WAL mode: one writer at a time, any process), and
    the payloads' files in the folder ``<path's stem>-payloads`` beside it."""

    def __init__(self, path: Path, initial_backoff: float = 5.0, max_backoff: float = 300.0,
                 max_attempts: int = 300) -> None:
        self.path = path
        self.payloads_dir = path.with_name(f"{path.stem}-payloads")
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        #: The configuration, for the audit trail (``from_config``); None: no audit.
        self.config: Config | None = None
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            if "file" not in {row[1] for row in db.execute("PRAGMA table_info(outbox)")}:
                db.execute("ALTER TABLE outbox ADD COLUMN file TEXT")  # an outbox of an older version

    @classmethod
    def from_config(cls, config: Config) -> Outbox:
        settings = config["outbox"]
        outbox = cls(data_dir(config) / "outbox.sqlite3", float(settings["initial_backoff"]),
                     float(settings["max_backoff"]), int(settings["max_attempts"]))
        outbox.config = config
        return outbox

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (``ctai.sqlite``), in autocommit mode: each statement a transaction."""
        return sqlite.connection(self.path, _synchronous, isolation_level=None)

    def put(self, channel: str, key: str, destination: Mapping[str, Any], payload: bytes, dedup: str) -> bool:
        """Queue a message; False (and nothing queued) if one with the same ``dedup`` was queued before.

        ``dedup`` names the message's content (e.g. an output's SOP Instance UID), so a job that
        runs again, after a crash say, does not send its results twice.
        """
        now = time.time()
        file = self._write_payload(payload)
        try:
            with self._db() as db:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO outbox"
                    " (channel, key, destination, payload, dedup, created, next_attempt, file)"
                    " VALUES (?, ?, ?, X'', ?, ?, ?, ?)",
                    (channel, key, json.dumps(dict(destination)), dedup, now, now, file))
        except BaseException:
            self._remove_payload(file)
            raise
        if cursor.rowcount != 1:
            self._remove_payload(file)
            return False
        _put.notify(channel)
        return True

    def _write_payload(self, payload: bytes) -> str:
        """A new durable file holding ``payload`` (its contents and its name synced); its name."""
        self.payloads_dir.mkdir(mode=0o700, exist_ok=True)  # patient data: for ctai's user only
        name = f"{uuid.uuid4().hex}.bin"
        handle = os.open(self.payloads_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(handle, "wb") as file:
                write_in_pieces(file, payload)
                file.flush()
                os.fsync(file.fileno())
            fsync_path(self.payloads_dir)
        except BaseException:  # a full disk, say: no half-written file stays behind
            self._remove_payload(name)
            raise
        return name

    def _remove_payload(self, name: str | None) -> None:
        if name:
            (self.payloads_dir / name).unlink(missing_ok=True)

    def due(self, channel: str, now: float) -> list[Message]:
        """The oldest pending message of each key of ``channel`` whose retry time has come, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, channel, key, destination, attempts FROM outbox o INDEXED BY outbox_due"
                " WHERE channel = ? AND state = 'pending' AND next_attempt <= ?"
                " AND id = (SELECT MIN(id) FROM outbox INDEXED BY outbox_due"
                "           WHERE channel = o.channel AND key = o.key AND state = 'pending')"
                " ORDER BY id", (channel, now)).fetchall()
        return [Message(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def payloads(self, messages: list[Message]) -> list[bytes]:
        """The payloads of ``messages`` (empty once delivered or dropped), up to the first one whose
        file is gone; ``PayloadGone`` if that is the first message's."""
        ids = [m.id for m in messages]
        with self._db() as db:
            rows = {row[0]: row[1:] for row in db.execute(
                f"SELECT id, file, payload FROM outbox WHERE id IN ({', '.join('?' * len(ids))})", ids)}
        payloads: list[bytes] = []
        for message_id in ids:
            file, inline = rows[message_id]
            try:
                payloads.append(inline if file is None else (self.payloads_dir / file).read_bytes())
            except FileNotFoundError as exc:
                if payloads:
                    break
                raise PayloadGone(f"its payload file {file} is gone from {self.payloads_dir}") from exc
        return payloads

    def mark_delivered(self, message: Message) -> None:
        """Record the delivery; the payload is dropped, the row stays to recognise the content again."""
        with self._db() as db:
            file = self._file(db, message.id)
            db.execute("UPDATE outbox SET state = 'delivered', done = ?, attempts = attempts + 1,"
                       " last_error = NULL, payload = X'', file = NULL WHERE id = ?", (time.time(), message.id))
        self._remove_payload(file)

    @staticmethod
    def _file(db: sqlite3.Connection, message_id: int) -> str | None:
        row = db.execute("SELECT file FROM outbox WHERE id = ?", (message_id,)).fetchone()
        return row[0] if row else None

    def mark_dead(self, message: Message, error: str) -> None:
        """Make ``message`` a dead letter, with the reason, for ``ctai outbox``."""
        with self._db() as db:
            db.execute("UPDATE outbox SET state = 'dead', done = ?, attempts = attempts + 1, last_error = ?"
                       " WHERE id = ? AND state = 'pending'", (time.time(), error, message.id))

    def retry_later(self, message: Message, error: str, now: float) -> float:
        """Count a failed attempt and schedule the next one with exponential backoff; returns the delay."""
        delay = min(self.initial_backoff * 2 ** min(message.attempts, 30), self.max_backoff)
        with self._db() as db:
            # Not if `ctai outbox drop` dropped it meanwhile.
            db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
                       " WHERE id = ? AND state = 'pending'",
                       (now + delay, error, message.id))
        return delay

    def revive(self, message_id: int | None = None) -> int:
        """Make dead letters pending and due now, their attempts counted afresh: the one with
        ``message_id``, or all if None. Returns how many."""
        with self._db() as db:
            return db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt = 0, done = NULL"
                              " WHERE state = 'dead' AND (? IS NULL OR id = ?)",
                              (message_id, message_id)).rowcount

    def drop(self, message_id: int) -> bool:
        """Give up a pending message or dead letter: it stays, marked ``dropped``, never sent, its
        payload removed."""
        with self._db() as db:
            file = self._file(db, message_id)
            dropped = db.execute("UPDATE outbox SET state = 'dropped', done = ?, payload = X'', file = NULL"
                                 " WHERE id = ? AND state IN ('pending', 'dead')",
                                 (time.time(), message_id)).rowcount == 1
        if dropped:
            self._remove_payload(file)
        return dropped

    def purge(self, days: float, now: float | None = None) -> int:
        """Delete delivered and dropped messages finished more than ``days`` ago (retention);
        pending messages and dead letters are kept whatever their age. Returns how many."""
        cutoff = (time.time() if now is None else now) - days * 86400
        with self._db() as db:
            return db.execute("DELETE FROM outbox WHERE state IN ('delivered', 'dropped') AND done < ?",
                              (cutoff,)).rowcount

    def remove_orphans(self, now: float | None = None) -> int:
        """Remove the payload files older than ``ORPHAN_AGE`` that no pending message or dead letter
        names (a crash left them); younger ones may be another process's, not queued yet."""
        if not self.payloads_dir.is_dir():
            return 0
        with self._db() as db:
            named = {row[0] for row in db.execute(
                "SELECT file FROM outbox WHERE state IN ('pending', 'dead') AND file IS NOT NULL")}
        cutoff = (time.time() if now is None else now) - ORPHAN_AGE
        removed = 0
        for file in self.payloads_dir.iterdir():
            with suppress(FileNotFoundError):  # another process removed it meanwhile
                if file.name not in named and file.stat().st_mtime < cutoff:
                    file.unlink()
                    removed += 1
        return removed

    def retry_now(self, channel: str | None = None) -> None:
        """Make every pending message due now (``ctai outbox --send``)."""
        with self._db() as db:
            db.execute("UPDATE outbox SET next_attempt = 0"
                       " WHERE state = 'pending' AND (? IS NULL OR channel = ?)",
                       (channel, channel))

    def counts(self) -> dict[tuple[str, str], int]:
        """How many messages each (channel, state) has."""
        with self._db() as db:
            rows = db.execute("SELECT channel, state, COUNT(*) FROM outbox GROUP BY channel, state").fetchall()
        return {(channel, state): count for channel, state, count in rows}

    def messages(self, state: str | None = None) -> list[Message]:
        """Messages in ``state`` (all if None), oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, channel, key, destination, attempts, state, last_error FROM outbox"
                " WHERE ? IS NULL OR state = ? ORDER BY id", (state, state)).fetchall()
        return [Message(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]


def send_due(outbox: Outbox, channel: str, sender: Sender, now: float | None = None) -> int:
    """Send the due messages of ``channel``, each key in order; returns how many were delivered.

    The due messages of one destination go out together when ``sender`` is a ``BatchSender``.
    After a destination fails, its other messages wait for the next call, so a peer that is
    down costs one connection attempt per call.
    """
    now = time.time() if now is None else now
    delivered = 0
    failing: set[str] = set()
    progress = True
    while progress:
        progress = False
        for batch in _batches(outbox.due(channel, now), sender, failing):
            for message, outcome in zip(batch, _attempt(outbox, sender, batch), strict=False):
                result = _record(outbox, message, outcome, now)
                if result == "retry":
                    failing.add(_where(message))
                else:
                    progress = True
                    delivered += result == "delivered"
    return delivered


def _where(message: Message) -> str:
    return json.dumps(message.destination, sort_keys=True)


def _batches(due: list[Message], sender: Sender, failing: set[str]) -> Iterator[list[Message]]:
    """``due`` in batches of one destination each (one message each unless ``sender`` is a
    ``BatchSender``), skipping destinations that failed meanwhile."""
    size = sender.size if isinstance(sender, BatchSender) else 1
    by_destination: dict[str, list[Message]] = {}
    for message in due:
        by_destination.setdefault(_where(message), []).append(message)
    for where, messages in by_destination.items():
        for start in range(0, len(messages), size):
            if where in failing:
                break
            yield messages[start:start + size]


def _attempt(outbox: Outbox, sender: Sender, batch: list[Message]) -> list[Outcome]:
    """The outcome of each message of ``batch`` that was tried (the first one at least)."""
    try:
        payloads = outbox.payloads(batch)
        if isinstance(sender, BatchSender):
            return sender.send_many(batch[0].destination, payloads)
        sender(batch[0].destination, payloads[0])
    except Exception as exc:  # noqa: BLE001 - classified in _record
        return [exc]
    return [None]


def _record(outbox: Outbox, message: Message, outcome: Outcome, now: float) -> str:
    """Record the outcome of one attempt: "delivered", "dead" or "retry"."""
    if outcome is None:
        outbox.mark_delivered(message)
        _audit(outbox, "outbox.delivered", message, audit.SUCCESS)
        return "delivered"
    if isinstance(outcome, PayloadGone):
        return _die(outbox, message, str(outcome))
    if isinstance(outcome, Undeliverable):
        return _die(outbox, message, f"refused: {outcome}")
    error = describe(outcome)  # any other failure is transient
    if message.attempts + 1 >= outbox.max_attempts:
        return _die(outbox, message, f"{error} (attempt {message.attempts + 1} of {outbox.max_attempts})")
    delay = outbox.retry_later(message, error, now)
    log.warning("outbox %s #%d (%s) not delivered (%s); retry in %s s", message.channel, message.id,
                message.key, error, seconds(delay))
    return "retry"


def _audit(outbox: Outbox, action: str, message: Message, outcome: str, detail: str = "") -> None:
    """A delivery or a dead letter in the audit trail (an outbox made ``from_config`` has one)."""
    if outbox.config is not None:
        what = {"channel": message.channel, "message": message.id, "key": message.key,
                "destination": message.destination}
        audit.record(outbox.config, audit.Event(action, audit.SERVICE, what, outcome, detail))


def _die(outbox: Outbox, message: Message, reason: str) -> str:
    outbox.mark_dead(message, reason)
    _audit(outbox, "outbox.dead", message, audit.FAILURE, reason)
    log.error("outbox %s #%d (%s) is a dead letter: %s; see `ctai outbox`", message.channel, message.id,
              message.key, reason)
    return "dead"


def seconds(delay: float) -> str:
    """A delay for the log: one decimal below 10 s ("0.5"), whole seconds above ("300")."""
    return f"{delay:.1f}" if delay < 10 else f"{delay:.0f}"


def describe(exc: BaseException) -> str:
    """The exception's class and message, e.g. "ConnectionRefusedError: [Errno 111] Connection refused"."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def senders_of(config: Config) -> dict[str, Sender]:
    """Every channel's sender, as the plugins that deliver on them register it (``ctai_outbox_senders``)."""
    return outbox_senders(plugin_manager(config), config)


@contextmanager
def sending_lock(config: Config, channel: str) -> Iterator[bool]:
    """An exclusive lock on sending ``channel``: True if this process holds it, False if another does.

    Only one process (``ctai serve``, ``ctai outbox --send``) sends a channel at a time, so no
    message goes out twice at once. The lock ends with the process that holds it.
    """
    with open(data_dir(config) / f"outbox-{channel}.lock", "w") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def send_now(config: Config, senders: Mapping[str, Sender] | None = None) -> dict[str, int | None]:
    """Make every pending message due and send it now (``ctai outbox --send``).

    Returns the number delivered per channel, None for a channel that another process is
    sending (it sends them soon, as they are due now).
    """
    outbox = Outbox.from_config(config)
    outbox.retry_now()
    delivered: dict[str, int | None] = {}
    for channel, sender in (senders or senders_of(config)).items():
        with sending_lock(config, channel) as locked:
            delivered[channel] = send_due(outbox, channel, sender) if locked else None
    return delivered


class OutboxSender:
    """Background delivery: one thread per channel, started by ``ctai serve`` (service API start/stop).

    A channel's thread sends only while it holds that channel's ``sending_lock``; when another
    process holds it, the thread waits for it.
    """

    name = "outbox"

    def __init__(self, config: Config, senders: Mapping[str, Sender] | None = None) -> None:
        self.config = config
        self.outbox = Outbox.from_config(config)
        self.poll_seconds = float(config["outbox"]["poll_seconds"])
        self.senders = dict(senders or senders_of(config))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        if days := float(self.config["outbox"]["keep_days"]):
            log.info("outbox: %d finished message(s) older than %g days removed", self.outbox.purge(days), days)
        if orphans := self.outbox.remove_orphans():
            log.info("outbox: %d payload file(s) of no message removed", orphans)
        for channel, sender in self.senders.items():
            thread = threading.Thread(target=self._run, args=(channel, sender), name=f"outbox-{channel}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        _put.notify()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _run(self, channel: str, sender: Sender) -> None:
        while not self._stop.is_set():
            with sending_lock(self.config, channel) as locked:
                while locked and not self._stop.is_set():
                    seen = _put.count(channel)
                    try:
                        send_due(self.outbox, channel, sender)
                    except sqlite3.Error:
                        log.exception("outbox %s: database error; trying again", channel)
                    _put.wait(channel, seen, self.poll_seconds)
            self._stop.wait(self.poll_seconds)
