"""C-STORE delivery of the SR and SC: dcmtk's storescp receives them (dciodvfy then checks them),
also after being down; a pynetdicom peer without Comprehensive 3D SR gets the fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE

from ctai import config as configuration
from ctai.builtin import cstore
from ctai.cli import build_parser
from ctai.errors import TransientError, Undeliverable
from ctai.outbox import Outbox, send_due
from ctai.outputs.common import to_bytes
from ctai.plugins import plugin_manager
from ctai.transports import dicom_scu
from ctai.types import Job, Result
from tests.peers import StoreSCP, free_port, result, tool

JOB = Job(id="job-1", source="dicom-listener")
#: storescp in a network namespace of its own (dcmtk 3.6.7 cannot bind to 127.0.0.1 only),
#: then `ctai outbox --send` in the same namespace.
PRIVATE_NETWORK = """
ip link set lo up
if [ -n "$PACS_DIR" ]; then
  storescp -aet PACS -od "$PACS_DIR" "$PORT" &
  for _ in $(seq 100); do echoscu -aec PACS 127.0.0.1 "$PORT" 2>/dev/null && break; sleep 0.1; done
fi
"$PYTHON" -m ctai.cli outbox --send
status=$?
[ -n "$PACS_DIR" ] && kill %1 && wait
exit $status
"""


@pytest.fixture(scope="module")
def classified() -> Result:
    """A result with the SR and SC that the sr and sc plugins make of it."""
    classified = with_outputs(result())
    assert sorted(o.kind for o in classified.outputs) == ["sc", "sr"]
    return classified


def private_send(config, port: int, pacs_dir: Path | None) -> subprocess.CompletedProcess:
    """``ctai outbox --send`` with storescp on ``port`` (or nothing, when pacs_dir is None)."""
    for name in ("unshare", "ip", "storescp", "echoscu"):
        tool(name)
    env = {**os.environ, "PORT": str(port), "PACS_DIR": str(pacs_dir or ""), "PYTHON": sys.executable,
           "CTAI_DATA__DIR": config["data"]["dir"]}
    run = subprocess.run(["unshare", "-rn", "bash", "-c", PRIVATE_NETWORK], env=env, capture_output=True,
                         text=True, timeout=120)
    if "unshare failed" in run.stderr or "Operation not permitted" in run.stderr:
        pytest.skip(f"no private network namespace here: {run.stderr.strip()}")
    return run


def test_sr_and_sc_reach_storescp_once_after_it_was_down_and_pass_dciodvfy(config, classified, tmp_path):
    port = free_port()
    config["cstore"].update(host="127.0.0.1", port=port, ae_title="PACS")
    cstore.ctai_deliver(result=classified, job=JOB, config=config)
    cstore.ctai_deliver(result=classified, job=JOB, config=config)  # the job ran again: queued once

    down = private_send(config, port, None)
    assert down.returncode == 1 and down.stdout.count("cstore pending") == 2, down.stdout + down.stderr
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    back = private_send(config, port, pacs)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "cstore: 2 delivered now" in back.stdout

    received = {dcmread(path).SOPClassUID: path for path in pacs.iterdir()}
    assert set(received) == {ComprehensiveSRStorage, SecondaryCaptureImageStorage} and len(received) == 2
    for path in received.values():
        check = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
        assert [line for line in check.stderr.splitlines() if line.startswith("Error")] == [], check.stderr
    assert len(Outbox.from_config(config).messages("delivered")) == 2


@pytest.fixture
def peer() -> Iterator[StoreSCP]:
    started = StoreSCP(ComprehensiveSRStorage, SecondaryCaptureImageStorage)
    yield started
    started.server.shutdown()


def as_3d(report: Dataset) -> Dataset:
    """The report as a Comprehensive 3D SR, read back as a PS3.10 file (plain pydicom)."""
    report = dcmread(BytesIO(to_bytes(report)))
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = Comprehensive3DSRStorage
    return report


def sr_of(classified: Result) -> Dataset:
    return next(o.dataset for o in classified.outputs if o.kind == "sr")


def test_comprehensive_3d_sr_falls_back_to_comprehensive_sr(classified, peer):
    report = as_3d(sr_of(classified))
    dicom_scu.store(peer.peer, [report])
    [stored] = peer.received
    assert stored.SOPClassUID == ComprehensiveSRStorage
    assert stored.SOPInstanceUID != report.SOPInstanceUID  # another SOP class, another object
    assert stored.ContentSequence == report.ContentSequence


def test_no_fallback_for_3d_coordinates_or_a_peer_without_sr(classified, peer):
    report = as_3d(sr_of(classified))
    point = Dataset()
    point.ValueType = "SCOORD3D"
    report.ContentSequence[-1].ContentSequence.append(point)
    with pytest.raises(Undeliverable, match="3-D coordinates"):
        dicom_scu.store(peer.peer, [report])
    no_sr = StoreSCP(SecondaryCaptureImageStorage)
    try:
        with pytest.raises(Undeliverable, match="does not accept"):
            dicom_scu.store(no_sr.peer, [sr_of(classified)])
    finally:
        no_sr.server.shutdown()


def test_outbox_delivers_to_a_peer_once(config, classified, peer):
    config["cstore"].update(host="127.0.0.1", port=peer.peer.port, ae_title="PACS")
    cstore.ctai_deliver(result=classified, job=JOB, config=config)
    outbox = Outbox.from_config(config)
    assert send_due(outbox, "cstore", dicom_scu.deliver) == 2
    assert send_due(outbox, "cstore", dicom_scu.deliver, now=9e9) == 0
    assert sorted(ds.SOPInstanceUID for ds in peer.received) == sorted(
        o.dataset.SOPInstanceUID for o in classified.outputs)


def test_the_objects_of_many_studies_share_one_association_per_round(config, classified, peer):
    """20 studies' SR and SC: the SRs go on one association, then the SCs (each study in order);
    a refused object is a dead letter while the others go on in the same association."""
    config["cstore"].update(host="127.0.0.1", port=peer.peer.port, ae_title="PACS")
    studies = [classified, *(copy_with_new_study(classified, number) for number in range(19))]
    refused = sr_of(studies[7]).SOPInstanceUID
    peer.statuses[refused] = 0xC000
    for study in studies:
        cstore.ctai_deliver(result=study, job=JOB, config=config)
    outbox = Outbox.from_config(config)
    assert send_due(outbox, "cstore", dicom_scu.deliver) == 39
    assert peer.associations == 2 and len(peer.received) == 39
    [dead] = outbox.messages("dead")
    assert refused in dead.last_error and "0xC000" in dead.last_error


def copy_with_new_study(classified: Result, number: int) -> Result:
    """``classified``'s outputs as if of another study (new study and instance UIDs)."""
    outputs = []
    study = f"1.2.826.0.1.3680043.8.498.4242.{number}"
    for output in classified.outputs:
        ds = dcmread(BytesIO(to_bytes(output.dataset)))
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.{len(outputs) + 1}"
        outputs.append(replace(output, dataset=ds))
    return replace(classified, outputs=outputs)


