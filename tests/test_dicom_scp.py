"""The DICOM listener with senders not written here: dcmtk's storescu and echoscu, and pynetdicom
for what dcmtk will not send (corrupt data sets, a peer that drops mid-association)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path

import numpy as np
import pynetdicom
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ctai import hookimpl
from ctai.config import to_toml
from ctai.model.backend import ProbabilityClassifier
from ctai.outbox import OutboxSender
from ctai.pipeline import Pipeline
from ctai.plugins import plugin_manager
from ctai.serve import run_services
from ctai.transports.dicom_scp import CANNOT_UNDERSTAND, NOT_OF_SOP_CLASS, DicomListener
from ctai.transports.spool import SOURCE, Spool
from ctai.types import Failure, Job, ModelInfo, SourceImage
from tests.conftest import IMAGES
from tests.dicomfactory import dataset, pixel_data_cut, save
from tests.peers import HIS, PATIENT, StoreSCP, fast_outbox, free_port, result, tool, wait_until

SERIES_UID = "1.2.826.0.1.3680043.8.498.77.1"
RADIOGRAPHS = ["IM-0115-0001.jpeg", "IM-0133-0001.jpeg", "person1000_virus_1681.jpeg"]


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    """Three chest radiographs of one series, converted by dcmtk's img2dcm (JPEG Baseline SC)."""
    folder = tmp_path_factory.mktemp("series")
    files = []
    for name in RADIOGRAPHS:
        target = folder / name.replace(".jpeg", ".dcm")
        subprocess.run([tool("img2dcm"), "-k", f"PatientID={PATIENT.id}", "-k", "PatientName=Doe^Jane",
                        "-k", "StudyInstanceUID=1.2.826.0.1.3680043.8.498.77",
                        "-k", f"SeriesInstanceUID={SERIES_UID}",
                        "-k", "Modality=CR", "-k", "BodyPartExamined=CHEST", str(IMAGES / name), str(target)],
                       check=True, capture_output=True, timeout=30)
        files.append(target)
    return files


class Listener:
    """A DicomListener on 127.0.0.1 whose queue is a list."""

    def __init__(self, config, **settings) -> None:
        config["listener"].update({"host": "127.0.0.1", "port": 0, "idle_seconds": 1.5, **settings})
        self.jobs: list[Job] = []
        self.server = DicomListener(config, enqueue=self.jobs.append)
        self.server.start()

    def storescu(self, files: list[Path], calling: str = "MODALITY", *options: str) -> subprocess.CompletedProcess:
        """dcmtk's storescu, proposing JPEG lossy for the JPEG Baseline files as a PACS would."""
        return subprocess.run([tool("storescu"), *options, "-xy", "-aet", calling, "-aec", "CTAI", "127.0.0.1",
                               str(self.server.port), *map(str, files)],
                              capture_output=True, text=True, timeout=60)


@pytest.fixture
def listen(config) -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def start(**settings) -> Listener:
        started.append(Listener(config, **settings))
        return started[-1]

    yield start
    for listener in started:
        listener.server.stop()


def spooled(config) -> list[Path]:
    return sorted(Spool.from_config(config).incoming.glob("*/*.dcm"))


def test_storescu_series_becomes_one_job_with_its_images(config, listen, series):
    listener = listen()
    run = listener.storescu(series)
    assert run.returncode == 0, run.stderr
    [job] = wait_until(lambda: listener.jobs)
    assert job.source == SOURCE and job.options["batch"].startswith(SERIES_UID)

    pm = plugin_manager(config)
    images = pm.hook.ctai_load_job(job=job, config=config)
    assert len(images) == 3 and all(isinstance(image, SourceImage) for image in images)
    assert {image.dataset.SeriesInstanceUID for image in images} == {SERIES_UID}
    pm.hook.ctai_job_finished(job=job, results=[], failures=[], config=config)
    assert not Spool.from_config(config).batch(job.options["batch"]).exists()


def test_its_job_takes_each_frame_the_listener_decoded_and_decodes_none_again(config, listen, series, monkeypatch):
    """The listener decodes each compressed image to answer (here JPEG Baseline); the job that
    loads them moments later takes those values (``pool.decode(keep=True)``), the same as a
    fresh decoding gives."""
    from ctai.inputs import dicom, pool

    decoded: list[int] = []
    as_array = pool._as_array

    def counted(ds: Dataset, frame: int):
        decoded.append(frame)
        return as_array(ds, frame)

    monkeypatch.setattr(pool, "_as_array", counted)
    monkeypatch.setattr(pool, "_kept", pool._Kept(pool.KEPT_BYTES))
    listener = listen()
    assert listener.storescu(series).returncode == 0
    [job] = wait_until(lambda: listener.jobs)
    assert len(decoded) == 3
    images = plugin_manager(config).hook.ctai_load_job(job=job, config=config)
    assert len(decoded) == 3 and not pool._kept
    for image, path in zip(sorted(images, key=lambda i: i.dataset.SOPInstanceUID),
                           sorted(series, key=lambda p: dcmread(p).SOPInstanceUID), strict=True):
        np.testing.assert_array_equal(image.pixels, dicom.display_pixels(dcmread(path)))


