"""The site's truth (``ctai.site.sources``) and what is made of it (``ctai.site.workflow``): CSVs
checked row by row before anything is stored, a RIS export matched against recorded results."""

from __future__ import annotations

import numpy as np
import pytest

from ctai.results import DONE, JobStore, Summary
from ctai.site import state, workflow
from ctai.site.sources import SourceError, load, read_csv
from ctai.types import CLASSES, Job
from tests.test_site_calibration import site


def write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("", "line 1 must be the header path,label or accession,label or study_uid,label"),
    ("file,diagnosis\na.png,normal\n", r"line 1 must be the header .*found file,diagnosis"),
    ("accession,label\n", "no rows after the header"),
    ("accession,label\nA1,normal\nA2\nA3,normal,extra\nA4,covid\n",
     r"3 bad row\(s\):\n  line 3: expected 2 values.*\n  line 4: expected 2 values.*\n  line 5: unknown label 'covid'"),
    ("path,label\nmissing.png,viral\n", r"line 2: no such file .*missing.png"),
])
def test_a_bad_csv_is_refused_naming_each_row(tmp_path, text, message):
    with pytest.raises(SourceError, match=message):
        read_csv(write(tmp_path / "truth.csv", text))


def test_a_source_that_is_not_there_is_named(config, tmp_path):
    with pytest.raises(SourceError, match=f"^{tmp_path / 'typo'}: no such folder or CSV file$"):
        load(tmp_path / "typo", config)


def test_a_file_that_fails_to_load_is_named_and_nothing_is_stored(config, tmp_path, capsys):
    (tmp_path / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    truth = write(tmp_path / "truth.csv", "path,label\nbroken.jpeg,normal\n")
    with pytest.raises(SourceError, match=r"(?s)1 file\(s\) could not be classified.*broken.jpeg: cannot decode"):
        workflow.calibrate(config, truth, "test")
    assert state.versions(config) == [] and state.active(config) is None


def record(store: JobStore, i: int, accession: str, probs, patient: str) -> None:
    probabilities = dict(zip(CLASSES, map(float, probs), strict=True))
    details = {"accession": accession, "study_uid": f"1.2.3.{i}", "modality": "DX" if i % 2 else "CR",
               "manufacturer": "Acme", "age": 3.0 + i % 10, "patient": patient, "calibration": None, "mode": "shadow",
               "model_probabilities": None}
    store.finish(Job(f"job-{i}", "dicom-listener"), "owner",
                 Summary(DONE, max(probabilities, key=probabilities.get), probabilities, None, details), 1.0)


@pytest.fixture
def recorded(config):
    """120 studies recorded in shadow mode at a site whose normals look less normal to the model."""
    y, probs, patients = site(n=120, normal_shift=-3.0, seed=5)
    store = JobStore(config)
    for i, (p, patient) in enumerate(zip(probs, patients, strict=True)):
        record(store, i, f"ACC{i}", p, patient)
    return y


def test_a_ris_export_is_matched_with_unmatched_and_duplicate_rows_reported(config, recorded, tmp_path):
    names = ("normal", "bacterial", "viral")
    rows = [f"ACC{i},{names[label]}" for i, label in enumerate(recorded[:10])]
    truth = write(tmp_path / "ris.csv", "accession,label\n" + "\n".join(
        [*rows, "ACC0," + names[recorded[0]], "NOT-HERE,normal", "ACC11,pneumonia"]) + "\n")
    cases, matching = load(truth, config)
    assert len(cases.y) == 11 and cases.y[-1] == 3  # ACC11's pneumonia of unstated kind
    assert matching.rows == 13
    assert matching.unmatched == ["line 13: accession NOT-HERE"]
    assert matching.duplicates == ["line 12: accession ACC0 repeats line 2"]
    assert cases.headers[1] == {"modality": "DX", "manufacturer": "Acme", "age": 4.0}
    conflicting = write(tmp_path / "bad.csv", "study_uid,label\n1.2.3.0,normal\n1.2.3.0,viral\n")
    with pytest.raises(SourceError, match="lines 2 and 3: study_uid 1.2.3.0 labelled differently"):
        load(conflicting, config)


def test_too_few_cases_refused_and_nothing_changes(config, recorded, tmp_path):
    truth = write(tmp_path / "ris.csv", "accession,label\n" + "\n".join(
        f"ACC{i},{('normal', 'bacterial', 'viral')[label]}" for i, label in enumerate(recorded[:20])) + "\n")
    with pytest.raises(workflow.Refused, match=r"too few labelled cases: \d+ normal and \d+ pneumonia; at least 30"):
        workflow.calibrate(config, truth, "test")
    assert state.versions(config) == []


def test_validate_then_calibrate_from_the_ris_export(config, recorded, tmp_path):
    truth = write(tmp_path / "ris.csv", "accession,label\n" + "\n".join(
        f"ACC{i},{('normal', 'bacterial', 'viral')[label]}" for i, label in enumerate(recorded)) + "\n")
    config["site"]["min_cases_per_class"] = 20
    printed = workflow.validate(config, truth, tmp_path / "report.html")
    assert "95 % interval" in printed and "confusion matrix" in printed
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "By modality" in page and "<script" not in page
    printed = workflow.calibrate(config, truth, "dr.ng")
    active = state.active(config)
    assert active is not None and active.id in printed and "before" in printed and "after" in printed
    assert active.model == state.configured_model(config) and sum(active.cases.values()) == 120
    assert active.expected["spec"] > 0.9 and np.isclose(sum(active.label_shares.values()), 1.0, atol=1e-3)
    assert state.history(config)[-1] == {**state.history(config)[-1], "who": "dr.ng", "calibration": active.id}
