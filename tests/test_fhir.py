"""FHIR delivery: the Bundle (R4B, validated by fhir.resources) maps the result as the SR and ORU
do; a local FHIR server receives it once through the outbox, whatever it answers on the way."""

from __future__ import annotations

from datetime import datetime

import pytest
from fhir.resources.R4B.bundle import Bundle

from ctai.builtin import fhir
from ctai.cli import build_parser
from ctai.outbox import Outbox, send_due
from ctai.outputs.fhir import build_bundle
from ctai.transports.fhir import FhirClient
from ctai.types import Job
from tests.http_peers import FhirServer
from tests.peers import free_port, result, wait_until

JOB = Job(id="job-1", source="dicom-listener")


def resources(bundle: Bundle) -> dict[str, list]:
    found: dict[str, list] = {}
    for entry in bundle.entry:
        found.setdefault(entry.resource.get_resource_type(), []).append(entry.resource)
    return found


def test_the_bundle_maps_patient_order_study_findings_and_algorithm():
    classified = result()
    classified.source.dataset.update({"IssuerOfPatientID": "HOSPITAL-A", "StudyDate": "20261125",
                                      "StudyTime": "093000"})
    bundle = build_bundle(classified, "base", datetime(2026, 11, 26).astimezone())
    Bundle.model_validate_json(bundle.model_dump_json())  # what goes on the wire is valid R4B too
    found = resources(bundle)
    [report], [device] = found["DiagnosticReport"], found["Device"]
    assert report.status == "preliminary" and report.category[0].coding[0].code == "RAD"
    assert report.subject.identifier.value == "PAT-1"
    assert report.subject.identifier.assigner.display == "HOSPITAL-A"
    assert str(report.effectiveDateTime).startswith("2026-11-25") and "09:30:00" in str(report.effectiveDateTime)
    assert report.basedOn[0].identifier.value == "ACC-42"
    assert report.basedOn[0].identifier.type.coding[0].code == "ACSN"
    study = classified.source.dataset.StudyInstanceUID
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{study}"
    assert "Decision support only" in report.conclusion and "Bacterial pneumonia" in report.conclusion
    assert report.conclusionCode[0].coding[0].code == "53084003"
    assert (device.deviceName[0].name, device.version[0].value, device.manufacturer) == ("resnet18-test", "0.0",
                                                                                         "ctai")
    assert device.type.coding[0].code == "123110"  # DCM Artificial Intelligence, as TID 4019's family
    observations = found["Observation"]
    assert [o.code.coding[0].code for o in observations] == ["122157"] * 3 + ["121071"]
    assert [float(o.valueQuantity.value) for o in observations[:3]] == [0.1, 0.7, 0.2]
    assert [o.component[0].valueCodeableConcept.coding[0].code for o in observations[:3]] == [
        "17621005", "53084003", "75570004"]
    assert observations[3].valueCodeableConcept.coding[0].code == "53084003"
    assert {o.device.reference for o in observations} == {bundle.entry[0].fullUrl}
    assert [r.reference for r in report.result] == [e.fullUrl for e in bundle.entry[1:5]]
    assert all(o.status == "preliminary" and o.category[0].coding[0].code == "imaging" for o in observations)
    assert {(o.basedOn[0].identifier.value, o.partOf[0].identifier.value) for o in observations} == {
        ("ACC-42", f"urn:oid:{study}")}
    assert {o.subject.identifier.value for o in observations} == {"PAT-1"}


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
        wait_until(lambda: len(server.bundles) == 2, 30)  # the slow first answer ends on the server
    assert [r["path"] for r in server.requests] == ["/fhir"] * 3
    assert {r["headers"]["Authorization"] for r in server.requests} == {"Bearer s3cret"}
    # The slow request was processed after all; its resend created nothing twice.
    assert len(server.bundles) == 2
    assert sorted(r["resourceType"] for r in server.created.values()) == [
        "Device", "DiagnosticReport", "Observation", "Observation", "Observation", "Observation"]
    [delivered] = outbox.messages()
    assert delivered.state == "delivered"


@pytest.fixture(scope="module")
def scripted():
    server = FhirServer()
    with server.running():
        yield server


@pytest.mark.parametrize(("status", "state"), [
    (400, "dead"), (401, "dead"), (403, "dead"), (404, "dead"), (409, "dead"), (422, "dead"),
    (408, "pending"), (429, "pending"), (500, "pending"), (502, "pending"), (503, "pending"),
])
def test_each_http_status_is_permanent_or_transient(configured, scripted, status, state, capsys):
    scripted.answers = [status]
    outbox = queue(configured, scripted.url)
    assert send(configured) == 0
    [message] = outbox.messages()
    assert message.state == state and f"HTTP {status}" in message.last_error
    assert f"scripted {status}" in message.last_error  # the server's OperationOutcome diagnostics
    assert outbox_command(configured) == 1
    assert f"#{message.id} fhir {state} {message.key} attempts=1 " in capsys.readouterr().out


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_a_dead_letter_naming_the_new_url(configured, scripted, status):
    scripted.answers = [status]
    before = len(scripted.requests)
    outbox = queue(configured, scripted.url)
    assert send(configured) == 0
    [message] = outbox.messages()
    assert message.state == "dead" and f"redirected to {scripted.url}/moved" in message.last_error
    assert [r["path"] for r in scripted.requests[before:]] == ["/"]  # not followed


def outbox_command(config, *args: str) -> int:
    parsed = build_parser().parse_args(["outbox", *args])
    return parsed.func(parsed, config)


def test_a_dead_letter_for_401_goes_once_the_credentials_are_fixed(configured):
    server = FhirServer(answers=[401])
    with server.running():
        configured["fhir"]["authorization"] = "Bearer wrong"
        outbox = queue(configured, server.url)
        assert send(configured) == 0
        [dead] = outbox.messages("dead")
        configured["fhir"]["authorization"] = "Bearer s3cret"
        assert outbox_command(configured, "retry", "--all") == 1
        assert send(configured) == 1
    assert [r["headers"]["Authorization"] for r in server.requests] == ["Bearer wrong", "Bearer s3cret"]
    assert len(server.bundles) == 1 and outbox.messages()[0].id == dead.id


def test_an_untrusted_certificate_waits_and_goes_with_its_ca_file(configured, tmp_path):
    server = FhirServer()
    certificate = server.with_tls(tmp_path)
    with server.running():
        outbox = queue(configured, server.url)
        assert send(configured) == 0
        [waiting] = outbox.messages("pending")
        assert "TLS with https://127.0.0.1" in waiting.last_error and "CERTIFICATE_VERIFY_FAILED" in waiting.last_error
        assert server.bundles == []
        configured["fhir"]["ca_file"] = str(certificate)
        assert send(configured) == 1
    assert len(server.bundles) == 1