def test_echoscu_is_answered(listen):
    listener = listen()
    run = subprocess.run([tool("echoscu"), "-aet", "MODALITY", "-aec", "CTAI", "127.0.0.1",
                          str(listener.server.port)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr


def test_calling_ae_title_not_on_the_allow_list_is_refused(config, listen, series, caplog):
    listener = listen(allowed_aets=["MODALITY"])
    refused = listener.storescu(series[:1], calling="INTRUDER")
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert "association from INTRUDER at 127.0.0.1 rejected: calling AE title not allowed" in caplog.text
    assert spooled(config) == []
    assert listener.storescu(series[:1]).returncode == 0


def association(listener: Listener, *sop_classes: str):
    ae = AE(ae_title="TESTSCU")
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.server.port, ae_title="CTAI")
    assert assoc.is_established
    return assoc


def with_body(path: Path, meta_from: Path, body: bytes) -> Path:
    """A PS3.10 file with the file meta of another file and ``body`` as its data set."""
    meta = dcmread(meta_from).file_meta
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = Dataset()
    head.file_meta = meta
    head.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes() + body)
    return path


def image(**changes) -> Dataset:
    ds = result().source.dataset
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
def test_bad_objects_get_a_failure_status_and_the_listener_keeps_serving(config, listen, tmp_path, series,
                                                                        monkeypatch):
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # send files as they are
    listener = listen()
    assoc = association(listener, SecondaryCaptureImageStorage, BasicTextSRStorage)
    garbage = with_body(tmp_path / "garbage.dcm", series[0], b"\x08\x00\x18\x00UI\xff\xff" + bytes(range(99)))
    assert assoc.send_c_store(garbage).Status == CANNOT_UNDERSTAND
    assert assoc.send_c_store(image(SeriesInstanceUID=None)).Status == CANNOT_UNDERSTAND
    assert assoc.send_c_store(image(SeriesInstanceUID="1.2.3/../../x")).Status == CANNOT_UNDERSTAND
    mismatch = image(SOPClassUID=CTImageStorage)
    mismatch.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    mismatch.save_as(tmp_path / "mismatch.dcm")
    assert assoc.send_c_store(tmp_path / "mismatch.dcm").Status == NOT_OF_SOP_CLASS
    report = image(SOPClassUID=BasicTextSRStorage)
    del report.PixelData
    assert assoc.send_c_store(report).Status == 0x0000  # not an image: accepted, not kept
    assert spooled(config) == []
    assert assoc.send_c_store(image()).Status == 0x0000
    assoc.release()
    assert len(spooled(config)) == 1


def ct_series(slices: int = 20) -> list[Dataset]:
    """An axial CT series of small slices, 5 mm apart."""
    study, series_uid = generate_uid(), generate_uid()
    volume = []
    for number in range(slices):
        ds = dataset(np.full((32, 32), 900 + 10 * number, np.uint16), bits_stored=12,
                     sop_class=CTImageStorage, modality="CT", RescaleSlope=1, RescaleIntercept=-1024,
                     StudyInstanceUID=study, SeriesInstanceUID=series_uid, SOPInstanceUID=generate_uid(),
                     InstanceNumber=number + 1, ImagePositionPatient=[0, 0, 5.0 * number],
                     ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PixelSpacing=[1, 1])
        volume.append(ds)
    return volume


def test_ct_volume_is_one_projection_and_a_bad_instance_is_stored_and_skipped(config, listen, caplog):
    listener = listen()
    volume = ct_series()
    broken = deepcopy(volume[0])
    # Whole and decodable, so stored; but a 16 x 16 CR is too small to classify.
    broken.SOPInstanceUID, broken.Modality = generate_uid(), "CR"
    broken.set_pixel_data(np.zeros((16, 16), np.uint16), "MONOCHROME2", 12)
    assoc = association(listener, CTImageStorage)
    assert {assoc.send_c_store(ds).Status for ds in [*volume, broken]} == {0x0000}
    assoc.release()
    [job] = wait_until(lambda: listener.jobs)
    loaded = plugin_manager(config).hook.ctai_load_job(job=job, config=config)
    [projection] = [item for item in loaded if isinstance(item, SourceImage)]
    assert "CT series (20 slices)" in projection.derivation
    [skipped] = [item for item in loaded if isinstance(item, Failure)]
    assert skipped.path.endswith(f"{broken.SOPInstanceUID}.dcm") and skipped.path in caplog.text
    assert "too small to classify" in skipped.reason


