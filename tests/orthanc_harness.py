"""Test helper: a real Orthanc (with ctai's plugin) and the worker, in a private network namespace.

Orthanc 1.10 listens on every interface and has no bind-address option, so the tests that run
it must not share the machine's network. The simplest robust way: the normal pytest session
runs one wrapper test that re-executes the Orthanc test module in a child pytest inside
``unshare -n`` (as non-root: ``unshare -rn``) with loopback brought up, so that Orthanc, the
worker, storescu and the test's REST client all share that namespace. The child sees
CTAI_TEST_NETNS=1 and runs the real tests; when it exits, the namespace goes with it.
Run the real tests by hand the same way:

    unshare -n sh -c 'ip link set lo up && CTAI_TEST_NETNS=1 .venv/bin/python -m pytest tests/test_orthanc.py'
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from ctai import config as configuration
from ctai.config import to_toml
from ctai.model.backend import shipped_model_dir
from ctai.model.storage import has_network
from ctai.orthanc.client import OrthancClient
from ctai.orthanc.service import OrthancService
from ctai.outbox import Outbox, OutboxSender
from ctai.outputs.common import to_bytes
from ctai.worker import Worker
from tests.peers import wait_until

IN_NAMESPACE = os.environ.get("CTAI_TEST_NETNS") == "1"
ROOT = Path(__file__).resolve().parents[1]


def run_in_namespace(test_file: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``test_file`` in a new network namespace with only loopback, up."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare and ip (util-linux, iproute2) are needed for the Orthanc tests")
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    script = 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider "$@"'
    command = [*unshare, "sh", "-c", script, sys.executable, str(test_file)]
    env = dict(os.environ, CTAI_TEST_NETNS="1")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def passes_in_namespace(test_file: Path, timeout: float = 600) -> None:
    """Run ``test_file`` in a private network namespace (``run_in_namespace``): fail as its tests
    fail; skip when no namespace can be made here, or when its tests were all skipped."""
    run = run_in_namespace(test_file, timeout)
    if "unshare failed" in run.stderr:
        pytest.skip(f"no private network namespace here: {run.stderr.strip()}")
    summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"inside the namespace: {summary}")
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    if " passed" not in summary:
        pytest.skip(f"inside the namespace: {summary}")


def fast_config(folder: Path) -> configuration.Config:
    """The configuration (environment included, e.g. CTAI_MODEL__PATH) with state in ``folder``
    and everything fast: 1 s StableAge, sub-second polling and retries."""
    config = configuration.load()
    config["data"]["dir"] = str(folder)
    config["orthanc"].update(stable_age=1, url="", http_port=8042, dicom_port=4242, aet="ORTHANC",
                             password="", run=True, deliver=False)
    config["queue"]["backend"] = "sqlite"
    config["worker"].update(retry_delay=0.5, poll_interval=0.05, attempts=8)
    config["outbox"].update(initial_backoff=0.2, max_backoff=1.0, poll_seconds=0.1)
    config["folder"]["path"] = ""
    return config


def model_missing(config: configuration.Config) -> bool:
    folder = Path(config["model"]["path"]) if config["model"]["path"] else shipped_model_dir()
    return not has_network(folder)


class Harness:
    """One Orthanc and one worker (with the outbox sender that delivers its results) for a test
    module; both can be stopped and started again."""

    def __init__(self, config: configuration.Config) -> None:
        self.config = config
        self.orthanc = OrthancService(config)
        self.worker: Worker | None = None
        self.sender = OutboxSender(config)
        self.client: OrthancClient | None = None

    def start_orthanc(self) -> None:
        self.orthanc.start()
        self.client = OrthancClient.from_config(self.config)

    def restart_orthanc(self) -> None:
        self.orthanc.stop()
        self.start_orthanc()

    def start_worker(self) -> Worker:
        self.worker = Worker(self.config)
        self.worker.start()
        self.sender.start()
        return self.worker

    def stop_worker(self) -> None:
        if self.worker:
            self.worker.stop()
            self.sender.stop()
            self.worker = None

    def close(self) -> None:
        self.stop_worker()
        self.orthanc.stop()

    def upload(self, ds: Dataset) -> dict:
        """Store through the REST API; the answer has ID, ParentSeries, ParentStudy."""
        return self.client.upload(to_bytes(ds))

    def storescu(self, ds: Dataset) -> None:
        """Send by C-STORE with dcmtk's storescu."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "image.dcm"
            ds.save_as(path, enforce_file_format=True)
            settings = self.config["orthanc"]
            port = str(settings["dicom_port"])
            subprocess.run(["storescu", "-aec", settings["aet"], "localhost", port, str(path)],
                           check=True, capture_output=True, timeout=60)

    def series_id(self, ds: Dataset) -> str:
        """Orthanc's ID of the series of ``ds``."""
        found = self.client.request("POST", "/tools/lookup", data=ds.SeriesInstanceUID).json()
        return next(item["ID"] for item in found if item["Type"] == "Series")

    def study_series(self, study_id: str) -> list[dict]:
        return self.client.get_json(f"/studies/{study_id}/series?expand")

    def outputs(self, study_id: str) -> dict[str, list[Dataset]]:
        """ctai's output instances in a study, by Modality of their series, once the outbox has
        delivered every output queued for Orthanc."""
        outbox = Outbox.from_config(self.config)
        wait_until(lambda: not outbox.counts().get(("orthanc", "pending")), 30)
        found: dict[str, list[Dataset]] = {}
        for series in self.study_series(study_id):
            if series["MainDicomTags"].get("SeriesDescription", "").startswith("ctai AI result"):
                for instance_id in series["Instances"]:
                    ds = pydicom.dcmread(io.BytesIO(self.client.instance_file(instance_id)))
                    found.setdefault(ds.Modality, []).append(ds)
        return found


class WorkerProcess:
    """``ctai worker`` with a configuration (and data dir) of its own."""

    def __init__(self, config: dict, folder: Path) -> None:
        self.config = json.loads(json.dumps(config))
        self.config["data"]["dir"] = str(folder)
        self.config["orthanc"]["run"] = False
        self.config["metrics"]["enabled"] = False  # several on one machine would share the port
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "ctai.toml"
        self.config_path.write_text(to_toml(self.config))
        self.log = folder / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        self.log.write_text("")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", sys.executable, "-m", "ctai.cli", "--config",
                 str(self.config_path), "worker"], stdout=out, stderr=subprocess.STDOUT)

    def wait_started(self) -> None:
        wait_until(lambda: "threads on each of" in self.log.read_text() or self.process.poll() is not None, 120)
        assert self.process.poll() is None, self.log.read_text()[-3000:]

    @property
    def owner(self) -> str:
        """The start of this process's claims' owner tokens ("host:pid:")."""
        return f"{os.uname().nodename}:{self.process.pid}:"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(90)

    def done(self) -> Counter[str]:
        """How many times this process's log says each job ended (done, failed, skipped)."""
        return Counter(re.findall(r"worker: (\S+) (?:done|failed|skipped) ", self.log.read_text()))
