"""``ctai worker``: takes jobs from the queue, loads their images, runs the pipeline, records.

Several jobs run at once, one per consumer thread ([worker] threads); the pipeline's
classifier is wrapped in a ``BatchingClassifier``, so the radiographs of jobs waiting together
are classified in shared batches. A ``TransientError`` is retried ([worker] attempts, delays
doubling from retry_delay; huey keeps the retry durably in its schedule); any other error
fails the job once, its reason recorded.

A worker claims each job before running it (``JobStore.claim``): a lease of [worker]
lease_seconds that a thread renews every third of it while the job runs. Every worker looks
for leases that ran out (or whose process on this host is gone) and queues those jobs again,
whichever machine ran them. A claim never succeeds while another one's lease is live, so no
two workers run a job at once. Until its task has run, the queue holds a taken message for the
worker that took it (``ctai.held``), under a heartbeat that the same thread renews; messages
held by dead workers are queued again the same way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import pluggy
from huey.consumer import Consumer
from huey.exceptions import RetryTask

from ctai import hookimpl, jobs, redisdb
from ctai.config import Config
from ctai.errors import TransientError
from ctai.hookspecs import Classifier
from ctai.model.batching import BatchingClassifier
from ctai.pipeline import Pipeline, released
from ctai.plugins import plugin_manager
from ctai.results import JobStore, Summary, summarize
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
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"  # claims add ":<id>"
        self.pm = pm or plugin_manager(config)
        inner = self.pm.hook.ctai_classifier(config=config)
        if inner is None:
            raise RuntimeError("no classifier plugin is enabled")
        wait = float(config["worker"]["batch_wait_ms"]) / 1000
        self.classifier = BatchingClassifier(inner, int(config["model"]["batch_size"]), wait)
        self.pm.register(_Batched(self.classifier), name="ctai-batching")
        self.pipeline = Pipeline(config, self.pm)
        self._warm = False
        self.lease = float(config["worker"]["lease_seconds"])
        self._held: dict[str, str] = {}  # job ID -> the owner token of this process's claim
        self._held_lock = threading.Lock()
        self._stopping = threading.Event()
        self._redis_up_since: float | None = None  # monotonic; None while the store is unreachable
        self._leases = threading.Thread(target=self._keep_leases, name="worker-leases", daemon=True)
        redis = config["queue"]["backend"] == "redis"
        hosts = [None, jobs.this_host()] if redis else [None]
        self.queues = [jobs.make_queue(config, host, taker=self.owner) for host in hosts]
        threads = int(config["worker"]["threads"])
        poll = float(config["worker"]["poll_interval"])
        # Redis wakes a waiting thread at once: the delay is the backoff after an error (Redis down).
        backoff, max_delay = (2.0, 10.0) if redis else (1.0, poll)
        self.consumers = []
        for huey in self.queues:
            jobs.task(huey, self._run)
            self.consumers.append(_Consumer(huey, workers=threads, periodic=False, initial_delay=poll,
                                            backoff=backoff, max_delay=max_delay, shutdown_timeout=60))

    def warm_up(self) -> None:
        """Load and convert the networks (``Pipeline.warm_up``); ``start`` does it if not done yet."""
        self.pipeline.warm_up()
        self._warm = True

    def start(self) -> None:
        if self.config["queue"]["backend"] == "redis":
            url = self.config["queue"]["url"]
            redisdb.wait_until_ready(url, float(self.config["queue"]["wait_seconds"]))
        if not self._warm:
            self.warm_up()
        self._redis_up_since = time.monotonic()
        try:
            self._beat()
            self._requeue_abandoned()
        except TransientError as exc:  # Redis full: nothing can be taken either; the thread tries again
            log.error("worker: %s", exc)
        self._leases.start()
        for consumer in self.consumers:
            consumer.start()
        log.info("worker %s: %d threads on each of %d %s queue(s)", self.owner, self.consumers[0].workers,
                 len(self.consumers), self.config["queue"]["backend"])

    def stop(self) -> None:
        """Let running jobs finish (at most a minute), then stop."""
        for consumer in self.consumers:
            consumer.stop(graceful=True)
        self._stopping.set()
        if self._leases.is_alive():
            self._leases.join()
        self.classifier.close()

    def alive(self) -> bool:
        """Whether every consumer thread still runs."""
        threads = [thread for consumer in self.consumers for _, thread in consumer.worker_threads]
        return bool(threads) and all(thread.is_alive() for thread in threads)

    def _keep_leases(self) -> None:
        """Renew this process's leases, and queue again the jobs of leases that ran out."""
        while not self._stopping.wait(self.lease / 3):
            try:
                with self._held_lock:
                    held = dict(self._held)
                for job_id, owner in held.items():
                    if not self.store.renew(job_id, owner, self.lease):
                        # Another worker may run it again now: same outputs, same UIDs (no duplicates).
                        log.warning("worker: lost the lease of %s (renewed too late)", job_id)
                        with self._held_lock:
                            self._held.pop(job_id, None)
                self._beat()
                self._requeue_abandoned()
                self._redis_up_since = self._redis_up_since or time.monotonic()
            except TransientError as exc:  # Redis down: leases run out, the jobs go on running
                self._redis_up_since = None
                log.error("worker: cannot renew leases: %s", exc)
            except Exception:  # noqa: BLE001 - keep renewing; the next round tries again
                log.exception("worker: renewing leases failed")

    def _beat(self) -> None:
        for huey in self.queues:
            huey.storage.beat(time.time() + self.lease)

    def _requeue_abandoned(self) -> None:
        """Queue again the jobs whose lease ran out, or whose worker process on this host is gone,
        and the messages that dead workers took but had not claimed.

        Leases count as run out only once this worker has reached the store for a whole lease:
        after an outage (Redis restarting), every live worker has had time to renew its own.
        """
        up = self._redis_up_since
        now = time.time() if up is not None and time.monotonic() - up >= self.lease else 0.0
        for huey in self.queues:
            for taker, until in huey.storage.takers().items():
                if self._abandoned(taker, until, now) and (count := huey.storage.give_back(taker)):
                    log.warning("worker: %d message(s) taken by %s, gone, queued again", count, taker)
        for record in self.store.leased():
            if not self._abandoned(record.owner or "", record.lease or 0, now):
                continue
            reaper = f"{self.owner}:{uuid.uuid4().hex[:8]}"
            if not self.store.take_over(record.id, record.owner or "", reaper, self.lease):
                continue  # another worker was quicker
            log.warning("worker: %s was left running by %s; queued again", record.id, record.owner)
            jobs.enqueue(self.config, Job(record.id, record.source, record.options))
            self.store.release(record.id, reaper)

    def _abandoned(self, owner: str, lease: float, now: float) -> bool:
        """Whether the claim or taker ``owner`` ("host:pid:worker[:claim]") is dead: its lease (or
        heartbeat) ran out, or its process on this host is gone."""
        if owner == self.owner or owner.startswith(f"{self.owner}:"):
            return False
        host, pid = (owner.split(":") + ["", ""])[:2]
        gone = pid != str(os.getpid()) and not _alive(int(pid) if pid.isdigit() else 0)
        return lease < now or (host == jobs.this_host() and gone)

    def _run(self, message: dict[str, Any]) -> None:
        """The huey task: one job, from claiming it to recording its outcome."""
        job = jobs.job_of(message)
        owner = f"{self.owner}:{uuid.uuid4().hex[:8]}"
        # The message is out of the queue now: wait out a Redis outage rather than drop it.
        outcome, attempt = redisdb.persistently(
            lambda: self.store.claim(job, owner, message["enqueued"], self.lease), f"claiming {job.id}")
        if outcome == "ran":
            log.info("worker: %s already ran after it was queued; skipped", job.id)
            return
        if outcome == "busy":
            raise RetryTask(delay=1.0)  # running elsewhere (another thread or machine): look again
        with self._held_lock:
            self._held[job.id] = owner
        try:
            self._attempt(job, owner, attempt)
        finally:
            with self._held_lock:
                self._held.pop(job.id, None)

    def _attempt(self, job: Job, owner: str, attempt: int) -> None:
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
                reason = str(error)
                redisdb.persistently(lambda: self.store.retrying(job, owner, reason), f"recording {job.id}")
                raise RetryTask(delay=delay) from error
            summary = Summary("failed", error=f"gave up after {tries} tries: {error}")
        except Exception as error:
            log.exception("worker: %s failed", job.id)
            summary = Summary("failed", error=str(error) or type(error).__name__)
        seconds = time.monotonic() - started
        redisdb.persistently(lambda: self.store.finish(job, owner, summary, seconds), f"recording {job.id}")
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
        # Released as they come: a series of hundreds of images does not hold every output at once.
        outcomes = [released(o) if isinstance(o, Result) else o for o in self.pipeline.process(job, sources)]
        return summarize([o for o in outcomes if isinstance(o, Result)],
                         [o for o in outcomes if isinstance(o, Failure)],
                         "shadow" if self.pipeline.site.shadow else "live")


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
