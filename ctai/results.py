"""Job records: one row per job ID with its status and outcome, in SQLite under the data dir.

Every process that enqueues or runs jobs writes here (Orthanc's plugin, the worker, the
listener, the web app); ``ctai jobs`` reads it. Status: pending, running, done, failed, skipped.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ctai.config import Config, data_dir
from ctai.types import CLASSES, Failure, Job, Result

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
FINISHED = (DONE, FAILED, SKIPPED)

_SCHEMA = """
create table if not exists jobs (
    id text primary key, source text not null, status text not null,
    label text, probabilities text, seconds real, error text,
    enqueued real, started real, finished real, attempts integer not null default 0, owner text,
    options text
)"""


@dataclass(frozen=True)
class Summary:
    """What a finished job came to, as recorded and shown to users."""

    status: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    source: str
    status: str
    label: str | None
    probabilities: dict[str, float] | None
    seconds: float | None
    error: str | None
    enqueued: float | None
    started: float | None
    finished: float | None
    attempts: int
    owner: str | None
    options: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def summarize(results: list[Result], failures: list[Failure]) -> Summary:
    """Done with the mean probabilities over the job's images; else failed or skipped, with why."""
    reasons = "; ".join(f.reason for f in failures) or None
    if results:
        mean = {c: sum(r.prediction.probabilities[c] for r in results) / len(results) for c in CLASSES}
        return Summary(DONE, max(mean, key=mean.__getitem__), mean, reasons)
    if failures and all(f.reason.startswith("skipped") for f in failures):
        return Summary(SKIPPED, error=reasons)
    return Summary(FAILED, error=reasons or "the job had no image")


_local = threading.local()


class JobStore:
    """The job records of one data dir; safe to use from several threads and processes.

    Each thread keeps its connection open: closing the last one checkpoints the write-ahead log,
    which would cost every write several milliseconds.
    """

    def __init__(self, config: Config) -> None:
        self.path = data_dir(config) / "jobs.sqlite3"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        connections = _local.__dict__.setdefault("connections", {})
        if self.path not in connections:
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("pragma journal_mode=wal")
            db.execute("pragma synchronous=normal")  # durable once committed, except on power loss
            db.execute(_SCHEMA)
            connections[self.path] = db
        with connections[self.path] as db:
            yield db

    def _upsert(self, job: Job, **values: object) -> None:
        columns = ", ".join(values)
        updates = ", ".join(f"{k} = excluded.{k}" for k in values)
        with self._db() as db:
            db.execute(
                f"insert into jobs (id, source, {columns}) values (?, ?, {', '.join('?' * len(values))})"
                f" on conflict(id) do update set source = excluded.source, {updates}",
                (job.id, job.source, *values.values()),
            )

    def pending(self, job: Job, enqueued: float) -> None:
        """The job was queued (again): earlier outcome kept until the new run ends."""
        self._upsert(job, status=PENDING, enqueued=enqueued, attempts=0, error=None,
                     options=json.dumps(job.options))

    def skipped(self, job: Job, reason: str) -> None:
        """The job was never queued, because its input is not for ctai."""
        now = time.time()
        self._upsert(job, status=SKIPPED, error=reason, enqueued=now, started=now, finished=now,
                     label=None, probabilities=None, seconds=None)

    def start(self, job: Job, owner: str) -> int:
        """Mark the job running by ``owner`` ("host:pid"); returns this attempt's number."""
        with self._db() as db:
            db.execute(
                "insert into jobs (id, source, status, started, attempts, owner) values (?, ?, ?, ?, 1, ?)"
                " on conflict(id) do update set status = excluded.status, started = excluded.started,"
                " attempts = attempts + 1, owner = excluded.owner",
                (job.id, job.source, RUNNING, time.time(), owner),
            )
            return int(db.execute("select attempts from jobs where id = ?", (job.id,)).fetchone()[0])

    def retrying(self, job: Job, error: str) -> None:
        self._upsert(job, status=PENDING, error=f"retrying after: {error}")

    def finish(self, job: Job, summary: Summary, seconds: float) -> None:
        probabilities = json.dumps(summary.probabilities) if summary.probabilities else None
        self._upsert(job, status=summary.status, label=summary.label, probabilities=probabilities,
                     error=summary.error, seconds=seconds, finished=time.time())

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select("where id = ?", (job_id,))
        return rows[0] if rows else None

    def latest(self, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        """The latest jobs first."""
        where, args = ("where status = ?", (status,)) if status else ("", ())
        order = "order by coalesce(finished, started, enqueued) desc"
        return self._select(f"{where} {order} limit ?", (*args, limit))

    def running(self) -> list[JobRecord]:
        return self._select("where status = ?", (RUNNING,))

    def _select(self, clause: str, args: tuple) -> list[JobRecord]:
        with self._db() as db:
            rows = db.execute(
                "select id, source, status, label, probabilities, seconds, error, enqueued, started,"
                f" finished, attempts, owner, options from jobs {clause}", args).fetchall()
        return [JobRecord(*row[:4], json.loads(row[4]) if row[4] else None, *row[5:12],
                          json.loads(row[12] or "{}")) for row in rows]


def format_record(record: JobRecord) -> str:
    """One line of ``ctai jobs``."""
    when = record.finished or record.started or record.enqueued
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "-"
    probs = "  ".join(f"{c} {record.probabilities[c]:6.1%}" for c in CLASSES) if record.probabilities else ""
    seconds = f"{record.seconds:.1f} s" if record.seconds is not None else ""
    line = f"{stamp}  {record.id:<50} {record.status:<8} {record.label or '':<9} {probs} {seconds}"
    return line.rstrip() + (f"  {record.error}" if record.error else "")


def cmd_jobs(args: argparse.Namespace, config: Config) -> int:
    records = JobStore(config).latest(args.limit, args.status)
    for record in records:
        print(json.dumps(record.as_dict()) if args.json else format_record(record))
    return 0
