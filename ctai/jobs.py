"""The durable job queue, on huey: an SQLite file under the data dir, or a Redis broker.

Any process enqueues (Orthanc's plugin, the DICOM listener, the web app); ``ctai worker`` runs
the jobs. A queued job is a JSON-able payload: the ``Job`` fields plus the time it was queued,
which lets the worker skip a job that a later-started run already covered (``ctai.worker``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from huey import Huey, SqliteHuey
from huey.api import TaskWrapper

from ctai.config import Config, data_dir
from ctai.results import JobStore
from ctai.types import Job

#: The name under which producers and the worker agree on the job task.
TASK_NAME = "ctai.run_job"

_lock = threading.Lock()
_producers: dict[tuple[str, str], TaskWrapper] = {}


def make_queue(config: Config) -> Huey:
    """A huey instance on the configured backend ([queue] backend, url)."""
    backend = config["queue"]["backend"]
    if backend == "sqlite":
        return SqliteHuey("ctai", filename=str(data_dir(config) / "queue.sqlite3"), results=False)
    if backend == "redis":
        from huey import RedisHuey

        return RedisHuey("ctai", url=config["queue"]["url"], results=False)
    raise ValueError(f"[queue] backend must be 'sqlite' or 'redis', not {backend!r}")


def payload(job: Job, enqueued: float) -> dict[str, Any]:
    return {"id": job.id, "source": job.source, "options": job.options, "enqueued": enqueued}


def job_of(message: dict[str, Any]) -> Job:
    return Job(message["id"], message["source"], dict(message["options"]))


def task(huey: Huey, handler: Callable[[dict[str, Any]], None]) -> TaskWrapper:
    """Register ``handler`` as the job task (retries are the worker's: ``RetryTask``)."""

    def run_job(message: dict[str, Any]) -> None:  # huey names tasks by module: this one, for all
        handler(message)

    return huey.task(name=TASK_NAME)(run_job)


def _run_elsewhere(message: dict[str, Any]) -> None:
    raise RuntimeError("jobs run in `ctai worker`")


def _producer(config: Config) -> TaskWrapper:
    key = (config["queue"]["backend"], config["queue"]["url"] if config["queue"]["backend"] == "redis"
           else str(data_dir(config)))
    with _lock:
        if key not in _producers:
            _producers[key] = task(make_queue(config), _run_elsewhere)
        return _producers[key]


def enqueue(config: Config, job: Job) -> None:
    """Queue a job for the worker; it is stored durably when this returns.

    ``job.id`` names the work: a job queued again under the same ID (e.g. "orthanc:<series>")
    runs once more only if no run started after it was queued.
    """
    now = time.time()
    JobStore(config).pending(job, now)
    _producer(config)(payload(job, now))
