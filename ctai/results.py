"""Job records: one per job ID with its status and outcome, in SQLite under the data dir, or in
the shared Redis when the queue is there ([queue] backend = "redis").

Every process that enqueues or runs jobs writes here (Orthanc's plugin, the worker, the
listener, the web app); ``ctai jobs`` reads it. Status: pending, running, done, failed, skipped.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass

from ctai import sqlite
from ctai.config import Config, data_dir
from ctai.inputs.intended_use import OUTSIDE, patient_age
from ctai.model.typicality import ATYPICAL
from ctai.types import CLASSES, Failure, Job, Result

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
FINISHED = (DONE, FAILED, SKIPPED)

_SCHEMA = """
create table if not exists jobs (
    id text primary key, source text not null, status text not null,
    label text, probabilities text, seconds real, error text,
    enqueued real, started real, finished real, attempts integer not null default 0, owner text,
    options text, lease real, details text
)"""


@dataclass(frozen=True)
class Summary:
    """What a finished job came to, as recorded and shown to users."""

    status: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    #: What the job's first image's headers say (accession, study UID, modality, manufacturer,
    #: age, a hash of the patient ID), the site calibration and mode, the model's own mean
    #: probabilities, the flags of its results: for matching the RIS's truth and for drift (``ctai.site``).
    details: dict[str, object] | None = None


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
    lease: float | None = None
    details: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def summarize(results: list[Result], failures: list[Failure], mode: str = "live") -> Summary:
    """Done with the mean probabilities over the job's images; else failed or skipped, with why."""
    reasons = "; ".join(f.reason for f in failures) or None
    if results:
        mean = _mean([r.prediction.probabilities for r in results])
        return Summary(DONE, max(mean, key=mean.__getitem__), mean, reasons, _details(results, mode))
    if failures and all(f.reason.startswith("skipped") for f in failures):
        return Summary(SKIPPED, error=reasons, details={"mode": mode})
    return Summary(FAILED, error=reasons or "the job had no image", details={"mode": mode})


def _mean(probabilities: list[dict[str, float]]) -> dict[str, float]:
    return {c: sum(p[c] for p in probabilities) / len(probabilities) for c in CLASSES}


def _details(results: list[Result], mode: str) -> dict[str, object]:
    ds = results[0].source.dataset
    prediction = results[0].prediction
    own = [r.prediction.model_probabilities for r in results]
    patient = str(ds.get("PatientID", "") or "")
    return {"accession": str(ds.get("AccessionNumber", "") or ""), "study_uid": str(ds.get("StudyInstanceUID", "")),
            "modality": str(ds.get("Modality", "") or ""), "manufacturer": str(ds.get("Manufacturer", "") or ""),
            "age": age[0] if (age := patient_age(ds)) else None,
            "patient": patient_key(patient) if patient else "",
            "calibration": prediction.calibration, "mode": mode,
            "model_probabilities": _mean(own) if all(own) else None,
            "flags": list({(f.code, f.reason): {"code": f.code, "reason": f.reason}
                           for r in results for f in r.flags}.values())}


def refusal_reason(reason: str) -> str:
    """The ``ctai_refusals`` label of a ``Failure`` reason (few values: Prometheus labels must not be free text)."""
    if not reason.startswith("skipped: "):
        return "unreadable"
    reason = reason.removeprefix("skipped: ")
    if reason.startswith("modality"):
        return "modality"
    if reason.startswith("body part"):
        return "body_part"
    if reason.startswith(OUTSIDE):
        return "intended_use"
    if reason.startswith(ATYPICAL):
        return "atypical"
    return "not_chest"


