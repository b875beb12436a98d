"""Prometheus metrics and /healthz: the endpoint ``ctai serve`` starts, scraped over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ctai import jobs, monitoring
from ctai.builtin import metrics as metrics_plugin
from ctai.monitoring import MetricsService
from ctai.outbox import Outbox
from ctai.types import Failure, Job, ModelInfo
from tests.peers import free_port, result

MODEL = ModelInfo("resnet-test", "1.2", "ctai")


@pytest.fixture
def service(config):
    config["orthanc"].update(run=False, url="")
    config["metrics"]["port"] = free_port()
    state = {"worker": True, "ready": True}
    started = MetricsService(config, lambda: state["worker"], lambda: state["ready"], lambda: MODEL)
    started.start()
    started.state = state
    yield started
    started.stop()


def url(service, path: str) -> str:
    return f"http://127.0.0.1:{service.config['metrics']['port']}{path}"


def scrape(service) -> dict[tuple[str, tuple], float]:
    answer = requests.get(url(service, "/metrics"), timeout=10)
    assert answer.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def test_jobs_refusals_latency_queue_outbox_and_model_are_scraped(service):
    config = service.config
    job = Job("metrics-test-1", "metrics-test", {"started": 0.0})
    jobs.enqueue(config, job)
    jobs.enqueue(config, Job("metrics-test-2", "metrics-test"))
    outbox = Outbox.from_config(config)
    outbox.put("fhir", "p", {}, b"a", "a")
    outbox.put("fhir", "p", {}, b"b", "b")
    outbox.mark_dead(outbox.messages()[0], "refused: HTTP 404")
    failures = [Failure("a", "skipped: modality MR is not a chest radiograph or CT"),
                Failure("b", "skipped: not a frontal chest radiograph (chest-image score 0.10, below 0.90)"),
                Failure("c", "not a DICOM file")]
    metrics_plugin.ctai_job_finished(job=job, results=[result()], failures=failures, config=config)
    metrics_plugin.ctai_job_failed(job=Job("metrics-test-3", "metrics-test"), error=ValueError("x"), config=config)

    found = scrape(service)
    assert found[("ctai_jobs_total", (("source", "metrics-test"), ("status", "done")))] == 1
    assert found[("ctai_jobs_total", (("source", "metrics-test"), ("status", "failed")))] == 1
    for reason in ("modality", "not_chest", "unreadable"):
        assert found[("ctai_refusals_total", (("reason", reason),))] >= 1
    assert found[("ctai_classification_latency_seconds_count", (("source", "metrics-test"),))] == 1
    assert 0 < found[("ctai_classification_latency_seconds_sum", (("source", "metrics-test"),))] < 60
    assert found[("ctai_queue_depth", ())] == 2
    assert found[("ctai_outbox_pending", (("channel", "fhir"),))] == 1
    assert found[("ctai_outbox_dead_letters", (("channel", "fhir"),))] == 1
    assert found[("ctai_outbox_pending", (("channel", "hl7"),))] == 0
    assert found[("ctai_model_info", (("manufacturer", "ctai"), ("name", "resnet-test"), ("version", "1.2")))] == 1


def test_healthz_answers_503_naming_what_is_down(service):
    answer = requests.get(url(service, "/healthz"), timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "checks": {"worker": True, "queue": True}}
    service.state["ready"] = False  # the worker still loads its networks
    answer = requests.get(url(service, "/healthz"), timeout=10)
    assert answer.status_code == 503 and answer.json()["status"] == "warming up"
    service.state["worker"] = False
    answer = requests.get(url(service, "/healthz"), timeout=10)
    assert answer.status_code == 503 and answer.json()["checks"] == {"worker": False, "queue": True}
    assert requests.get(url(service, "/"), timeout=10).status_code == 404


def test_healthz_checks_orthanc_and_a_redis_queue(config):
    config["orthanc"].update(run=False, url=f"http://127.0.0.1:{free_port()}")
    config["queue"].update(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0")
    config["metrics"]["port"] = free_port()
    service = MetricsService(config, lambda: True, lambda: True, lambda: None)
    service.start()
    try:
        answer = requests.get(url(service, "/healthz"), timeout=30)
        assert "ctai_outbox_pending" in requests.get(url(service, "/metrics"), timeout=30).text  # still answers
    finally:
        service.stop()
    assert answer.status_code == 503
    assert answer.json()["checks"] == {"worker": True, "queue": False, "orthanc": False}


def test_a_cli_run_is_counted_without_touching_the_data_folder(config):
    metrics_plugin.ctai_job_finished(job=Job("cli", "cli-test"), results=[],
                                     failures=[Failure("x", "not a DICOM file")], config=config)
    assert not Path(config["data"]["dir"]).exists()
    counted = CollectorRegistry()
    counted.register(monitoring.JOBS)
    assert counted.get_sample_value("ctai_jobs_total", {"source": "cli-test", "status": "failed"}) == 1
