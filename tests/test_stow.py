"""STOW-RS delivery of the SR and SC: a real Orthanc with Debian's DICOMweb plugin stores them (in
a private network namespace); a service that refuses one object dead-letters only that one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from ctai.builtin import stow
from ctai.outbox import Outbox, send_due
from ctai.transports.dicomweb import StowClient
from ctai.types import Job
from tests.http_peers import StowServer
from tests.peers import free_port, result, tool
from tests.test_cstore import with_outputs

JOB = Job(id="job-1", source="dicom-listener")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: Orthanc with only the DICOMweb plugin, then `ctai outbox --send`, then the study's instances
#: as Orthanc's QIDO-RS lists them, all in a network namespace of their own.
PRIVATE_NETWORK = """
ip link set lo up
Orthanc "$ORTHANC_DIR" > "$ORTHANC_DIR/orthanc.log" 2>&1 &
for _ in $(seq 200); do curl -sf -u ctai:pw http://127.0.0.1:8042/system > /dev/null && break; sleep 0.1; done
"$PYTHON" -m ctai.cli outbox --send
status=$?
curl -sf -u ctai:pw "http://127.0.0.1:8042/dicom-web/studies/$STUDY/instances"
kill %1 && wait
exit $status
"""


@pytest.fixture(scope="module")
def classified():
    return with_outputs(result())


def test_sr_and_sc_reach_orthanc_by_stow_rs_once(config, classified, tmp_path):
    for name in ("unshare", "ip", "curl", "Orthanc"):
        tool(name)
    if not os.path.exists(DICOMWEB_PLUGIN):
        pytest.skip("Debian package orthanc-dicomweb is not installed")
    orthanc = tmp_path / "orthanc"
    orthanc.mkdir()
    (orthanc / "orthanc.json").write_text(json.dumps({
        "HttpPort": 8042, "DicomPort": 4242, "StorageDirectory": str(orthanc / "storage"),
        "IndexDirectory": str(orthanc / "storage"), "RemoteAccessAllowed": True, "AuthenticationEnabled": True,
        "RegisteredUsers": {"ctai": "pw"}, "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}))
    config["dicomweb"]["url"] = "http://127.0.0.1:8042/dicom-web"
    stow.ctai_deliver(result=classified, job=JOB, config=config)
    stow.ctai_deliver(result=classified, job=JOB, config=config)  # the job ran again: queued once
    study = classified.source.dataset.StudyInstanceUID
    env = {**os.environ, "ORTHANC_DIR": str(orthanc), "PYTHON": sys.executable, "STUDY": study,
           "CTAI_DATA__DIR": config["data"]["dir"],
           "CTAI_DICOMWEB__AUTHORIZATION": "Basic " + base64.b64encode(b"ctai:pw").decode()}
    run = subprocess.run(["unshare", "-rn", "bash", "-c", PRIVATE_NETWORK], env=env, capture_output=True,
                         text=True, timeout=120)
    if "unshare failed" in run.stderr or "Operation not permitted" in run.stderr:
        pytest.skip(f"no private network namespace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stdout + run.stderr + (orthanc / "orthanc.log").read_text()[-3000:]
    assert "stow: 2 delivered now" in run.stdout
    listed = json.loads(run.stdout[run.stdout.index("["):])
    assert sorted(i["00080018"]["Value"][0] for i in listed) == sorted(
        o.dataset.SOPInstanceUID for o in classified.outputs)


def send(config) -> int:
    return send_due(Outbox.from_config(config), "stow", StowClient.from_config(config).deliver)


@pytest.mark.parametrize(("status", "reason", "state"), [
    (409, 0xC000, "dead"), (202, 0xA900, "dead"), (409, 0x0122, "dead"),
    (409, 0xA700, "pending"), (202, 0xA700, "pending"),
])
def test_a_refused_object_waits_or_is_a_dead_letter_and_the_others_go_on(config, classified, status, reason,
                                                                          state):
    server = StowServer(refused_status=status)
    sr = next(o.dataset for o in classified.outputs if o.kind == "sr")
    server.refused[sr.SOPInstanceUID] = reason
    with server.running():
        config["dicomweb"]["url"] = server.url + "/dicom-web"
        stow.ctai_deliver(result=classified, job=JOB, config=config)
        stow.ctai_deliver(result=with_outputs(result("IM-0115-0001.jpeg")), job=JOB, config=config)
        # A dead letter holds up nothing; a refusal for now (out of resources) makes the whole
        # service wait for the next round, as a peer that is down does.
        delivered = 3 if state == "dead" else 0
        assert send(config) == delivered
    assert [r["path"] for r in server.requests] == ["/dicom-web/studies"] * (delivered + 1)
    assert sr.SOPInstanceUID not in {ds.SOPInstanceUID for ds in server.stored}
    assert len(server.stored) == delivered
    refused, *waiting = [m for m in Outbox.from_config(config).messages() if m.state != "delivered"]
    assert refused.state == state and [m.state for m in waiting] == ([] if state == "dead" else ["pending"] * 3)
    assert refused.last_error.endswith(f"STOW-RS of {sr.SOPInstanceUID} failed with reason 0x{reason:04X}")


@pytest.mark.parametrize(("answer", "state", "reason"), [
    (401, "dead", "HTTP 401"), (403, "dead", "HTTP 403"), (404, "dead", "HTTP 404"), (301, "dead", "redirected to"),
    (503, "pending", "HTTP 503"), ("slow", "pending", "no answer from"), (None, "pending", "cannot reach"),
])
def test_http_failures_without_a_store_response(config, classified, answer, state, reason):
    server = StowServer()
    server.answers = [answer] * 2
    config["dicomweb"]["timeout"] = 0.5
    with server.running():
        # None: a URL where nothing listens.
        config["dicomweb"]["url"] = server.url if answer else f"http://127.0.0.1:{free_port()}"
        stow.ctai_deliver(result=classified, job=JOB, config=config)
        assert send(config) == 0
    first = Outbox.from_config(config).messages()[0]
    assert first.state == state and reason in first.last_error


def test_an_untrusted_certificate_waits_and_goes_with_its_ca_file(config, classified, tmp_path):
    server = StowServer()
    certificate = server.with_tls(tmp_path)
    config["outbox"].update(initial_backoff=0.0, max_backoff=0.0)
    with server.running():
        config["dicomweb"]["url"] = server.url
        stow.ctai_deliver(result=classified, job=JOB, config=config)
        assert send(config) == 0
        reason = Outbox.from_config(config).messages("pending")[0].last_error
        assert "CERTIFICATE_VERIFY_FAILED (self-signed certificate)" in reason
        config["dicomweb"]["ca_file"] = str(certificate)
        assert send(config) == 2
    assert len(server.stored) == 2