def patient_key(patient_id: str) -> str:
    """A patient's key in records that group cases by patient: a hash, not the ID itself."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:16]


class JobStore:
    """The job records, with leases on running jobs: ``JobStore(config)`` opens the configured one,
    SQLite under the data dir (``SqliteJobStore``) or the shared Redis when the queue is there
    (``RedisJobStore``, so that every machine sees every job).

    A worker ``claim``s a job before running it: atomically, and only if no other claim holds a
    live lease on it; the claim's ``owner`` token ("host:pid:worker:claim") renews the lease while the
    job runs, and ``finish`` or ``retrying`` gives it up. A worker queues again the jobs whose
    lease ran out (``leased``): their worker died.
    """

    def __new__(cls, config: Config) -> JobStore:
        if cls is JobStore:
            cls = RedisJobStore if config["queue"]["backend"] == "redis" else SqliteJobStore
        return super().__new__(cls)

    def __init__(self, config: Config) -> None:
        self.config = config

    def pending(self, job: Job, enqueued: float) -> None:
        """The job was queued (again): earlier outcome kept until the new run ends."""
        self._write(job, dict(status=PENDING, enqueued=enqueued, attempts=0, error=None,
                              options=json.dumps(job.options)))

    def skipped(self, job: Job, reason: str) -> None:
        """The job was never queued, because its input is not for ctai."""
        now = time.time()
        self._write(job, dict(status=SKIPPED, error=reason, enqueued=now, started=now, finished=now,
                              label=None, probabilities=None, seconds=None))

    def retrying(self, job: Job, owner: str, error: str) -> None:
        """The claim of ``owner`` failed for a passing reason; the job waits in the queue's schedule."""
        self._write(job, dict(status=PENDING, error=f"retrying after: {error}"), owner)

    def finish(self, job: Job, owner: str, summary: Summary, seconds: float) -> None:
        probabilities = json.dumps(summary.probabilities) if summary.probabilities else None
        details = json.dumps(summary.details) if summary.details else None
        self._write(job, dict(status=summary.status, label=summary.label, probabilities=probabilities,
                              error=summary.error, seconds=seconds, finished=time.time(), details=details), owner)

    def release(self, job_id: str, owner: str) -> None:
        """Drop the lease of ``owner`` (an expired one, once its job is queued again)."""
        record = self.get(job_id)
        if record:
            self._write(Job(job_id, record.source), {}, owner)

    def claim(self, job: Job, owner: str, enqueued: float, lease: float) -> tuple[str, int]:
        """Atomically: ("busy", 0) if another claim holds a live lease; ("ran", 0) if a run that
        started after ``enqueued`` already finished; else the job is running by ``owner`` with a
        lease of ``lease`` seconds: ("claimed", this attempt's number)."""
        raise NotImplementedError

    def renew(self, job_id: str, owner: str, lease: float) -> bool:
        """Extend ``owner``'s lease; False if it no longer holds it."""
        return self.take_over(job_id, owner, owner, lease)

    def take_over(self, job_id: str, owner: str, new_owner: str, lease: float) -> bool:
        """Atomically give ``owner``'s lease to ``new_owner`` for ``lease`` seconds; False if
        ``owner`` no longer holds it (e.g. another worker took it over first)."""
        raise NotImplementedError

    def leased(self) -> list[JobRecord]:
        """The jobs whose lease is held (running), live or expired."""
        raise NotImplementedError

    def get(self, job_id: str) -> JobRecord | None:
        raise NotImplementedError

    def latest(self, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        """The latest jobs first."""
        raise NotImplementedError

    def _write(self, job: Job, values: dict[str, object], owner: str | None = None) -> None:
        """Set ``values`` (None clears a field); with ``owner``, also drop its lease if it holds it."""
        raise NotImplementedError


_COLUMNS = ("id, source, status, label, probabilities, seconds, error, enqueued, started, finished,"
            " attempts, owner, options, lease, details")


def _set_up(db: sqlite3.Connection) -> None:
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=normal")  # durable once committed, except on power loss
    db.execute(_SCHEMA)
    columns = {row[1] for row in db.execute("pragma table_info(jobs)")}
    if "lease" not in columns:
        db.execute("alter table jobs add column lease real")  # records written before leases
    if "details" not in columns:
        db.execute("alter table jobs add column details text")  # records written before details


class SqliteJobStore(JobStore):
    """The job records of one data dir (``jobs.sqlite3``); safe to use from several threads and
    processes of one machine (each thread with its connection, ``ctai.sqlite``)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.path = data_dir(config) / "jobs.sqlite3"

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (``ctai.sqlite``); ``with`` it, a transaction."""
        return sqlite.connection(self.path, _set_up)

    def _write(self, job: Job, values: dict[str, object], owner: str | None = None) -> None:
        columns = "".join(f", {k}" for k in values)
        updates = "".join(f", {k} = excluded.{k}" for k in values)
        marks = "".join(", ?" for _ in values)
        with self._db() as db:
            if values:
                db.execute(
                    f"insert into jobs (id, source{columns}) values (?, ?{marks})"
                    f" on conflict(id) do update set source = excluded.source{updates}",
                    (job.id, job.source, *values.values()),
                )
            if owner is not None:
                db.execute("update jobs set lease = null where id = ? and owner = ?", (job.id, owner))

    def claim(self, job: Job, owner: str, enqueued: float, lease: float) -> tuple[str, int]:
        now = time.time()
        with self._db() as db:
            db.execute("begin immediate")  # no other process reads between the check and the write
            row = db.execute("select status, started, lease from jobs where id = ?", (job.id,)).fetchone()
            if row and (row[2] or 0) > now:
                return "busy", 0
            if row and row[0] in FINISHED and (row[1] or 0) > enqueued:
                return "ran", 0
            db.execute(
                "insert into jobs (id, source, status, started, attempts, owner, lease)"
                " values (?, ?, ?, ?, 1, ?, ?) on conflict(id) do update set status = excluded.status,"
                " started = excluded.started, attempts = attempts + 1, owner = excluded.owner,"
                " lease = excluded.lease",
                (job.id, job.source, RUNNING, now, owner, now + lease),
            )
            return "claimed", int(db.execute("select attempts from jobs where id = ?", (job.id,)).fetchone()[0])

    def take_over(self, job_id: str, owner: str, new_owner: str, lease: float) -> bool:
        with self._db() as db:
            return db.execute("update jobs set lease = ?, owner = ? where id = ? and owner = ?"
                              " and (lease is not null or status = ?)",
                              (time.time() + lease, new_owner, job_id, owner, RUNNING)).rowcount == 1

    def leased(self) -> list[JobRecord]:
        # A running record without a lease was left by a version of ctai before leases.
        return self._select("where lease is not null or status = ?", (RUNNING,))

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select("where id = ?", (job_id,))
        return rows[0] if rows else None

    def latest(self, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        where, args = ("where status = ?", (status,)) if status else ("", ())
        order = "order by coalesce(finished, started, enqueued) desc"
        return self._select(f"{where} {order} limit ?", (*args, limit))

    def _select(self, clause: str, args: tuple) -> list[JobRecord]:
        with self._db() as db:
            rows = db.execute(f"select {_COLUMNS} from jobs {clause}", args).fetchall()
        return [JobRecord(*row[:4], json.loads(row[4]) if row[4] else None, *row[5:12],
                          json.loads(row[12] or "{}"), row[13], json.loads(row[14]) if row[14] else None)
                for row in rows]


# Redis: one hash per job ("ctai:job:<id>"), a sorted set of job IDs by their last change
# ("ctai:jobs", for `ctai jobs`) and one of the held leases by expiry ("ctai:leases").
_KEY, _INDEX, _LEASES = "ctai:job:", "ctai:jobs", "ctai:leases"

# KEYS: job, index, leases. ARGV: id, owner or "", index score, then field/value pairs ("" clears).
_WRITE = """
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'owner') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'lease')
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 1
"""

# KEYS: job, index, leases. ARGV: id, source, owner, now, enqueued, lease expiry.
_CLAIM = """
local now = tonumber(ARGV[4])
if tonumber(redis.call('HGET', KEYS[1], 'lease') or '0') > now then return {'busy', 0} end
local status = redis.call('HGET', KEYS[1], 'status')
if (status == 'done' or status == 'failed' or status == 'skipped')
    and tonumber(redis.call('HGET', KEYS[1], 'started') or '0') > tonumber(ARGV[5]) then
  return {'ran', 0}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'source', ARGV[2], 'status', 'running', 'started', ARGV[4],
           'owner', ARGV[3], 'lease', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
return {'claimed', attempts}
"""

# KEYS: job, leases. ARGV: id, owner, new expiry, new owner.
_TAKE_OVER = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] or not redis.call('HGET', KEYS[1], 'lease') then
  return 0
end
redis.call('HSET', KEYS[1], 'lease', ARGV[3], 'owner', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

_FLOATS = ("seconds", "enqueued", "started", "finished", "lease")


class RedisJobStore(JobStore):
    """The job records of every machine, in the Redis that holds the queue ([queue] url)."""

    def __init__(self, config: Config) -> None:
        from ctai import redisdb

        super().__init__(config)
        self.url = str(config["queue"]["url"])
        self.redis = redisdb.client(self.url)
        self._translated = redisdb.translated
        self._scripts = {name: self.redis.register_script(text)
                         for name, text in (("write", _WRITE), ("claim", _CLAIM), ("take_over", _TAKE_OVER))}

    def _run(self, script: str, keys: list[str], args: list[object]) -> object:
        with self._translated(self.url):
            return self._scripts[script](keys=keys, args=args)

    def _write(self, job: Job, values: dict[str, object], owner: str | None = None) -> None:
        pairs: list[object] = ["source", job.source]
        for key, value in values.items():
            pairs += [key, "" if value is None else value]
        self._run("write", [_KEY + job.id, _INDEX, _LEASES], [job.id, owner or "", time.time(), *pairs])

    def claim(self, job: Job, owner: str, enqueued: float, lease: float) -> tuple[str, int]:
        now = time.time()
        outcome, attempts = self._run("claim", [_KEY + job.id, _INDEX, _LEASES],
                                      [job.id, job.source, owner, repr(now), repr(enqueued), repr(now + lease)])
        return str(outcome), int(attempts)

    def take_over(self, job_id: str, owner: str, new_owner: str, lease: float) -> bool:
        return bool(self._run("take_over", [_KEY + job_id, _LEASES],
                              [job_id, owner, repr(time.time() + lease), new_owner]))

    def leased(self) -> list[JobRecord]:
        with self._translated(self.url):
            ids = self.redis.zrange(_LEASES, 0, -1)
        return self._records(ids)

    def get(self, job_id: str) -> JobRecord | None:
        found = self._records([job_id])
        return found[0] if found else None

    def latest(self, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        found: list[JobRecord] = []
        start, page = 0, max(limit, 200)
        while len(found) < limit:
            with self._translated(self.url):
                ids = self.redis.zrevrange(_INDEX, start, start + page - 1)
            if not ids:
                break
            found += [r for r in self._records(ids) if status is None or r.status == status]
            start += page
        return found[:limit]

    def _records(self, ids: list[str]) -> list[JobRecord]:
        with self._translated(self.url):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(_KEY + job_id)
            hashes = pipe.execute()
        return [self._record(job_id, h) for job_id, h in zip(ids, hashes, strict=True) if h]

    @staticmethod
    def _record(job_id: str, h: dict[str, str]) -> JobRecord:
        floats = {k: float(h[k]) if k in h else None for k in _FLOATS}
        return JobRecord(
            id=job_id, source=h.get("source", ""), status=h.get("status", PENDING), label=h.get("label"),
            probabilities=json.loads(h["probabilities"]) if "probabilities" in h else None,
            seconds=floats["seconds"], error=h.get("error"), enqueued=floats["enqueued"],
            started=floats["started"], finished=floats["finished"], attempts=int(h.get("attempts", 0)),
            owner=h.get("owner"), options=json.loads(h.get("options", "{}")), lease=floats["lease"],
            details=json.loads(h["details"]) if "details" in h else None)
