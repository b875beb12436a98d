"""Several machines on one Redis: Orthanc with ctai's plugin, and two ``ctai worker`` processes
with data dirs of their own (as on two hosts), in a private network namespace
(``tests/orthanc_harness.py``). A burst of series is done exactly once between the workers,
when one is killed (kill -9) mid-burst and when Redis restarts mid-burst; ``ctai jobs``
shows the same from both data dirs.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from ctai import cli
from ctai.outbox import Outbox
from ctai.results import JobStore
from tests.orthanc_harness import (
    IN_NAMESPACE,
    Harness,
    WorkerProcess,
    fast_config,
    model_missing,
    passes_in_namespace,
)
from tests.peers import wait_until
from tests.phantoms import image_names, radiograph
from tests.redis_server import RedisServer

if not IN_NAMESPACE:

    def test_several_machines_in_a_private_network_namespace():
        passes_in_namespace(Path(__file__))

else:

    @pytest.fixture(scope="module")
    def cluster():
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            server = RedisServer(root / "redis")
            server.start()
            config = fast_config(root / "pacs")
            if model_missing(config):
                server.stop()
                pytest.skip("no model: the shipped one is not there yet (or set CTAI_MODEL__PATH)")
            config["queue"].update(backend="redis", url=server.url)
            config["orthanc"]["password"] = "several-machines"
            config["worker"].update(threads=2, lease_seconds=3)
            harness = Harness(config)
            harness.start_orthanc()
            workers = {name: WorkerProcess(config, root / name) for name in ("a", "b")}
            try:
                for worker in workers.values():
                    worker.launch()
                for worker in workers.values():
                    worker.wait_started()
                yield harness, server, workers
            finally:
                for worker in workers.values():
                    worker.stop()
                harness.close()
                server.stop()

    def send(harness: Harness, prefix: str, count: int) -> list[dict]:
        names = image_names()
        return [harness.upload(radiograph(names[i % len(names)], f"{prefix}{i}")) for i in range(count)]

    def statuses(harness: Harness, answers: list[dict]) -> list[str]:
        store = JobStore(harness.config)
        return [(r.status if (r := store.get(f"orthanc:{a['ParentSeries']}")) else "none") for a in answers]

    def delivered(workers: dict) -> None:
        """Wait until each worker's outbox has sent what it queued for Orthanc: a job is "done" once
        its outputs are queued. A killed worker's queue goes out as its machine's admin would send
        it, with ``ctai outbox --send``."""
        for worker in workers.values():
            if worker.process.poll() is not None:
                with redirect_stdout(io.StringIO()):
                    assert cli.main(["--config", str(worker.config_path), "outbox", "--send"]) == 0
            outbox = Outbox.from_config(worker.config)
            wait_until(lambda outbox=outbox: not outbox.counts().get(("orthanc", "pending")), 30)

    def all_done_once(harness: Harness, workers: dict, answers: list[dict], timeout: float) -> None:
        wait_until(lambda: statuses(harness, answers) == ["done"] * len(answers), timeout)
        delivered(workers)
        ran = sum((w.done() for w in workers.values()), Counter())
        killed = tuple(w.owner for w in workers.values() if w.process.poll() is not None)
        store = JobStore(harness.config)
        for answer in answers:
            job_id = f"orthanc:{answer['ParentSeries']}"
            # A worker killed between recording a job and logging it leaves no log line.
            unlogged = ran[job_id] == 0 and store.get(job_id).owner.startswith(killed)
            assert ran[job_id] + unlogged == 1  # ended once, on one of the machines
            assert {m: len(v) for m, v in harness.outputs(answer["ParentStudy"]).items()} == {"OT": 1, "SR": 1}

    def test_a_burst_is_done_once_between_two_workers_when_one_is_killed(cluster):
        harness, _, workers = cluster
        answers = send(harness, "BURST", 40)
        store = JobStore(harness.config)
        a = workers["a"]
        wait_until(lambda: any(r.owner and r.owner.startswith(a.owner) for r in store.leased()), 20)
        a.kill()  # kill -9 with jobs running: the leases of those run out, b runs them again
        all_done_once(harness, workers, answers, 120)
        assert workers["b"].done()  # b finished a's jobs

    def test_a_redis_restart_mid_burst_loses_nothing(cluster):
        harness, server, workers = cluster  # worker a stays dead (killed above)
        answers = send(harness, "REDIS", 10)
        wait_until(lambda: "done" in statuses(harness, answers), 60)
        server.stop()
        answers += send(harness, "DOWN", 5)  # Orthanc cannot queue these: it tries again
        time.sleep(2)
        server.start()
        all_done_once(harness, workers, answers, 120)

    def test_ctai_jobs_agrees_on_both_machines(cluster):
        _, _, workers = cluster
        listed = []
        for worker in workers.values():
            out = io.StringIO()
            with redirect_stdout(out):
                assert cli.main(["--config", str(worker.config_path), "jobs", "--json", "--limit", "500"]) == 0
            listed.append(out.getvalue())
        assert listed[0] == listed[1]
        records = [json.loads(line) for line in listed[0].splitlines()]
        assert len(records) == 55 and {r["status"] for r in records} == {"done"}