def with_outputs(classified: Result) -> Result:
    config = configuration.load(environ={})
    for outputs in plugin_manager(config).hook.ctai_make_outputs(result=classified, job=Job("j", "cli"), config=config):
        classified.outputs.extend(outputs or [])
    return classified


@pytest.fixture(scope="module")
def other_study() -> Result:
    return with_outputs(result("IM-0115-0001.jpeg"))


def outbox_command(config, *args: str) -> int:
    """``ctai outbox ARGS`` on ``config``."""
    parsed = build_parser().parse_args(["outbox", *args])
    return parsed.func(parsed, config)


def test_a_refused_object_is_a_dead_letter_others_go_on_and_retry_delivers_it(config, classified, other_study,
                                                                              peer, capsys):
    config["cstore"].update(host="127.0.0.1", port=peer.peer.port, ae_title="PACS")
    refused = sr_of(classified).SOPInstanceUID
    peer.statuses[refused] = 0xC000
    cstore.ctai_deliver(result=classified, job=JOB, config=config)
    cstore.ctai_deliver(result=other_study, job=JOB, config=config)
    outbox = Outbox.from_config(config)
    assert send_due(outbox, "cstore", dicom_scu.deliver) == 3
    assert refused not in {ds.SOPInstanceUID for ds in peer.received} and len(peer.received) == 3
    [dead] = outbox.messages("dead")
    capsys.readouterr()
    assert outbox_command(config) == 1
    assert capsys.readouterr().out == f"#{dead.id} cstore dead {dead.key} attempts=1 {dead.last_error}\n"
    assert "status 0xC000" in dead.last_error and refused in dead.last_error

    del peer.statuses[refused]
    assert outbox_command(config, "retry", str(dead.id)) == 1  # pending now
    assert send_due(outbox, "cstore", dicom_scu.deliver) == 1
    assert peer.received[-1].SOPInstanceUID == refused
    assert outbox_command(config) == 0


