"""The queue, the job records and the worker, with a fake source and classifier (no model, no Orthanc)."""

from __future__ import annotations

import gc
import io
import socket
import threading
import time
from collections import Counter
from contextlib import redirect_stdout

import numpy as np
import pytest
from pydicom import Dataset

from ctai import cli, hookimpl, jobs
from ctai.errors import TransientError
from ctai.model.backend import ProbabilityClassifier
from ctai.model.batching import BatchingClassifier
from ctai.results import JobStore, Summary
from ctai.types import CLASSES, Job, ModelInfo, SourceImage
from tests.dicomfactory import picture
from tests.peers import wait_until

CHEST = (picture() / 255.0).astype(np.float32)  # passes the input gate

PROBABILITIES = np.array([0.2, 0.7, 0.1])


class FakeClassifier(ProbabilityClassifier):
    info = ModelInfo("fake", "1")
    input_size = 16

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        return np.tile(PROBABILITIES, (len(batch), 1))


class FakeSource:
    """Jobs of source "test"; options: "images" (count), "fail" ("transient" or "permanent"),
    "times" (how many loads fail transiently)."""

    def __init__(self) -> None:
        self.classifier = FakeClassifier()
        self.loads: Counter[str] = Counter()

    @hookimpl(tryfirst=True)
    def ctai_classifier(self, config):
        return self.classifier

    @hookimpl
    def ctai_load_job(self, job, config):
        if job.source != "test":
            return None
        self.loads[job.id] += 1
        time.sleep(0.05)  # like fetching: lets the jobs of several threads meet at the classifier
        fail = job.options.get("fail")
        if fail == "transient" and self.loads[job.id] <= job.options.get("times", 99):
            raise TransientError("the source is down")
        if fail == "permanent":
            raise ValueError("undecodable pixels")
        return [SourceImage(f"{job.id}/{i}", Dataset(), CHEST)
                for i in range(job.options.get("images", 1))]


@pytest.fixture
def config(config):
    config["plugins"]["disabled"] = ["sr", "sc", "folder", "cstore", "hl7", "orthanc", "upload", "listener"]
    config["worker"].update(threads=4, batch_wait_ms=100, retry_delay=0.1, poll_interval=0.05)
    return config


def wait_for(config, job_id: str, status: str, timeout: float = 20):
    store = JobStore(config)
    wait_until(lambda: (r := store.get(job_id)) is not None and r.status == status, timeout)
    return store.get(job_id)


def test_enqueue_is_durable_and_recorded(config):
    for i in range(3):
        jobs.enqueue(config, Job(f"t{i}", "test", {"images": 1}))
    assert jobs.make_queue(config).pending_count() == 3  # a fresh connection sees them
    record = JobStore(config).get("t1")
    assert (record.status, record.source, record.options) == ("pending", "test", {"images": 1})


def test_waiting_jobs_are_classified_in_shared_batches(config, make_worker):
    for i in range(8):
        jobs.enqueue(config, Job(f"t{i}", "test", {"images": 1}))
    worker, source = make_worker()
    for i in range(8):
        record = wait_for(config, f"t{i}", "done")
        assert record.label == "bacterial"
        assert record.probabilities == pytest.approx(dict(zip(CLASSES, PROBABILITIES, strict=True)))
        assert record.attempts == 1 and record.seconds > 0
    assert max(source.classifier.batch_sizes[1:]) > 1  # [0] is the warm-up call
    assert sum(source.classifier.batch_sizes[1:]) == 8


def test_transient_errors_are_retried(config, make_worker):
    jobs.enqueue(config, Job("flaky", "test", {"fail": "transient", "times": 2}))
    make_worker()
    record = wait_for(config, "flaky", "done", timeout=30)
    assert record.attempts == 3


def test_transient_errors_give_up_after_the_configured_tries(config, make_worker):
    config["worker"]["attempts"] = 2
    jobs.enqueue(config, Job("down", "test", {"fail": "transient"}))
    make_worker()
    record = wait_for(config, "down", "failed", timeout=30)
    assert record.attempts == 2 and "gave up after 2 tries: the source is down" in record.error


def test_permanent_errors_fail_once_with_the_reason(config, make_worker):
    jobs.enqueue(config, Job("bad", "test", {"fail": "permanent"}))
    jobs.enqueue(config, Job("lost", "nowhere"))
    _, source = make_worker()
    record = wait_for(config, "bad", "failed")
    assert record.attempts == 1 and record.error == "undecodable pixels"
    assert "no plugin loads jobs of source 'nowhere'" in wait_for(config, "lost", "failed").error
    time.sleep(0.5)
    assert source.loads["bad"] == 1


def test_a_job_queued_again_before_it_ran_runs_once(config, make_worker):
    for _ in range(3):
        jobs.enqueue(config, Job("same", "test", {"images": 1}))
    _, source = make_worker()
    wait_for(config, "same", "done")
    wait_until(lambda: jobs.make_queue(config).pending_count() == 0, 10)
    time.sleep(0.3)
    assert source.loads["same"] == 1


def test_jobs_left_running_by_a_dead_worker_are_queued_again(config, make_worker):
    config["worker"]["lease_seconds"] = 1.5
    store = JobStore(config)
    job = Job("orphan", "test", {"images": 2})
    store.pending(job, time.time())
    store.claim(job, f"{socket.gethostname()}:{2 ** 22 + 12345}:a", 0, 60)  # no such process
    elsewhere = Job("elsewhere", "test", {"images": 1})
    store.pending(elsewhere, time.time())
    store.claim(elsewhere, "another-host:1:b", 0, 60)  # alive, as far as this host can tell
    expired = Job("expired", "test", {"images": 1})
    store.pending(expired, time.time())
    store.claim(expired, "another-host:2:c", 0, 1.0)  # its lease runs out in a second
    make_worker()
    assert wait_for(config, "orphan", "done").error is None
    assert wait_for(config, "expired", "done", timeout=10).owner.startswith(f"{socket.gethostname()}:")
    assert store.get("elsewhere").status == "running"


