"""Orthanc integration against a real Orthanc with ctai's plugin, and the worker.

Outside the private network namespace this module holds the fast rule tests and one wrapper
test that re-runs the module inside ``unshare -n`` (see ``tests/orthanc_harness.py``).
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from ctai import cli, jobs
from ctai import config as configuration
from ctai.errors import TransientError
from ctai.inputs.selection import OWN_OUTPUT
from ctai.orthanc.client import OUTPUTS_METADATA, STATUS_METADATA, OrthancClient
from ctai.orthanc.series import instance_id, series_job, series_skip_reason
from ctai.outbox import Outbox
from ctai.outputs.common import to_bytes
from ctai.results import JobStore
from ctai.site import state
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dicomfactory import dcmtk, pixel_data_cut, save
from tests.orthanc_harness import IN_NAMESPACE, Harness, fast_config, model_missing, passes_in_namespace
from tests.peers import free_port, wait_until
from tests.phantoms import ct_series, image_names, radiograph


@pytest.mark.parametrize("tags, reason", [
    ({"Modality": "DX", "BodyPartExamined": "CHEST"}, None),
    ({"Modality": "CR"}, None),
    ({"Modality": "CT", "BodyPartExamined": "THORAX"}, None),
    ({"Modality": "SR"}, "modality SR is not a chest radiograph or CT"),
    ({}, "modality (none) is not a chest radiograph or CT"),
    ({"Modality": "DX", "BodyPartExamined": "KNEE"}, "body part KNEE is not the chest"),
    ({"Modality": "OT", "SeriesDescription": "ctai AI result (picture)"}, OWN_OUTPUT),
])
def test_series_eligibility(tags, reason):
    assert series_skip_reason(tags, configuration.load(environ={})) == reason


def test_a_file_that_orthanc_breaks_off_is_a_transient_error():
    """The client reads a file in pieces as it comes: one cut short is retried later, not a
    decoding error of a file that is whole in Orthanc."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom\r\n"
                                   b"Content-Length: 3000000\r\n\r\n" + bytes(1_500_000))

        thread = threading.Thread(target=answer)
        thread.start()
        client = OrthancClient(f"http://127.0.0.1:{server.getsockname()[1]}", ("ctai", "secret"))
        with pytest.raises(TransientError, match="broke off a file"):
            client.instance_file("1")
        thread.join()


def test_a_port_another_program_listens_on_stops_orthancs_start_in_one_line(config):
    """Orthanc listens on every interface; a program already on its HTTP port would answer in its
    place (ctai's start read its 404 page as Orthanc's and ended in a traceback)."""
    from ctai.orthanc.service import OrthancService

    with socket.create_server(("127.0.0.1", 0)) as taken:
        config["orthanc"]["http_port"] = taken.getsockname()[1]
        service = OrthancService(config)
        with pytest.raises(OSError, match=rf"^\[orthanc\] http_port {config['orthanc']['http_port']} is taken "
                                          r"by another program \(Address already in use\)$"):
            service.start()
    assert service.process is None


if not IN_NAMESPACE:

    def test_orthanc_suite_in_a_private_network_namespace():
        passes_in_namespace(Path(__file__))