def test_a_peer_that_drops_mid_association_leaves_the_listener_serving(config, listen, series):
    listener = listen(idle_seconds=3600)
    with socket.create_connection(("127.0.0.1", listener.server.port)) as raw:
        raw.sendall(b"\x01\x00\x00\x00\x10\x00")  # an A-ASSOCIATE-RQ header, then the peer is gone
    assoc = association(listener, SecondaryCaptureImageStorage)
    peer = assoc.dul.socket.socket
    peer.sendall(b"\x04\x00\x00\x00\x01\x00\x00\x00")  # a P-DATA-TF of 256 bytes, cut short
    peer.shutdown(socket.SHUT_RDWR)
    peer.close()
    run = listener.storescu(series)
    assert run.returncode == 0, run.stderr
    assert len(spooled(config)) == 3 and list(Spool.from_config(config).tmp.iterdir()) == []


def test_instances_answered_with_success_are_queued_after_a_restart(config, listen, series):
    first = listen(idle_seconds=3600)
    assert first.storescu(series).returncode == 0
    first.server.stop()
    assert len(spooled(config)) == 3 and first.jobs == []

    def unreachable_queue(job: Job) -> None:
        raise OSError("queue database is locked")

    second = DicomListener(config, enqueue=unreachable_queue)
    second.idle_seconds = 0
    assert second.queue_idle_series() == []  # sealed, but the queue failed: kept for the next try
    restarted = listen(idle_seconds=0.2)
    [job] = wait_until(lambda: restarted.jobs)
    assert len(list(Spool.from_config(config).batch(job.options["batch"]).glob("*.dcm"))) == 3


class StubClassifier(ProbabilityClassifier):
    """Fixed probabilities instead of the model: this test is about the way in and the ways out."""

    info = ModelInfo("stub", "1")
    input_size = 64

    @hookimpl(tryfirst=True)
    def ctai_classifier(self, config) -> StubClassifier:
        return self

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.tile([0.1, 0.2, 0.7], (len(batch), 1))


def test_from_storescu_to_the_pacs_and_the_his(config, listen, series):
    pacs, his = StoreSCP(ComprehensiveSRStorage, SecondaryCaptureImageStorage), HIS(free_port()).start()
    config["cstore"].update(host="127.0.0.1", port=pacs.peer.port, ae_title="PACS")
    config["hl7"].update(host="127.0.0.1", port=his.port)
    sender = OutboxSender(fast_outbox(config))
    sender.start()
    try:
        listener = listen()
        assert listener.storescu(series).returncode == 0
        [job] = wait_until(lambda: listener.jobs)
        pm = plugin_manager(config)
        pm.register(StubClassifier(), name="stub")
        outcomes = Pipeline(config, pm).run(job, pm.hook.ctai_load_job(job=job, config=config))
        assert [type(o).__name__ for o in outcomes] == ["Result"] * 3
        wait_until(lambda: len(pacs.received) == 6 and len(his.accepted) == 3)
    finally:
        sender.stop()
        his.stop()
        pacs.server.shutdown()
    assert all("75570004^Viral pneumonia^SCT" in message for message in his.accepted)
    assert all(f"PID|1||{PATIENT.id}^^^^MR" in message for message in his.accepted)
    assert {ds.SOPClassUID for ds in pacs.received} == {ComprehensiveSRStorage, SecondaryCaptureImageStorage}
    assert not Spool.from_config(config).batch(job.options["batch"]).exists()


def test_a_mislabelled_series_is_skipped_with_the_gates_reason(config, listen, tmp_path):
    """A 'chest CR' whose pixels are a scanned page: the header rules pass it, the gate does not."""
    from training.nonchest import text_page

    page = np.round(text_page(np.random.default_rng(2)) * 255).astype(np.uint8)
    path = tmp_path / "page.dcm"
    dataset(page).save_as(path, enforce_file_format=True)
    listener = listen()
    assert listener.storescu([path]).returncode == 0
    [job] = wait_until(lambda: listener.jobs)
    pm = plugin_manager(config)
    pm.register(StubClassifier(), name="stub")
    [outcome] = Pipeline(config, pm).run(job, pm.hook.ctai_load_job(job=job, config=config))
    assert isinstance(outcome, Failure) and outcome.reason.startswith("skipped: not a frontal chest radiograph")


