"""Shadow mode (``[site] mode``, ``ctai site shadow``): every job is classified and recorded,
and nothing reaches the PACS (C-STORE, STOW-RS), the HIS (MLLP), the EHR (FHIR) or Orthanc;
switched live, the same setup delivers to each of them. (Orthanc as the source of a job in
shadow mode: tests/test_orthanc.py, inside its network namespace.)"""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from ctai import hookimpl, jobs
from ctai.model.backend import ProbabilityClassifier
from ctai.outbox import Outbox, send_now
from ctai.plugins import plugin_manager
from ctai.results import JobStore
from ctai.site import state
from ctai.site.state import REFRESH_SECONDS
from ctai.types import Job, ModelInfo
from ctai.worker import Worker
from tests.http_peers import FhirServer, StowServer
from tests.peers import HIS, StoreSCP, free_port, result, wait_until


class Source(ProbabilityClassifier):
    """Jobs of source "site-test": one wrapped radiograph of patient PAT-1; a stand-in network."""

    info = ModelInfo("site-test", "1.0")
    input_size = 32

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.tile([0.1, 0.7, 0.2], (len(batch), 1))

    @hookimpl(tryfirst=True)
    def ctai_classifier(self, config):
        return self

    @hookimpl
    def ctai_load_job(self, job, config):
        return [result().source] if job.source == "site-test" else None


@pytest.fixture
def peers(config):
    scp = StoreSCP(ComprehensiveSRStorage, SecondaryCaptureImageStorage)
    his = HIS(free_port()).start()
    fhir, stow = FhirServer(), StowServer()
    with fhir.running(), stow.running():
        config["plugins"]["disabled"] = ["gate", "listener", "folder"]
        config["cstore"].update(host="127.0.0.1", port=scp.server.server_address[1], ae_title="PACS", timeout=10)
        config["hl7"].update(host="127.0.0.1", port=his.port, ack_timeout=10)
        config["fhir"]["base_url"] = fhir.url
        config["dicomweb"]["url"] = stow.url
        config["orthanc"].update(deliver=True, url="http://127.0.0.1:9")  # queued for Orthanc, never reached
        config["worker"].update(threads=1, poll_interval=0.05)
        pm = plugin_manager(config)
        pm.register(Source())
        worker = Worker(config, pm)
        worker.start()
        yield scp, his, fhir, stow
        worker.stop()
        his.stop()
        scp.server.shutdown()


def run(config, job_id: str):
    jobs.enqueue(config, Job(job_id, "site-test"))
    store = JobStore(config)
    return wait_until(lambda: (r := store.get(job_id)) and r.status == "done" and r, 60)


def test_shadow_mode_records_everything_and_delivers_nothing_on_any_channel(config, peers):
    scp, his, fhir, stow = peers
    state.set_mode(config, "shadow", "test")
    time.sleep(REFRESH_SECONDS + 0.1)  # the worker reads the switch within this
    shadowed = run(config, "shadow-1")
    assert shadowed.label == "bacterial" and shadowed.details["mode"] == "shadow"
    assert JobStore(config).latest(5)[0].id == "shadow-1"  # `ctai jobs` and the staff page list it
    assert Outbox.from_config(config).counts() == {}
    send_now(config)
    assert (len(scp.received), his.received, len(fhir.bundles), len(stow.requests)) == (0, 0, 0, 0)

    state.set_mode(config, "live", "test")
    time.sleep(REFRESH_SECONDS + 0.1)
    assert run(config, "live-1").details["mode"] == "live"
    assert {channel for channel, _ in Outbox.from_config(config).counts()} == {"cstore", "hl7", "fhir", "stow",
                                                                                "orthanc"}
    send_now(config)
    assert len(scp.received) == 2 and his.received == 1 and len(fhir.bundles) == 1 and len(stow.requests) >= 1
