"""The shared queue and job records on a real Redis ([queue] backend = "redis"), with the fake
source and classifier of ``tests/test_jobs.py``; ``tests/test_several_machines.py`` runs worker
processes against Orthanc."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pydicom
import pytest

from ctai import cli, hookimpl, jobs
from ctai.outbox import Outbox
from ctai.plugins import plugin_manager
from ctai.redisdb import RedisMisconfigured, RedisUnavailable
from ctai.results import JobStore
from ctai.types import Job, SourceImage
from ctai.worker import Worker
from tests.peers import wait_until
from tests.phantoms import radiograph
from tests.redis_server import RedisServer
from tests.test_jobs import CHEST, FakeSource, exercise_claims


@pytest.fixture
def server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def machine(config, folder: Path, url: str):
    """The test configuration of one machine: its own data dir, the shared Redis."""
    config = json.loads(json.dumps(config))
    config["data"]["dir"] = str(folder)
    # No input gate: loading its model would stall the lease thread longer than these short leases.
    config["plugins"]["disabled"] = ["sr", "sc", "folder", "cstore", "hl7", "orthanc", "upload", "listener", "gate"]
    config["queue"].update(backend="redis", url=url, wait_seconds=1.5)
    config["worker"].update(threads=4, batch_wait_ms=50, retry_delay=0.1, poll_interval=0.05, lease_seconds=2)
    return config


@pytest.fixture
def two(config, server, tmp_path):
    return machine(config, tmp_path / "a", server.url), machine(config, tmp_path / "b", server.url)


def ctai_jobs(config, monkeypatch) -> tuple[int, str, str]:
    """``ctai jobs --json`` with ``config``'s data dir and queue; (exit status, stdout, stderr)."""
    monkeypatch.setenv("CTAI_DATA__DIR", config["data"]["dir"])
    monkeypatch.setenv("CTAI_QUEUE__BACKEND", config["queue"]["backend"])
    monkeypatch.setenv("CTAI_QUEUE__URL", config["queue"]["url"])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main(["jobs", "--json", "--limit", "500"])
    return status, out.getvalue(), err.getvalue()


def test_claims_and_leases_on_redis(two):
    exercise_claims(JobStore(two[0]))


def test_two_machines_share_the_jobs_and_see_every_record(two, make_worker, monkeypatch):
    a, b = two
    for i in range(40):
        jobs.enqueue(a if i % 2 else b, Job(f"t{i}", "test", {"images": 1}))
    _, source_a = make_worker(a)
    _, source_b = make_worker(b)
    store = JobStore(b)
    wait_until(lambda: all((r := store.get(f"t{i}")) and r.status == "done" for i in range(40)), 60)
    loads = source_a.loads + source_b.loads
    assert sorted(loads) == sorted(f"t{i}" for i in range(40)) and set(loads.values()) == {1}
    assert source_a.loads and source_b.loads  # both took a share
    status_a, listed_a, _ = ctai_jobs(a, monkeypatch)
    status_b, listed_b, _ = ctai_jobs(b, monkeypatch)
    assert status_a == status_b == 0 and listed_a == listed_b and len(listed_a.splitlines()) == 40


def test_a_local_job_runs_on_its_own_host_only(two, make_worker, server):
    a, _ = two
    jobs.enqueue(a, Job("spooled", "test", {"images": 1}), local=True)
    assert JobStore(a).get("spooled").options["host"] == jobs.this_host()
    assert server.client().llen(f"huey.redis.ctai.{jobs.this_host()}") == 1
    assert server.client().llen("huey.redis.ctai") == 0
    make_worker(a)
    wait_until(lambda: JobStore(a).get("spooled").status == "done", 20)


def test_a_job_of_a_worker_that_died_elsewhere_is_run_once_its_lease_ran_out(two, make_worker):
    a, b = two
    job = Job("orphan", "test", {"images": 1})
    jobs.make_queue(a)  # nothing queued: the dead worker had taken the message
    store = JobStore(a)
    store.pending(job, time.time())
    assert store.claim(job, "dead-host:7:x", 0, 1.0)[0] == "claimed"
    _, source = make_worker(b)
    wait_until(lambda: store.get("orphan").status == "done", 20)
    assert source.loads["orphan"] == 1