def echo(listener: Listener) -> bool:
    """Whether a C-ECHO is answered with Success now."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.server.port, ae_title="CTAI")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


def idle_sockets(listener: Listener, count: int) -> list[socket.socket]:
    """Connections that send nothing, as a port scan or a TCP health check makes them."""
    return [socket.create_connection(("127.0.0.1", listener.server.port)) for _ in range(count)]


def test_idle_sockets_cannot_lock_the_listener(listen):
    listener = listen(idle_timeout=2.0, max_associations_per_peer=100)  # the total limit only
    opened = idle_sockets(listener, 10)
    assert echo(listener)  # 10 idle connections no longer fill the limit
    for raw in opened:
        raw.close()
    opened = idle_sockets(listener, 50)  # all 50 slots: held at most idle_timeout
    start = time.monotonic()
    assert wait_until(lambda: echo(listener), timeout=10)
    assert time.monotonic() - start < 5
    for raw in opened:
        raw.close()


def test_closed_probes_free_their_slots_at_once(listen, caplog):
    """A load balancer's TCP health check: connect and close, ten times, from one host."""
    listener = listen(max_associations_per_peer=10)  # the default; idle_timeout 10 s
    for raw in idle_sockets(listener, 10):
        raw.close()
    start = time.monotonic()
    assoc, _ = request(listener)
    assert assoc.is_established, caplog.text  # not A-ASSOCIATE-RJ local-limit-exceeded
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert time.monotonic() - start < 1


def test_stop_returns_at_once_with_idle_connections_open(listen):
    before = set(threading.enumerate())  # earlier tests' idle pools are not the listener's
    listener = listen()
    opened = idle_sockets(listener, 3)
    established = association(listener, SecondaryCaptureImageStorage)
    start = time.monotonic()
    listener.server.stop()
    assert not established.is_established
    # The process can exit once the association threads (not daemons) have ended.
    def others() -> list[str]:
        return [t.name for t in set(threading.enumerate()) - before if not t.daemon]

    while others() and time.monotonic() - start < 5:
        time.sleep(0.05)
    assert not others(), others()
    for raw in opened:
        raw.close()


def test_truncated_pixel_data_gets_a_failure_status_and_is_not_kept(config, listen, series, tmp_path):
    listener = listen(idle_seconds=3600)
    native = save(dataset(np.zeros((300, 200), np.uint8), SOPInstanceUID=generate_uid()), tmp_path / "native.dcm")
    for cut in (pixel_data_cut(native, tmp_path / "native-cut.dcm"),
                pixel_data_cut(series[0], tmp_path / "jpeg-cut.dcm")):
        run = listener.storescu([cut], "MODALITY", "-v")
        assert run.returncode != 0 and "Received Store Response (Error: CannotUnderstand)" in run.stderr, run.stderr
    assert spooled(config) == []
    assert listener.storescu([native, series[0]]).returncode == 0
    assert len(spooled(config)) == 2


def test_a_deflated_data_set_that_inflates_beyond_any_image_gets_a_failure_status(config, listen, tmp_path,
                                                                                   monkeypatch, caplog):
    """pynetdicom inflates a deflated data set whole; the listener inflates it a piece at a time
    first (its limit lowered to 1 MB here), answers 0xC000 (Cannot Understand) and keeps nothing."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from ctai.inputs import dicom

    monkeypatch.setattr(dicom, "MAX_INFLATED", 2**20)
    listener = listen(idle_seconds=3600)
    ds = dataset(np.zeros((300, 200), np.uint8))
    bomb = deepcopy(ds)
    bomb.SOPInstanceUID = generate_uid()
    bomb.PixelData = bytes(2 * 2**20)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, [DeflatedExplicitVRLittleEndian])  # the peer offers nothing else
    assoc = ae.associate("127.0.0.1", listener.server.port, ae_title="CTAI")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(bomb).Status == CANNOT_UNDERSTAND
        assert spooled(config) == []
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    assert "its deflated data set inflates to over 1 MB" in caplog.text
    assert len(spooled(config)) == 1


def test_data_set_cut_inside_pixel_data_gets_a_failure_status(config, listen, tmp_path, monkeypatch):
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # send files as they are
    listener = listen(idle_seconds=3600)
    native = save(dataset(np.zeros((300, 200), np.uint8), SOPInstanceUID=generate_uid()), tmp_path / "native.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(native.read_bytes()[:-1000])
    assoc = association(listener, ComputedRadiographyImageStorage)
    assert assoc.send_c_store(cut).Status == CANNOT_UNDERSTAND
    assoc.release()
    assert spooled(config) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (root mounts one; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_with_the_disk_nearly_full_the_listener_refuses_new_images_and_logs_it_once(
        config, listen, series, small_disk, caplog):
    caplog.set_level("INFO", logger="ctai.disk")
    config["data"].update(dir=str(small_disk), min_free_mb=8, min_free_percent=0)
    listener = listen()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 10 * 2**20)
    refused = listener.storescu(series[:1])
    assert refused.returncode != 0 and not spooled(config)
    listener.storescu(series[1:2])
    assert caplog.text.count("disk space low") == 1  # once per episode
    filler.unlink()
    assert listener.storescu(series[:1]).returncode == 0 and spooled(config)
    assert "back above the floor" in caplog.text


def request(listener: Listener, source: str = "127.0.0.1"):
    """An association for C-ECHO from ``source`` (another loopback address is another peer)."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    rejections = []
    assoc = ae.associate("127.0.0.1", listener.server.port, ae_title="CTAI", bind_address=(source, 0),
                         evt_handlers=[(pynetdicom.evt.EVT_ACSE_RECV, lambda event: rejections.append(
                             (event.primitive.result, event.primitive.result_source, event.primitive.diagnostic)))])
    return assoc, rejections


