"""FHIR delivery: the Bundle (R4B, validated by fhir.resources) maps the result as the SR and ORU
do; a local FHIR server receives it once through the outbox, whatever it answers on the way."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from fhir.resources.R4B.bundle import Bundle

from ctai.outbox import Outbox, send_due
from ctai.transports.fhir import FhirClient
from ctai.types import Job
from ctai_plugins import fhir
from tests.http_peers import FhirServer
from tests.peers import free_port, result

JOB = Job(id="job-1", source="dicom-listener")


def resources(bundle: Bundle) -> dict[str, list]:
    found: dict[str, list] = {}
    for entry in bundle.entry:
        found.setdefault(entry.resource.get_resource_type(), []).append(entry.resource)
    return found


def test_the_bundle_maps_patient_order_study_findings_and_algorithm():
    classified = result()
    bundle = fhir.build_bundle(classified, "base", datetime(2026, 11, 26).astimezone())
    Bundle.model_validate_json(bundle.model_dump_json())  # what goes on the wire is valid R4B too
    found = resources(bundle)
    [report], [device] = found["DiagnosticReport"], found["Device"]
    assert report.status == "preliminary" and report.category[0].coding[0].code == "RAD"
    assert report.subject.identifier.value == "PAT-1"
    assert report.basedOn[0].identifier.value == "ACC-42"
    assert report.basedOn[0].identifier.type.coding[0].code == "ACSN"
    study = classified.source.dataset.StudyInstanceUID
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{study}"
    assert "Decision support only" in report.conclusion and "Bacterial pneumonia" in report.conclusion
    assert report.conclusionCode[0].coding[0].code == "53084003"
    assert (device.deviceName[0].name, device.version[0].value, device.manufacturer) == ("resnet18-test", "0.0",
                                                                                         "ctai")
    observations = found["Observation"]
    assert [o.code.coding[0].code for o in observations] == ["122157"] * 3 + ["121071"]
    assert [float(o.valueQuantity.value) for o in observations[:3]] == [0.1, 0.7, 0.2]
    assert [o.component[0].valueCodeableConcept.coding[0].code for o in observations[:3]] == [
        "17621005", "53084003", "75570004"]
    assert observations[3].valueCodeableConcept.coding[0].code == "53084003"
    assert {o.device.reference for o in observations} == {bundle.entry[0].fullUrl}
    assert [r.reference for r in report.result] == [e.fullUrl for e in bundle.entry[1:5]]
    assert all(o.status == "preliminary" and o.category[0].coding[0].code == "imaging" for o in observations)


@pytest.fixture
def configured(config):
    config["outbox"].update(initial_backoff=0.0, max_backoff=0.0)
    config["fhir"].update(timeout=0.5, authorization="Bearer s3cret")
    return config


def queue(config, server_url: str) -> Outbox:
    config["fhir"]["base_url"] = server_url
    fhir.ctai_deliver(result=result(), job=JOB, config=config)
    fhir.ctai_deliver(result=result(), job=JOB, config=config)  # the job ran again: queued once
    return Outbox.from_config(config)


def send(config) -> int:
    return send_due(Outbox.from_config(config), "fhir", FhirClient.from_config(config).deliver)


def test_delivered_once_after_the_server_was_down_slow_and_failing(configured):
    port = free_port()
    outbox = queue(configured, f"http://127.0.0.1:{port}/fhir")
    assert send(configured) == 0  # nothing listens yet
    assert outbox.messages("pending")[0].last_error.startswith("TransientError: cannot reach")

    server = FhirServer(answers=["slow", 500], port=port)
    with server.running():
        assert send(configured) == 0
        assert "no answer from" in outbox.messages("pending")[0].last_error
        assert send(configured) == 0
        assert "HTTP 500" in outbox.messages("pending")[0].last_error
        assert send(configured) == 1
        time.sleep(server.slow_seconds)  # the slow first answer ends on the server
    assert [r["path"] for r in server.requests] == ["/fhir"] * 3
    assert {r["headers"]["Authorization"] for r in server.requests} == {"Bearer s3cret"}
    # The slow request was processed after all; its resend created nothing twice.
    assert len(server.bundles) == 2
    assert sorted(r["resourceType"] for r in server.created.values()) == [
        "Device", "DiagnosticReport", "Observation", "Observation", "Observation", "Observation"]
    [delivered] = outbox.messages()
    assert delivered.state == "delivered"