def test_a_message_taken_elsewhere_by_a_worker_that_died_before_its_claim_runs_once(two, make_worker, server):
    a, b = two
    dead = jobs.make_queue(a, taker="dead-host:7:x")
    dead.storage.beat(time.time() + 1.0)  # its heartbeat runs out in a second
    jobs.enqueue(a, Job("taken", "test", {"images": 1}))
    assert dead.storage.dequeue() is not None
    assert server.client().llen("huey.redis.ctai") == 0
    _, source = make_worker(b)
    wait_until(lambda: JobStore(a).get("taken").status == "done", 20)
    assert source.loads == {"taken": 1} and server.client().llen("huey.held.ctai.dead-host:7:x") == 0


def test_redis_unreachable_at_start_is_a_clear_error_after_retries(config, tmp_path, monkeypatch):
    down = machine(config, tmp_path / "a", f"unix://{tmp_path}/nothing.sock?db=0")
    pm = plugin_manager(down)
    pm.register(FakeSource())
    began = time.monotonic()
    with pytest.raises(RedisUnavailable, match=r"is unreachable .*gave up after 2 s"):
        Worker(down, pm).start()
    assert time.monotonic() - began > 1
    with pytest.raises(RedisUnavailable, match="is unreachable"):  # the enqueuer's error: try later
        jobs.enqueue(down, Job("t", "test"))
    status, _, err = ctai_jobs(down, monkeypatch)
    assert status == 1 and "nothing.sock" in err and "unreachable" in err


def test_a_wrong_password_is_a_clear_error_at_once(config, tmp_path, make_worker):
    server = RedisServer(tmp_path / "redis", "right-one")
    server.start()
    try:
        wrong = machine(config, tmp_path / "a", server.url.replace("right-one", "wrong-one"))
        with pytest.raises(RedisMisconfigured, match=r"refused ctai's credentials.*check the password") as error:
            jobs.enqueue(wrong, Job("t", "test"))
        assert "wrong-one" not in str(error.value) and ":***@" in str(error.value)
        pm = plugin_manager(wrong)
        pm.register(FakeSource())
        began = time.monotonic()
        with pytest.raises(RedisMisconfigured):
            Worker(wrong, pm).start()
        assert time.monotonic() - began < wrong["queue"]["wait_seconds"]  # no retrying a password
        right = machine(config, tmp_path / "a", server.url)
        jobs.enqueue(right, Job("t", "test", {"images": 1}))
        make_worker(right)
        wait_until(lambda: JobStore(right).get("t").status == "done", 20)
    finally:
        server.stop()


def test_a_redis_that_would_evict_jobs_is_refused(config, tmp_path):
    server = RedisServer(tmp_path / "redis", "", "--maxmemory-policy", "allkeys-lru")
    server.start()
    try:
        evicting = machine(config, tmp_path / "a", server.url)
        pm = plugin_manager(evicting)
        pm.register(FakeSource())
        with pytest.raises(RedisMisconfigured, match="maxmemory-policy allkeys-lru.*noeviction"):
            Worker(evicting, pm).start()
    finally:
        server.stop()


def test_a_full_redis_drops_nothing(two, make_worker, server):
    a, _ = two
    jobs.enqueue(a, Job("before", "test", {"images": 1}))
    server.client().config_set("maxmemory", 1)
    with pytest.raises(RedisUnavailable, match=r"is full \(maxmemory reached\), nothing was written"):
        jobs.enqueue(a, Job("while-full", "test", {"images": 1}))
    assert JobStore(a).get("while-full") is None
    _, source = make_worker(a)  # cannot take "before" while full (LMOVE writes): it stays queued
    time.sleep(1.0)
    assert source.loads["before"] == 0 and server.client().llen("huey.redis.ctai") == 1
    server.client().config_set("maxmemory", 0)
    wait_until(lambda: JobStore(a).get("before").status == "done", 30)
    assert source.loads["before"] == 1


