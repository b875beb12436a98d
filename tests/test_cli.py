"""`ctai classify` and `ctai evaluate` end to end, with the shipped model and real files."""

import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from ctai.cli import main
from ctai.types import CLASSES
from tests.conftest import IMAGES, requires_model
from tests.dciodvfy import errors as dciodvfy_errors

pytestmark = requires_model

NORMAL = IMAGES / "IM-0115-0001.jpeg"
BACTERIAL = IMAGES / "person1000_bacteria_2931.jpeg"
VIRAL = IMAGES / "person1000_virus_1681.jpeg"
RESULT_KEYS = {"path", "label", "probabilities", "model", "calibration", "typicality", "flags"}


def classify_json(capsys, *args: str) -> tuple[int, list[dict]]:
    code = main(["classify", "--json", *args])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def test_json_lines_exactly(capsys):
    code, rows = classify_json(capsys, str(NORMAL), str(BACTERIAL))
    assert code == 0
    assert [r["path"] for r in rows] == [str(NORMAL), str(BACTERIAL)]
    for row in rows:
        assert set(row) == RESULT_KEYS
        assert row["calibration"] == {"site": None}  # the model's own: no site calibration here
        assert set(row["probabilities"]) == set(CLASSES)
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-6
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert set(row["model"]) == {"name", "version"}


def test_bad_input_is_one_error_line_and_the_others_go_through(capsys, tmp_path: Path):
    text = tmp_path / "notes.dcm"
    text.write_text("this is not DICOM\n")
    code, rows = classify_json(capsys, str(text), str(NORMAL), str(tmp_path / "missing.png"))
    assert code == 1
    assert [set(r) for r in rows] == [{"path", "error"}, RESULT_KEYS, {"path", "error"}]
    assert rows[0]["path"] == str(text)


