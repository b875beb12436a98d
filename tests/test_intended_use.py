"""Intended-use rules from the header: each rule with crafted headers, and the reason in every path
(``classify --json``, the job record, the refusal label, the phone's sentence), withheld or flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from ctai import cli
from ctai.builtin import intended_use as plugin
from ctai.inputs.intended_use import OUTSIDE, IntendedUse, patient_age, reasons
from ctai.results import refusal_reason, summarize
from ctai.types import Failure, SourceImage
from ctai.web.messages import PHONE, for_phone
from tests import dicomfactory
from tests.test_sr import make_result

CHILDREN = IntendedUse(1, 5)


def header(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("age", "years", "reading"), [
    ("054Y", 54.0, "54 years"), ("003Y", 3.0, "3 years"), ("018M", 1.5, "18 months"),
    ("008M", 0.667, "8 months"), ("010W", 0.192, "10 weeks"), ("020D", 0.055, "20 days"),
])
def test_patients_age_in_each_unit(age, years, reading):
    assert patient_age(header(PatientAge=age)) == (years, reading)


@pytest.mark.parametrize(("birth", "dates", "expected"), [
    ("20210305", {"StudyDate": "20240305"}, (3.0, "3 years")),
    ("20230601", {"AcquisitionDate": "20240301"}, (0.75, "9 months")),
    ("19700101", {"StudyDate": "20240101", "ContentDate": "20000101"}, (54.0, "54 years")),
])
def test_birth_date_against_the_images_date_when_no_age(birth, dates, expected):
    assert patient_age(header(PatientBirthDate=birth, **dates)) == expected


@pytest.mark.parametrize("attributes", [
    {}, {"PatientAge": ""}, {"PatientAge": "54"}, {"PatientAge": "abcY"}, {"PatientAge": "054X"},
    {"PatientBirthDate": "19700101"}, {"PatientBirthDate": "not a date", "StudyDate": "20240101"},
    {"PatientBirthDate": "20250101", "StudyDate": "20240101"},  # born after the study
])
def test_a_missing_or_malformed_age_says_nothing(attributes):
    assert patient_age(header(**attributes)) is None
    assert reasons(header(**attributes), CHILDREN) == []


@pytest.mark.parametrize(("age", "outside"), [
    ("000Y", True), ("011M", True), ("012M", False), ("001Y", False), ("005Y", False), ("071M", False),
    ("006Y", True), ("054Y", True), ("090Y", True),
])
def test_ages_outside_one_to_five_completed_years(age, outside):
    assert bool(reasons(header(PatientAge=age), CHILDREN)) is outside


def test_the_reason_names_the_rule_the_age_and_the_population():
    (reason,) = reasons(header(PatientAge="054Y"), CHILDREN)
    assert reason == "outside intended use: patient age 54 years; this model was trained on children aged 1-5 years"


@pytest.mark.parametrize(("view", "kind"), [("LL", "lateral"), ("RL", "lateral"), ("LATERAL", "lateral"),
                                            ("LLD", "decubitus"), ("RLO", "oblique")])
def test_views_that_are_not_frontal(view, kind):
    (reason,) = reasons(header(ViewPosition=view), CHILDREN)
    assert reason.startswith(f"{OUTSIDE}: a {kind} view (View Position {view})")


@pytest.mark.parametrize("view", ["PA", "AP", "", "pa"])
def test_frontal_or_unstated_views_pass(view):
    assert reasons(header(ViewPosition=view, PatientAge="003Y"), CHILDREN) == []


def test_every_rule_that_applies_is_named():
    assert len(reasons(header(ViewPosition="LL", PatientAge="040Y"), CHILDREN)) == 2


def test_intended_ages_must_be_a_range():
    with pytest.raises(ValueError, match="intended ages"):
        IntendedUse(5, 1)


def source(**attributes: object) -> SourceImage:
    ds = dicomfactory.dataset(dicomfactory.picture(), modality="DX", **attributes)
    return SourceImage("adult.dcm", ds, dicomfactory.picture() / 255.0)


def test_the_plugin_reads_the_shipped_models_range(config):
    assert plugin.ctai_skip_reason(image=source(PatientAge="054Y"), config=config).endswith("children aged 1-5 years")
    assert plugin.ctai_skip_reason(image=source(PatientAge="004Y"), config=config) is None
    config["inputs"]["intended_ages"] = [18, 120]
    assert plugin.ctai_skip_reason(image=source(PatientAge="054Y"), config=config) is None
    assert "adults" not in plugin.ctai_skip_reason(image=source(PatientAge="004Y"), config=config)


def test_flag_mode_classifies_and_flags_instead(config):
    config["inputs"]["intended_use"] = "flag"
    image = source(PatientAge="054Y", ViewPosition="LL")
    assert plugin.ctai_skip_reason(image=image, config=config) is None
    result = make_result()
    result.source = image
    flags = plugin.ctai_flags(result=result, config=config)
    assert [f.code for f in flags] == ["intended-use", "intended-use"] and not any(f.withhold for f in flags)


def test_off_checks_nothing(config):
    config["inputs"]["intended_use"] = "off"
    assert plugin.ctai_skip_reason(image=source(PatientAge="054Y"), config=config) is None
    assert plugin.ctai_flags(result=make_result(), config=config) is None


def test_the_reason_in_every_path():
    failure = Failure("adult.dcm", "skipped: " + reasons(header(PatientAge="054Y"), CHILDREN)[0])
    summary = summarize([], [failure])
    assert summary.status == "skipped" and "patient age 54 years" in summary.error
    assert refusal_reason(failure.reason) == "intended_use"
    assert for_phone(failure.reason) == PHONE["intended_use"]


def test_classify_json_withholds_an_adult_before_the_gate(tmp_path: Path, capsys):
    """An adult's film is withheld for its age even when the gate would refuse its looks: the
    reason is the intended use, never "not a chest radiograph"."""
    noise = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)  # the gate refuses this
    path = dicomfactory.save(dicomfactory.dataset(noise, modality="DX", PatientAge="061Y"), tmp_path / "adult.dcm")
    assert cli.main(["classify", "--json", str(path)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["error"] == ("skipped: outside intended use: patient age 61 years; "
                                         "this model was trained on children aged 1-5 years")