class DicomSource(FakeSource):
    """Jobs of source "test" whose one image is a real DICOM radiograph, so that SR, SC and HL7
    outputs are made."""

    def __init__(self, datasets: dict) -> None:
        super().__init__()
        self.datasets = datasets

    @hookimpl
    def ctai_load_job(self, job, config):
        if job.source != "test":
            return None
        self.loads[job.id] += 1
        return [SourceImage(f"{job.id}/0", self.datasets[job.id], CHEST)]


def outbox_contents(config) -> dict[str, str]:
    """Dedup key -> what the receiver recognises a message by (SOP Instance UID, or MSH-10)."""
    outbox = Outbox.from_config(config)
    with sqlite3.connect(outbox.path) as db:
        dedups = dict(db.execute("select id, dedup from outbox").fetchall())
    messages = outbox.messages()
    return {dedups[m.id]: (pydicom.dcmread(io.BytesIO(payload)).SOPInstanceUID if m.channel == "cstore"
                           else payload.decode().split("|")[9])
            for m, payload in zip(messages, outbox.payloads(messages), strict=True)}


def test_a_job_run_again_after_a_lost_lease_sends_nothing_twice(two, make_worker):
    """Machine a classified and queued its results, then died before recording the end: b runs
    the job again. Its outbox holds the same objects (SOP Instance UIDs) and the same HL7 message
    (MSH-10), which the PACS and HIS recognise; on one machine the outbox keeps one of each."""
    datasets = {"x": radiograph("IM-0115-0001.jpeg", "LEASE1")}
    for config in two:
        config["plugins"]["disabled"] = ["folder", "orthanc", "upload", "listener", "gate"]
        config["cstore"].update(host="127.0.0.1", port=9)  # nobody there: the messages wait
        config["hl7"].update(host="127.0.0.1", port=9)
    a, b = two
    job = Job("x", "test", {})
    jobs.enqueue(a, job)
    worker_a, _ = make_worker(a, DicomSource(datasets))
    store = JobStore(a)
    wait_until(lambda: store.get("x").status == "done", 30)
    worker_a.stop()
    sent_by_a = outbox_contents(a)
    assert sorted(k.split(":")[0] for k in sent_by_a) == ["cstore", "cstore", "hl7"]
    assert store.claim(job, "gone-host:1:w:c", time.time() + 1, -1)[0] == "claimed"  # died at once
    _, source_b = make_worker(b, DicomSource(datasets))
    wait_until(lambda: store.get("x").status == "done" and source_b.loads["x"] == 1, 30)
    assert outbox_contents(b) == sent_by_a
    jobs.enqueue(a, job)  # and again on machine a
    _, source_a = make_worker(a, DicomSource(datasets))
    wait_until(lambda: source_a.loads["x"] + source_b.loads["x"] == 2 and store.get("x").status == "done", 30)
    assert outbox_contents(a) == sent_by_a


def test_a_phone_upload_that_cannot_be_queued_is_answered_with_a_plain_sentence(config):
    from fastapi.testclient import TestClient

    from ctai.web.app import create_app
    from ctai.web.messages import PHONE
    from ctai.web.sessions import Store
    from tests.test_web import RADIOGRAPH, STAFF_TOKEN, new_session

    def queue_down(job: Job) -> None:
        raise RedisUnavailable("Redis at redis://queue:6379/0 is unreachable (Connection refused)")

    config["web"]["staff_token"] = STAFF_TOKEN
    with TestClient(create_app(config, submit=queue_down)) as client:
        link = new_session(client)
        response = client.post(f"{link}/files", content=RADIOGRAPH.read_bytes())
        assert response.status_code == 503 and response.json()["error"] == PHONE["queue_down"]
    [(upload, _)] = Store(config).recent_uploads()
    assert (upload.status, upload.error) == ("failed", PHONE["queue_down"])  # not left pending for ever


def test_the_staff_dashboard_says_when_the_job_records_cannot_be_read(config, server):
    from fastapi.testclient import TestClient

    from ctai.web.app import create_app
    from tests.test_web import STAFF_TOKEN, login

    config["web"]["staff_token"] = STAFF_TOKEN
    config["queue"].update(backend="redis", url=server.url, wait_seconds=0.5)
    with TestClient(create_app(config)) as client:
        login(client)
        server.stop()
        page = client.get("/staff")
        assert page.status_code == 200 and "database does not answer" in page.text