def test_drop_keeps_the_dead_letter_out_of_the_listing(config, classified, peer, capsys):
    config["cstore"].update(host="127.0.0.1", port=peer.peer.port, ae_title="PACS")
    for output in classified.outputs:
        peer.statuses[output.dataset.SOPInstanceUID] = 0x0122
    cstore.ctai_deliver(result=classified, job=JOB, config=config)
    outbox = Outbox.from_config(config)
    send_due(outbox, "cstore", dicom_scu.deliver)
    first, second = outbox.messages("dead")
    assert outbox_command(config, "drop", str(first.id)) == 1
    assert outbox_command(config, "drop", str(first.id)) == 2  # not there any more
    assert outbox_command(config, "drop", str(second.id)) == 0
    assert [m.state for m in outbox.messages()] == ["dropped", "dropped"]


@pytest.mark.parametrize(("status", "states"), [
    # Transient: the SR waits for its next attempt, and the SC of its study behind it.
    (0xA700, ["pending", "pending"]), (0x0213, ["pending", "pending"]), (0x0110, ["pending", "pending"]),
    # Permanent: the SR is a dead letter, the SC goes on.
    (0xA900, ["dead", "delivered"]), (0xC000, ["dead", "delivered"]), (0x0122, ["dead", "delivered"]),
    (0x0117, ["dead", "delivered"]), (0x0124, ["dead", "delivered"]),
    # Warnings: stored.
    (0xB000, ["delivered", "delivered"]), (0xB006, ["delivered", "delivered"]), (0xB007, ["delivered", "delivered"]),
])
def test_each_dimse_status_is_delivered_transient_or_permanent(config, classified, peer, status, states):
    config["cstore"].update(host="127.0.0.1", port=peer.peer.port, ae_title="PACS")
    peer.statuses[sr_of(classified).SOPInstanceUID] = status
    cstore.ctai_deliver(result=classified, job=JOB, config=config)
    outbox = Outbox.from_config(config)
    send_due(outbox, "cstore", dicom_scu.deliver)
    sr, sc = sorted(outbox.messages(), key=lambda m: m.last_error is None)
    assert [sr.state, sc.state] == states
    assert sr.last_error is None if states[0] == "delivered" else f"0x{status:04X}" in sr.last_error


def test_association_rejected_permanent_or_transient(classified):
    scp = StoreSCP(ComprehensiveSRStorage, SecondaryCaptureImageStorage)
    try:
        wrong_title = replace(scp.peer, ae_title="NOT-PACS")
        scp.server.ae.require_called_aet = True
        with pytest.raises(Undeliverable, match=r"rejected \(permanent\)"):
            dicom_scu.store(wrong_title, [sr_of(classified)])
        scp.server.ae.maximum_associations = 1
        holder = AE()
        holder.add_requested_context(ComprehensiveSRStorage)
        held = holder.associate(scp.peer.host, scp.peer.port, ae_title="PACS")
        try:
            with pytest.raises(TransientError, match=r"rejected \(transient\)"):
                dicom_scu.store(scp.peer, [sr_of(classified)])
        finally:
            held.release()
    finally:
        scp.server.shutdown()