else:

    @pytest.fixture(scope="module")
    def harness():
        with tempfile.TemporaryDirectory() as folder:
            config = fast_config(Path(folder) / "ctai-data")
            harness = Harness(config)
            harness.start_orthanc()
            try:
                yield harness
            finally:
                harness.close()

    @pytest.fixture
    def worker(harness):
        """The harness with a running worker (one per module, started on first use)."""
        if model_missing(harness.config):
            pytest.skip("no model: the shipped one is not there yet (or set CTAI_MODEL__PATH)")
        if harness.worker is None:
            harness.start_worker()
        return harness

    def record(harness: Harness, series_id: str, status: str, timeout: float = 60):
        store = JobStore(harness.config)

        def reached():
            found = store.get(f"orthanc:{series_id}")
            return found if found and found.status == status else None

        return wait_until(reached, timeout)

    def status_metadata(harness: Harness, series_id: str) -> dict:
        return json.loads(harness.client.metadata("series", series_id).get(STATUS_METADATA) or "{}")

    def content_items(items) -> list[Dataset]:
        """Every content item of an SR tree, depth first."""
        return [found for item in items for found in [item, *content_items(item.get("ContentSequence", []))]]

    def probabilities_in_sr(sr: Dataset) -> list[float]:
        """Every "Probability" (DCM 122157) number in the SR, in increasing order."""
        return sorted(float(item.MeasuredValueSequence[0].NumericValue)
                      for item in content_items(sr.ContentSequence)
                      if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "122157")

    def classify(ds: Dataset) -> dict[str, float]:
        """What ``ctai classify --json`` says for the file."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "image.dcm"
            ds.save_as(path, enforce_file_format=True)
            out = io.StringIO()
            with redirect_stdout(out):
                assert cli.main(["classify", "--json", str(path)]) == 0
        return json.loads(out.getvalue().splitlines()[0])["probabilities"]

    def test_rest_upload_gets_a_valid_sr_and_sc_with_the_classify_probabilities(worker):
        ds = radiograph("person1000_bacteria_2931.jpeg", "REST1")
        answer = worker.upload(ds)
        done = record(worker, answer["ParentSeries"], "done")
        outputs = worker.outputs(answer["ParentStudy"])
        assert sorted(outputs) == ["OT", "SR"] and len(outputs["SR"]) == len(outputs["OT"]) == 1
        for output in (outputs["SR"][0], outputs["OT"][0]):
            assert output.StudyInstanceUID == ds.StudyInstanceUID
            assert dciodvfy_errors(output) == []
        expected = classify(ds)
        assert done.probabilities == pytest.approx(expected, abs=1e-4)
        assert probabilities_in_sr(outputs["SR"][0]) == pytest.approx(sorted(expected.values()), abs=1e-4)
        status = status_metadata(worker, answer["ParentSeries"])
        assert status["status"] == "done" and status["label"] == max(expected, key=expected.get)
        assert status["seconds"] > 0 and done.seconds > 0

    def test_shadow_mode_keeps_the_result_out_of_orthanc_and_records_it(worker):
        state.set_mode(worker.config, "shadow", "test")
        time.sleep(state.REFRESH_SECONDS + 0.1)  # the worker reads the switch within this
        try:
            ds = radiograph("IM-0133-0001.jpeg", "SHADOW1")
            answer = worker.upload(ds)
            done = record(worker, answer["ParentSeries"], "done")
            assert done.label and done.details["mode"] == "shadow"
            assert worker.outputs(answer["ParentStudy"]) == {}
            status = status_metadata(worker, answer["ParentSeries"])
            assert status["status"] == "done" and "label" not in status and "probabilities" not in status
        finally:
            state.set_mode(worker.config, "live", "test")
            time.sleep(state.REFRESH_SECONDS + 0.1)

    def test_outputs_are_named_by_the_id_orthanc_gives_them(harness):
        """The plugin names the outputs it queues for Orthanc before Orthanc stores them."""
        ds = radiograph("IM-0133-0001.jpeg", "HASH1", body_part="KNEE")  # skipped: no job of its own
        assert harness.upload(ds)["ID"] == instance_id(ds)

    def test_a_file_comes_from_orthanc_as_it_is_stored(harness):
        """Not gzipped on the way (Orthanc compresses an answer when asked): a 10 MB radiograph cost
        Orthanc 212 ms of CPU time so."""
        ds = radiograph("IM-0133-0001.jpeg", "PLAIN1", body_part="KNEE")  # skipped: no job of its own
        instance = harness.upload(ds)["ID"]
        answer = harness.client.request("GET", f"/instances/{instance}/file")
        assert "Content-Encoding" not in answer.headers and answer.content == to_bytes(ds)
        assert harness.client.instance_file(instance) == to_bytes(ds)

    def test_an_instance_that_cannot_be_read_fails_alone_and_the_series_goes_on(harness, monkeypatch):
        """An instance gone from Orthanc between the series' listing and its reading (or one
        pydicom cannot read) is a Failure of its own: the series' other images are classified."""
        from ctai.builtin import orthanc as plugin
        from ctai.types import Failure, Job

        ds = radiograph("IM-0133-0001.jpeg", "GONE1", body_part="KNEE")  # skipped: no job of its own
        series_id = harness.upload(ds)["ParentSeries"]
        listed = OrthancClient.series
        monkeypatch.setattr(OrthancClient, "series", lambda self, series: {
            **listed(self, series), "Instances": [*listed(self, series)["Instances"], "0000-gone"]})
        gone, image = plugin.ctai_load_job(Job("j", "orthanc", {"series": series_id}), harness.config)
        assert image.dataset.SOPInstanceUID == ds.SOPInstanceUID
        assert isinstance(gone, Failure) and gone.path == "orthanc:instances/0000-gone"
        assert "the instance is no longer in Orthanc" in gone.reason and "404" in gone.reason

    def test_storescu_upload_gets_sr_and_sc(worker):
        ds = radiograph("person1000_virus_1681.jpeg", "SCU1")
        worker.storescu(ds)
        series_id = wait_until(lambda: worker.series_id(ds), 10)
        record(worker, series_id, "done")
        study_id = worker.client.series(series_id)["ParentStudy"]
        assert {m: len(v) for m, v in worker.outputs(study_id).items()} == {"OT": 1, "SR": 1}

    def test_a_series_is_queued_by_its_own_timer_and_runs_once(worker):
        """ctai's timer queues the series stable_age after its last instance; Orthanc's later
        STABLE_SERIES does not queue it again."""
        ds = radiograph("IM-0133-0001.jpeg", "ONCE1")
        answer = worker.upload(ds)
        first = record(worker, answer["ParentSeries"], "done")
        time.sleep(worker.config["orthanc"]["stable_age"] + 2.5)  # Orthanc's STABLE_SERIES has come
        again = JobStore(worker.config).get(first.id)
        assert (again.status, again.started) == ("done", first.started)

    def test_sending_again_does_not_duplicate_outputs(worker):
        ds = radiograph("IM-0115-0001.jpeg", "AGAIN1")
        answer = worker.upload(ds)
        first = record(worker, answer["ParentSeries"], "done")
        worker.upload(ds)
        worker.storescu(ds)
        jobs.enqueue(worker.config, series_job(answer["ParentSeries"]))  # as if the series changed
        store = JobStore(worker.config)
        wait_until(lambda: (r := store.get(first.id)).status == "done" and r.started > first.finished, 30)
        time.sleep(worker.config["orthanc"]["stable_age"] + 2)
        assert {m: len(v) for m, v in worker.outputs(answer["ParentStudy"]).items()} == {"OT": 1, "SR": 1}
        metadata = worker.client.metadata("series", answer["ParentSeries"])
        assert len(json.loads(metadata[OUTPUTS_METADATA])) == 2

    def test_series_sent_while_the_worker_is_down_are_all_processed_in_batches(worker):
        worker.stop_worker()
        names = image_names()
        sent = [radiograph(names[i % len(names)], f"DOWN{i}") for i in range(20)]
        answers = [worker.upload(ds) for ds in sent]
        for answer in answers:
            record(worker, answer["ParentSeries"], "pending", timeout=30)
        started = worker.start_worker()
        for answer in answers:
            record(worker, answer["ParentSeries"], "done", timeout=120)
            assert {m: len(v) for m, v in worker.outputs(answer["ParentStudy"]).items()} == {"OT": 1, "SR": 1}
        assert max(started.classifier.batch_sizes) > 1

    def test_restarting_orthanc_mid_run_loses_no_job(worker):
        names = image_names()
        sent = [radiograph(names[i % len(names)], f"RESTART{i}") for i in range(10)]
        answers = [worker.upload(ds) for ds in sent]
        store = JobStore(worker.config)
        wait_until(lambda: any((r := store.get(f"orthanc:{a['ParentSeries']}")) and r.status != "pending"
                               for a in answers), 30)
        # Two more, not yet stable when Orthanc stops: found again when it starts.
        answers += [worker.upload(radiograph(names[i], f"LATE{i}")) for i in range(2)]
        worker.restart_orthanc()
        for answer in answers:
            record(worker, answer["ParentSeries"], "done", timeout=120)
            assert {m: len(v) for m, v in worker.outputs(answer["ParentStudy"]).items()} == {"OT": 1, "SR": 1}

    def test_ct_series_is_classified_as_a_projection(worker):
        slices = ct_series(slices=30, patient_id="CT1")
        answers = [worker.upload(ds) for ds in reversed(slices)]
        record(worker, answers[0]["ParentSeries"], "done")
        outputs = worker.outputs(answers[0]["ParentStudy"])
        assert {m: len(v) for m, v in outputs.items()} == {"OT": 1, "SR": 1}
        items = content_items(outputs["SR"][0].ContentSequence)
        texts = [item.TextValue for item in items if item.ValueType == "TEXT"]
        assert any("frontal mean projection of CT series (30 slices)" in text for text in texts)
        assert dciodvfy_errors(outputs["OT"][0]) == []

    def test_undecodable_pixels_fail_once_with_the_reason(worker):
        ds = radiograph("IM-0133-0001.jpeg", "BROKEN1")
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        answer = worker.upload(ds)
        failed = record(worker, answer["ParentSeries"], "failed")
        assert failed.attempts == 1 and failed.error
        assert status_metadata(worker, answer["ParentSeries"])["status"] == "failed"
        assert worker.outputs(answer["ParentStudy"]) == {}

    def test_truncated_native_and_jpeg_pixel_data_fail_with_the_reason_and_nothing_is_sent(worker, tmp_path):
        """Cut by a sender, well-formed otherwise: Orthanc stores them; the job fails, no SR, SC or
        ORU (the ORUs wait in the outbox, the HIS being down), while an intact series goes through."""
        hl7 = worker.config["hl7"]
        saved = dict(hl7)
        hl7.update(host="127.0.0.1", port=free_port())
        try:
            native = radiograph("IM-0115-0001.jpeg", "CUTNATIVE")
            jpeg = dcmtk("dcmcjpeg", save(radiograph("IM-0133-0001.jpeg", "CUTJPEG"), tmp_path / "j.dcm"),
                         tmp_path / "jpeg.dcm", "+eb")  # JPEG Baseline
            intact = radiograph("IM-0115-0001.jpeg", "INTACT1")
            worker.storescu(dcmread(pixel_data_cut(save(native, tmp_path / "n.dcm"), tmp_path / "n-cut.dcm")))
            cut = pixel_data_cut(jpeg, tmp_path / "j-cut.dcm")
            cut = worker.client.upload(cut.read_bytes())
            good = worker.upload(intact)
            native_series = wait_until(lambda: worker.series_id(native), 10)
            for series_id, reason in [(native_series, "pixel data truncated: "),
                                      (cut["ParentSeries"], "pixel data truncated: the JPEG Baseline")]:
                failed = record(worker, series_id, "failed")
                assert reason in failed.error and failed.attempts == 1
                assert worker.outputs(worker.client.series(series_id)["ParentStudy"]) == {}
            record(worker, good["ParentSeries"], "done")
            assert {m: len(v) for m, v in worker.outputs(good["ParentStudy"]).items()} == {"OT": 1, "SR": 1}
            oru_patients = {m.key for m in Outbox.from_config(worker.config).messages() if m.channel == "hl7"}
            assert "/INTACT1" in oru_patients and not {"/CUTJPEG", "/CUTNATIVE"} & oru_patients
        finally:
            hl7.update(saved)

    def _text_sr(patient_id: str) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.Modality, ds.ValueType = patient_id, "SR", "CONTAINER"
        return ds

    def test_non_chest_and_non_image_series_are_skipped_with_a_reason(harness):
        knee = radiograph("IM-0141-0001.jpeg", "KNEE1", body_part="KNEE")
        for ds, reason in [(knee, "body part KNEE is not the chest"),
                           (_text_sr("SR1"), "modality SR is not a chest radiograph or CT")]:
            answer = harness.upload(ds)
            skipped = record(harness, answer["ParentSeries"], "skipped", timeout=30)
            assert skipped.error == reason
            assert status_metadata(harness, answer["ParentSeries"])["error"] == reason
        assert re.fullmatch(r"\d{8}T\d{6}", status_metadata(harness, answer["ParentSeries"])["time"])
        assert harness.outputs(answer["ParentStudy"]) == {}

    def test_a_chest_series_whose_pixels_are_not_a_radiograph_is_skipped_by_the_gate(harness):
        """Mislabelled: the header says chest DX, the pixels are a scanned page."""
        import numpy as np
        from PIL import Image

        from ctai.inputs.wrap import PatientInfo, wrap_image
        from training.nonchest import text_page

        page = Image.fromarray(np.round(text_page(np.random.default_rng(4)) * 255).astype(np.uint8))
        ds = wrap_image(page, PatientInfo(id="PAGE1"), "page.png")
        ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
        answer = harness.upload(ds)
        skipped = record(harness, answer["ParentSeries"], "skipped", timeout=30)
        assert skipped.error.startswith("skipped: not a frontal chest radiograph (chest-image score")
        assert status_metadata(harness, answer["ParentSeries"])["error"] == skipped.error
        assert harness.outputs(answer["ParentStudy"]) == {}

    def test_orthanc_speaks_dicom_tls_from_ctais_configuration(tmp_path):
        from ctai import tls

        config = fast_config(tmp_path / "ctai-data")
        made = tls.init(config, ["localhost", "127.0.0.1"])
        config["orthanc"].update(http_port=free_port(), dicom_port=free_port(), tls_cert=str(made.server[0]),
                                 tls_key=str(made.server[1]), ca_file=str(made.ca))
        harness = Harness(config)
        harness.start_orthanc()
        try:
            path = save(radiograph("IM-0133-0001.jpeg", "TLS1"), tmp_path / "image.dcm")
            port = str(config["orthanc"]["dicom_port"])
            stored = subprocess.run(["storescu", "+tls", str(made.client[1]), str(made.client[0]), "+cf",
                                     str(made.ca), "-aec", "ORTHANC", "localhost", port, str(path)],
                                    capture_output=True, text=True, timeout=60)
            assert stored.returncode == 0, stored.stderr
            plain = subprocess.run(["storescu", "-aec", "ORTHANC", "localhost", port, str(path)],
                                   capture_output=True, text=True, timeout=60)
            assert plain.returncode != 0  # the port speaks TLS only
            stranger = tls.init({**config, "data": {"dir": str(tmp_path / "other")}}, ["localhost"])
            foreign = subprocess.run(["storescu", "+tls", str(stranger.client[1]), str(stranger.client[0]), "+cf",
                                      str(made.ca), "-aec", "ORTHANC", "localhost", port, str(path)],
                                     capture_output=True, text=True, timeout=60)
            assert foreign.returncode != 0  # a certificate another CA signed
            assert len(harness.client.get_json("/instances")) == 1
        finally:
            harness.close()