def test_folders_are_read_recursively(capsys, tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(NORMAL, tmp_path / "a" / "n.jpeg")
    shutil.copy(VIRAL, tmp_path / "a" / "b" / "v.jpeg")
    code, rows = classify_json(capsys, str(tmp_path))
    assert code == 0 and len(rows) == 2


def test_out_that_cannot_be_a_folder_is_refused_before_any_work(capsys, tmp_path: Path):
    (tmp_path / "results").write_text("a file")
    assert main(["classify", "--out", str(tmp_path / "results"), str(NORMAL)]) == 2
    assert capsys.readouterr() == ("", f"ctai classify: --out {tmp_path / 'results'}: cannot be a folder of results "
                                       "(File exists)\n")


def test_patient_details_dicom_cannot_hold_are_refused(capsys):
    too_long = "A" * 17
    assert main(["classify", "--accession", too_long, str(NORMAL)]) == 2
    assert capsys.readouterr().err == f"ctai classify: patient accession '{too_long}' is longer than 16 characters" \
                                      " (DICOM)\n"
    assert main(["classify", "--patient-id", "P\\1", str(NORMAL)]) == 2
    assert "holds a backslash or a control character" in capsys.readouterr().err


def test_a_folder_without_files_is_an_error_line(capsys, tmp_path: Path):
    """Not silence and success: a mistyped or unmounted folder is said to be empty."""
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    code, rows = classify_json(capsys, str(tmp_path / "empty"), str(NORMAL))
    assert code == 1
    assert rows[0] == {"path": str(tmp_path / "empty"),
                       "error": "a folder without files to classify (hidden ones are left out)"}
    assert set(rows[1]) == RESULT_KEYS


def test_classify_keeps_the_start_up_out_of_the_collector_while_it_runs(capsys, monkeypatch):
    from ctai.pipeline import Pipeline

    process, frozen = Pipeline.process, []

    def recording(self, job, sources):
        frozen.append(gc.get_freeze_count())
        yield from process(self, job, sources)

    monkeypatch.setattr(Pipeline, "process", recording)
    assert classify_json(capsys, str(NORMAL))[0] == 0
    assert frozen[0] > 0 and gc.get_freeze_count() == 0  # thawed again: the caller's objects are its own


def test_readable_table(capsys):
    assert main(["classify", str(NORMAL)]) == 0
    out = capsys.readouterr().out
    assert str(NORMAL) in out and "normal" in out and "%" in out


def test_out_writes_valid_sr_and_sc_with_the_same_probabilities(capsys, tmp_path: Path):
    code, [row] = classify_json(capsys, "--out", str(tmp_path), "--patient-id", "P1",
                                "--patient-name", "Doe^Jane", str(BACTERIAL))
    assert code == 0
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 2
    for file in files:
        assert dciodvfy_errors(pydicom.dcmread(file)) == []
    sr_file = next(f for f in files if f.name.startswith("sr"))
    sr, sc = pydicom.dcmread(sr_file), pydicom.dcmread(next(f for f in files if f.name.startswith("sc")))
    assert sr.PatientID == sc.PatientID == "P1"
    assert sr.StudyInstanceUID == sc.StudyInstanceUID
    assert read_probabilities(sr_file) == pytest.approx(row["probabilities"], abs=1e-9)


def read_probabilities(path: Path) -> dict[str, float]:
    """Each class's probability from the SR's TID 1500 measurement groups."""
    from ctai.outputs.codes import FINDINGS, PROBABILITY

    report = hd.sr.srread(path).content
    found = {}
    for name, finding in FINDINGS.items():
        [group] = report.get_image_measurement_groups(finding_type=finding)
        [measurement] = group.get_measurements(name=PROBABILITY)
        found[name] = float(measurement.value)
    return found


def test_same_answer_whatever_the_container(capsys, tmp_path: Path):
    """The picture as JPEG file, and as DICOM in lossless encodings: probabilities within 0.01."""
    from tests.dicomfactory import lossless_variants

    code, [reference] = classify_json(capsys, str(BACTERIAL))
    variants = lossless_variants(BACTERIAL, tmp_path)
    code, rows = classify_json(capsys, *map(str, variants))
    assert code == 0
    for row in rows:
        for c in CLASSES:
            assert abs(row["probabilities"][c] - reference["probabilities"][c]) < 0.01, row["path"]


def test_lossy_jpeg_q95_gives_the_same_label(capsys, tmp_path: Path):
    from PIL import Image

    for source in (NORMAL, BACTERIAL, VIRAL):
        lossy = tmp_path / f"{source.stem}-q95.jpg"
        Image.open(source).save(lossy, quality=95)
        _, [a, b] = classify_json(capsys, str(source), str(lossy))
        assert a["label"] == b["label"]


def test_shipped_model_labels_committed_samples(capsys):
    """One validation-split image per class that the shipped model gets right (see tests/data)."""
    _, rows = classify_json(capsys, str(NORMAL), str(BACTERIAL), str(VIRAL))
    assert [r["label"] for r in rows] == ["normal", "bacterial", "viral"]


def test_evaluate_prints_every_metric(capsys, tmp_path: Path):
    from tests.test_training import kermany_layout

    folder = kermany_layout(tmp_path)
    assert main(["evaluate", "--json", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 9
    for key in ("accuracy", "balanced_accuracy", "confusion_matrix", "per_class", "pneumonia_vs_normal",
                "bacterial_vs_viral", "expected_calibration_error", "intervals"):
        assert key in report
    assert main(["evaluate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "balanced accuracy" in out and "95 % intervals (bootstrap over patients)" in out


def test_evaluate_says_why_a_folder_cannot_be_evaluated(capsys, tmp_path: Path):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"ctai evaluate: {tmp_path}: no images found (expected NORMAL/ and PNEUMONIA/" \
                                      " folders)\n"
    (tmp_path / "PNEUMONIA").mkdir()
    shutil.copy(NORMAL, tmp_path / "PNEUMONIA" / "unnamed.jpeg")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "unnamed.jpeg: cannot tell the class from folder and name" in capsys.readouterr().err


def test_stdout_holds_only_json_lines(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "ctai.cli", "classify", "--json", str(NORMAL)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert json.loads(line)["path"] == str(NORMAL)


def test_only_an_explicit_deliver_sends_anything(capsys, tmp_path: Path, monkeypatch):
    """With a site configuration naming a PACS and a HIS, `classify` and `evaluate` queue
    nothing unless `classify --deliver` is given."""
    from ctai import config as configuration
    from ctai.outbox import Outbox
    from tests.test_training import kermany_layout

    site = {"CTAI_DATA__DIR": str(tmp_path / "data"), "CTAI_CSTORE__HOST": "127.0.0.1",
            "CTAI_CSTORE__PORT": "11113", "CTAI_HL7__HOST": "127.0.0.1", "CTAI_HL7__PORT": "2576"}
    for key, value in site.items():
        monkeypatch.setenv(key, value)
    outbox = Outbox.from_config(configuration.load(environ=site))
    assert main(["classify", "--patient-id", "P1", str(NORMAL)]) == 0
    assert main(["evaluate", str(kermany_layout(tmp_path / "set"))]) == 0
    assert outbox.messages() == []
    capsys.readouterr()
    assert main(["classify", "--deliver", "--patient-id", "P1", str(NORMAL)]) == 1  # nobody listens there
    assert {(m.channel, m.state) for m in outbox.messages()} == {("cstore", "pending"), ("hl7", "pending")}
    errors = capsys.readouterr().err
    assert "ctai classify: not delivered: #" in errors and "ConnectionRefusedError" in errors
    assert "`ctai serve` or `ctai outbox --send` sends them" in errors


def test_deliver_sends_at_once_and_says_when_there_is_nowhere_to_send(capsys, tmp_path: Path, monkeypatch):
    """`classify --deliver` sends what it queued before it ends (an HL7 receiver acknowledges it
    with AA); with no destination configured it says so."""
    from tests.peers import HIS, free_port

    his = HIS(free_port()).start()
    try:
        monkeypatch.setenv("CTAI_DATA__DIR", str(tmp_path / "data"))
        assert main(["classify", "--deliver", "--patient-id", "P1", str(NORMAL)]) == 0
        assert "nothing was queued: no destination is configured" in capsys.readouterr().err
        monkeypatch.setenv("CTAI_HL7__HOST", "127.0.0.1")
        monkeypatch.setenv("CTAI_HL7__PORT", str(his.port))
        assert main(["classify", "--deliver", "--patient-id", "P1", str(NORMAL)]) == 0
        assert "ctai classify: hl7: 1 delivered" in capsys.readouterr().err
        assert len(his.accepted) == 1
    finally:
        his.stop()


@pytest.mark.parametrize("command", [["classify", str(NORMAL)], ["jobs"], ["outbox"], ["audit"], ["site", "status"],
                                     ["tls", "init"], ["prepare"]])
def test_a_data_dir_that_cannot_be_made_is_one_line(command, capsys, tmp_path: Path, monkeypatch):
    """Each command that keeps state says so before it starts (they were tracebacks, and
    `classify` fell back to Keras for want of a folder for the converted networks); `ctai
    config` still shows the setting."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CTAI_DATA__DIR", str(tmp_path / "file"))
    assert main(command) == 2
    assert capsys.readouterr().err == (f"ctai: [data] dir {tmp_path / 'file'}: cannot be ctai's data folder "
                                       "(a file of that name is there)\n")
    monkeypatch.setenv("CTAI_DATA__DIR", str(tmp_path / "file" / "below"))
    assert main(command) == 2
    assert "(Not a directory)" in capsys.readouterr().err
    assert main(["config"]) == 0
    assert str(tmp_path / "file") in capsys.readouterr().out
