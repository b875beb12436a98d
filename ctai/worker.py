"""``ctai worker``: takes jobs from the queue, loads their images, runs the pipeline, records.

Several jobs run at once, one per consumer thread ([worker] threads); the pipeline's
classifier is wrapped in a ``BatchingClassifier``, so the radiographs of jobs waiting together
are classified in shared batches. A ``TransientError`` is retried ([worker] attempts, delays
doubling from retry_delay; huey keeps the retry durably in its schedule); any other error
fails the job once, its reason recorded. Jobs left "running" by a worker that
died are queued again when a worker starts on the same host.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
from typing import Any

import numpy as np
import pluggy
from huey.consumer import Consumer
from huey.exceptions import RetryTask

from ctai import hookimpl, jobs
from ctai.config import Config
from ctai.errors import TransientError
from ctai.hookspecs import Classifier
from ctai.model.batching import BatchingClassifier
from ctai.pipeline import Pipeline
from ctai.plugins import plugin_manager
from ctai.results import FINISHED, JobStore, Summary, summarize
from ctai.types import Failure, Job, Result

log = logging.getLogger(__name__)


class _Consumer(Consumer):
    def _set_signal_handlers(self) -> None:
        """Signals belong to ``ctai serve`` (or ``ctai worker``), which stops the worker itself."""


class _Batched:
    """Plugin that hands the pipeline the batching wrapper instead of the plain classifier."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    @hookimpl(tryfirst=True)
    def ctai_classifier(self, config: Config) -> Classifier:
        return self.classifier


class Worker:
    """The queue consumer; ``start()`` returns once its threads run, ``stop()`` waits for them."""

    def __init__(self, config: Config, pm: pluggy.PluginManager | None = None) -> None:
        self.config = config
        self.store = JobStore(config)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.pm = pm or plugin_manager(config)
        inner = self.pm.hook.ctai_classifier(config=config)
        if inner is None:
            raise RuntimeError("no classifier plugin is enabled")
        wait = float(config["worker"]["batch_wait_ms"]) / 1000
        self.classifier = BatchingClassifier(inner, int(config["model"]["batch_size"]), wait)
        self.pm.register(_Batched(self.classifier), name="ctai-batching")
        self.pipeline = Pipeline(config, self.pm)
        self.huey = jobs.make_queue(config)
        jobs.task(self.huey, self._run)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        threads = int(config["worker"]["threads"])
        poll = float(config["worker"]["poll_interval"])
        self.consumer = _Consumer(self.huey, workers=threads, periodic=False, initial_delay=poll,
                                  backoff=1.0, max_delay=poll, shutdown_timeout=60)

    def start(self) -> None:
        size = self.classifier.input_size
        self.pipeline.scores(np.zeros((1, size, size, 1), np.float32))  # the first call builds the graph
        self._requeue_abandoned()
        self.consumer.start()
        log.info("worker: %d threads on the %s queue", self.consumer.workers, self.config["queue"]["backend"])

    def stop(self) -> None:
        """Let running jobs finish (at most a minute), then stop."""
        self.consumer.stop(graceful=True)
        self.classifier.close()

    def alive(self) -> bool:
        """Whether every consumer thread still runs."""
        threads = [thread for _, thread in self.consumer.worker_threads]
        return bool(threads) and all(thread.is_alive() for thread in threads)

    def _requeue_abandoned(self) -> None:
        """Queue again the jobs that a dead worker process on this host left running."""
        host = self.owner.split(":")[0]
        for record in self.store.running():
            owner_host, _, pid = (record.owner or "").rpartition(":")
            if owner_host == host and (pid == str(os.getpid()) or not _alive(int(pid or 0))):
                log.warning("worker: %s was left running by %s; queued again", record.id, record.owner)
                jobs.enqueue(self.config, Job(record.id, record.source, record.options))

    def _run(self, message: dict[str, Any]) -> None:
        """The huey task: one job, from loading its images to recording its outcome."""
        job = jobs.job_of(message)
        record = self.store.get(job.id)
        if record and record.status in FINISHED and (record.started or 0) > message["enqueued"]:
            log.info("worker: %s already ran after it was queued; skipped", job.id)
            return
        with self._busy_lock:
            if job.id in self._busy:
                raise RetryTask(delay=1.0)  # the same job is running in another thread
            self._busy.add(job.id)
        try:
            self._attempt(job)
        finally:
            with self._busy_lock:
                self._busy.discard(job.id)

    def _attempt(self, job: Job) -> None:
        attempt = self.store.start(job, self.owner)
        started = time.monotonic()
        job.options["started"] = time.time()
        try:
            summary = self._process(job)
        except TransientError as error:
            tries = int(self.config["worker"]["attempts"])
            if attempt < tries:
                delay = float(self.config["worker"]["retry_delay"]) * 2 ** (attempt - 1)
                log.warning("worker: %s: %s; try %d of %d in %.1f s", job.id, error, attempt + 1, tries,
                            delay)
                self.store.retrying(job, str(error))
                raise RetryTask(delay=delay) from error
            summary = Summary("failed", error=f"gave up after {tries} tries: {error}")
        except Exception as error:
            log.exception("worker: %s failed", job.id)
            summary = Summary("failed", error=str(error) or type(error).__name__)
        seconds = time.monotonic() - started
        self.store.finish(job, summary, seconds)
        outcome = summary.label or summary.error or ""
        log.info("worker: %s %s %s in %.1f s", job.id, summary.status, outcome, seconds)

    def _process(self, job: Job) -> Summary:
        try:
            sources = self.pm.hook.ctai_load_job(job=job, config=self.config)
            if sources is None:
                raise ValueError(f"no plugin loads jobs of source {job.source!r}")
        except Exception as error:
            self.pm.hook.ctai_job_failed(job=job, error=error, config=self.config)
            raise
        outcomes = self.pipeline.run(job, sources)
        return summarize([o for o in outcomes if isinstance(o, Result)],
                         [o for o in outcomes if isinstance(o, Failure)])


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_worker(args: argparse.Namespace, config: Config) -> int:
    from ctai.serve import WorkerService, run_services, setup_logging

    setup_logging()
    return run_services([WorkerService(config)])