def test_messages_taken_by_a_dead_worker_before_its_claim_are_queued_again(config, make_worker):
    dead = jobs.make_queue(config, taker=f"{socket.gethostname()}:{2 ** 22 + 12345}:a")  # no such process
    dead.storage.beat(time.time() + 60)
    for name in ("taken", "waiting"):
        jobs.enqueue(config, Job(name, "test", {"images": 1}))
    assert dead.storage.dequeue() is not None  # killed here: the message held, its job unclaimed
    assert jobs.make_queue(config).pending_count() == 1
    worker, source = make_worker()
    wait_for(config, "taken", "done")
    wait_for(config, "waiting", "done")
    assert dead.storage.takers().keys() == {worker.owner}  # the dead one is forgotten
    assert source.loads == {"taken": 1, "waiting": 1}


def test_a_claim_is_exclusive_while_its_lease_lives(config):
    exercise_claims(JobStore(config))


def exercise_claims(store: JobStore) -> None:
    """The claim and lease contract, for each store (also ``tests/test_redis.py``)."""
    job = Job("one", "test")
    store.pending(job, 100.0)
    assert store.claim(job, "h:1:a", 100.0, 30) == ("claimed", 1)
    assert store.claim(job, "h:2:b", 100.0, 30) == ("busy", 0)
    assert store.renew("one", "h:1:a", 30) and not store.renew("one", "h:2:b", 30)
    assert store.take_over("one", "h:1:a", "h:2:b", -1)  # as a reaper; the lease already ran out
    assert not store.renew("one", "h:1:a", 30)
    assert store.claim(job, "h:3:c", 100.0, 30) == ("claimed", 2)
    store.finish(job, "h:3:c", Summary("done", "normal"), 1.0)
    assert store.get("one").lease is None and store.leased() == []
    assert store.claim(job, "h:4:d", 100.0, 30) == ("ran", 0)  # queued before that run started


def test_batching_classifier_merges_concurrent_calls():
    inner = FakeClassifier()
    batcher = BatchingClassifier(inner, max_batch=16, max_wait=0.2)
    results: list[np.ndarray] = [None] * 6
    barrier = threading.Barrier(6)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = batcher.predict(np.zeros((i + 1, 16, 16, 1), np.float32))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert [len(r) for r in results] == [1, 2, 3, 4, 5, 6]
    assert sum(inner.batch_sizes) == 21 and len(inner.batch_sizes) < 6
    assert batcher.batch_sizes.total() == len(inner.batch_sizes)


def test_batching_classifier_runs_its_inners_concurrency_of_batches_at_once():
    inner = FakeClassifier()
    inner.concurrency = 2
    running, most, lock = [0], [0], threading.Lock()

    def predict(batch: np.ndarray) -> np.ndarray:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return np.tile(PROBABILITIES, (len(batch), 1))

    inner.predict = predict
    batcher = BatchingClassifier(inner, max_batch=1, max_wait=0.0)  # a batch per call
    threads = [threading.Thread(target=batcher.predict, args=(np.zeros((1, 16, 16, 1), np.float32),))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert batcher.concurrency == 2 and most[0] == 2 and batcher.batch_sizes == {1: 4}


def test_ctai_jobs_lists_records(config, monkeypatch):
    store = JobStore(config)
    store.skipped(Job("orthanc:abc", "orthanc"), "modality SR is not a chest radiograph or CT")
    monkeypatch.setenv("CTAI_DATA__DIR", config["data"]["dir"])
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["jobs"]) == 0
    assert "orthanc:abc" in out.getvalue() and "skipped" in out.getvalue()
    assert "modality SR" in out.getvalue()


@pytest.mark.parametrize("limit", ["0", "-3", "x"])
def test_ctai_jobs_refuses_a_limit_below_one(limit, capsys):
    """SQLite reads a negative LIMIT as none, Redis's listing as all but the last: neither is asked for."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["jobs", "--limit", limit])
    assert exited.value.code == 2
    assert "is not a whole number of at least 1" in capsys.readouterr().err


def test_a_worker_that_cannot_reach_its_queue_says_why_in_one_line(config, caplog, monkeypatch):
    """``ctai serve`` and ``ctai worker``: Redis is not there; the log has the reason, not a traceback."""
    from ctai import redisdb, serve

    class Unreachable:
        def __init__(self, config):
            pass

        def warm_up(self):
            pass

        def start(self):  # as Worker.start, before it takes jobs
            redisdb.wait_until_ready("redis://127.0.0.1:9/0", 0.5)

    monkeypatch.setattr("ctai.worker.Worker", Unreachable)
    service = serve.WorkerService(config)
    service.start()
    wait_until(lambda: not service.alive(), 10)
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage().startswith("worker: could not start: Redis at redis://127.0.0.1:9/0 is unreachable")
    assert error.exc_info is None


def test_the_served_worker_keeps_its_start_up_out_of_the_collector_while_it_runs(config, monkeypatch):
    from ctai import serve

    class Started:
        def __init__(self, config):
            pass

        def warm_up(self):
            pass

        def start(self):
            pass

        def stop(self):
            pass

    monkeypatch.setattr("ctai.worker.Worker", Started)
    service = serve.WorkerService(config)
    service.start()
    wait_until(service.ready, 10)
    assert gc.get_freeze_count() > 0
    service.stop()
    assert gc.get_freeze_count() == 0
