"""C-STORE delivery of the SR and SC: dcmtk's storescp receives them (dciodvfy then checks them),
also after being down; a pynetdicom peer without Comprehensive 3D SR gets the fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
)

from ctai import config as configuration
from ctai.inputs.dicom import to_bytes
from ctai.outbox import Outbox, Undeliverable, send_due
from ctai.plugins import plugin_manager
from ctai.transports import dicom_scu
from ctai.types import Job, Result
from ctai_plugins import cstore
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
    classified = result()
    config = configuration.load(environ={})
    for outputs in plugin_manager(config).hook.ctai_make_outputs(result=classified, config=config):
        classified.outputs.extend(outputs or [])
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
