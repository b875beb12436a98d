"""The durable job queue, on huey: an SQLite file under the data dir, or a Redis broker.

Any process enqueues (Orthanc's plugin, the DICOM listener, the web app); ``ctai worker`` runs
the jobs. A queued job is a JSON-able payload: the ``Job`` fields plus the time it was queued,
which lets the worker skip a job that a later-started run already covered (``ctai.worker``).

With Redis, workers on several machines share the queue "ctai". A job whose input lies on the
machine that received it (the listener's spool, a phone upload) is queued ``local``: its
options name the host ("host") and it goes to that host's own queue, "ctai.<host>", which only
that host's workers take.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from huey.api import TaskWrapper

from ctai.config import Config, data_dir
from ctai.held import HoldingHuey, RedisHoldingStorage, SqliteHoldingStorage
from ctai.results import JobStore
from ctai.types import Job

#: The name under which producers and the worker agree on the job task.
TASK_NAME = "ctai.run_job"

_lock = threading.Lock()
_producers: dict[tuple[str, str], TaskWrapper] = {}


def make_queue(config: Config, host: str | None = None, taker: str | None = None) -> HoldingHuey:
    """A huey instance on the configured backend ([queue] backend, url): the shared queue, or
    with Redis the queue of ``host``'s own jobs (SQLite is one machine's: one queue). ``taker``:
    the worker that takes messages from it (``ctai.held``); producers leave it out."""
    backend = config["queue"]["backend"]
    if backend == "sqlite":
        return HoldingHuey("ctai", results=False, storage_class=SqliteHoldingStorage, taker=taker,
                           filename=str(data_dir(config) / "queue.sqlite3"))
    if backend == "redis":
        return HoldingHuey(f"ctai.{host}" if host else "ctai", results=False, storage_class=RedisHoldingStorage,
                           taker=taker, url=config["queue"]["url"], clean_name=False)
    raise ValueError(f"[queue] backend must be 'sqlite' or 'redis', not {backend!r}")


def this_host() -> str:
    return socket.gethostname()


def payload(job: Job, enqueued: float) -> dict[str, Any]:
    return {"id": job.id, "source": job.source, "options": job.options, "enqueued": enqueued}


def job_of(message: dict[str, Any]) -> Job:
    return Job(message["id"], message["source"], dict(message["options"]))


def task(huey: HoldingHuey, handler: Callable[[dict[str, Any]], None]) -> TaskWrapper:
    """Register ``handler`` as the job task (retries are the worker's: ``RetryTask``)."""

    def run_job(message: dict[str, Any]) -> None:  # huey names tasks by module: this one, for all
        handler(message)

    return huey.task(name=TASK_NAME)(run_job)


def _run_elsewhere(message: dict[str, Any]) -> None:
    raise RuntimeError("jobs run in `ctai worker`")


def _producer(config: Config, host: str | None) -> TaskWrapper:
    redis = config["queue"]["backend"] == "redis"
    key = (config["queue"]["url"], host) if redis else (str(data_dir(config)), None)
    with _lock:
        if key not in _producers:
            _producers[key] = task(make_queue(config, host if redis else None), _run_elsewhere)
        return _producers[key]


def enqueue(config: Config, job: Job, local: bool = False) -> None:
    """Queue a job for the worker; it is stored durably when this returns. ``local``: only a
    worker on this machine can load its input (see above).

    ``job.id`` names the work: a job queued again under the same ID (e.g. "orthanc:<series>")
    runs once more only if no run started after it was queued. Raises ``TransientError`` when
    the queue is unreachable or full (Redis): nothing was queued then; queue it again later.
    """
    if local:
        job.options["host"] = this_host()
    now = time.time()
    JobStore(config).pending(job, now)
    if config["queue"]["backend"] == "redis":
        from ctai.redisdb import translated

        with translated(config["queue"]["url"]):
            _producer(config, job.options.get("host"))(payload(job, now))
    else:
        _producer(config, None)(payload(job, now))