def test_one_peer_cannot_take_every_association(listen, caplog):
    listener = listen(max_associations=10, max_associations_per_peer=3)
    held = [request(listener)[0] for _ in range(3)]
    assert all(assoc.is_established for assoc in held)
    refused, answer = request(listener)
    # A-ASSOCIATE-RJ rejected-transient, service-provider (presentation), local-limit-exceeded (PS3.8 9.3.4)
    assert refused.is_rejected and answer == [(0x02, 0x03, 0x02)]
    assert ("association from TESTSCU at 127.0.0.1 rejected: too many associations at once (at most 3 per peer,"
            " 10 in all)") in caplog.text
    held.pop().release()
    assert wait_until(lambda: (assoc := request(listener)[0]).is_established and (assoc.release() or True))

    scan = idle_sockets(listener, 20)  # the same peer holds more than max_associations, idle
    start = time.monotonic()
    other, _ = request(listener, source="127.0.0.2")
    assert other.is_established and other.send_c_echo().Status == 0x0000
    assert time.monotonic() - start < listener.server.idle_timeout / 2  # not kept waiting for the idle ones to time out
    other.release()
    for assoc in held:
        assoc.release()
    for raw in scan:
        raw.close()


SERVE_LISTENER = """
import sys
from ctai import config
from ctai.serve import run_services, setup_logging
from ctai.transports.dicom_scp import DicomListener
setup_logging()
sys.exit(run_services([DicomListener(config.load(), enqueue=lambda job: None)]))
"""


def test_sigterm_stops_the_serving_listener_within_5_s_with_idle_connections_open(config, tmp_path):
    """ctai serve's signal handling, with only the listener as service (no model to load)."""
    port = free_port()
    config["listener"].update(host="127.0.0.1", port=port)
    (tmp_path / "ctai.toml").write_text(to_toml(config))
    env = {**os.environ, "CTAI_CONFIG": str(tmp_path / "ctai.toml"), "PYTHONPATH": os.pathsep.join(sys.path)}
    serve = subprocess.Popen([sys.executable, "-c", SERVE_LISTENER], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: serve.poll() is not None or _listening(port), timeout=30)
        opened = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        established = ae.associate("127.0.0.1", port, ae_title="CTAI")
        assert established.is_established
        start = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(10) == 0
        assert time.monotonic() - start < 5, serve.stderr.read()
        for raw in opened:
            raw.close()
    finally:
        serve.kill()
        serve.wait()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_port_in_use_is_one_error_line_and_the_started_services_stop(config, caplog, monkeypatch):
    """``run_services`` (``ctai serve``): the listener cannot bind; the outbox started before it
    is stopped again, and the exit status is 2 with the reason in one line, not a traceback."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # pytest keeps its own handlers
    caplog.set_level("INFO", logger="ctai.serve")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config["listener"].update(host="127.0.0.1", port=taken.getsockname()[1])
        services = [OutboxSender(config), DicomListener(config, enqueue=lambda job: None)]
        assert run_services(services) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        "serve: could not start dicom-listener: [Errno 98] Address already in use"]
    assert errors[0].exc_info is None and "serve: stopping outbox" in caplog.text
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("outbox-")]
