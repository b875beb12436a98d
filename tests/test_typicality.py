"""The typicality score and its flag: the reference's arithmetic, the plugin's decision, every
output carrying a flag, and images of every odd kind scored without a crash by the shipped model."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from io import BytesIO

import numpy as np
import pytest
from hl7apy.parser import parse_message
from PIL import Image

from ctai import hookimpl
from ctai.builtin import typicality as plugin
from ctai.cli import _outcome_json
from ctai.model.typicality import ATYPICAL, Reference, fit
from ctai.outputs import fhir, hl7, picture, sr
from ctai.pipeline import Pipeline
from ctai.plugins import plugin_manager
from ctai.results import refusal_reason, summarize
from ctai.types import Flag, Job, SourceImage
from ctai.web.messages import PHONE, for_phone
from tests.conftest import requires_model
from tests.dciodvfy import errors
from tests.test_sr import make_result

FLAG = Flag("atypical", f"{ATYPICAL} (typicality score 2.4, above 1): unlike the films this model was trained on")


def population(seed: int, n: int = 400, d: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.linspace(3, 0.5, d) + 7


def test_the_limit_flags_the_chosen_share_of_validation():
    reference = fit(population(0), population(1), blocks=2, shrinkage=0.05, flag_rate=0.05)
    assert np.mean(reference.scores(population(1)) > 1) == pytest.approx(0.05, abs=0.01)
    assert np.mean(reference.scores(population(2)) > 1) < 0.15  # the same population: few
    assert np.mean(reference.scores(population(3) * 1.5) > 1) > 0.9  # another: most


def test_scores_are_deterministic_and_per_row():
    reference = fit(population(0), population(1), blocks=2, shrinkage=0.05, flag_rate=0.05)
    rows = population(4, n=6)
    np.testing.assert_array_equal(reference.scores(rows), reference.scores(rows))
    np.testing.assert_allclose(reference.scores(rows)[2:3], reference.scores(rows[2:3]), rtol=1e-6)


def test_not_finite_features_are_infinitely_far():
    reference = fit(population(0), population(1), blocks=2, shrinkage=0.05, flag_rate=0.05)
    rows = population(5, n=3)
    rows[0, 3], rows[1, 0] = np.nan, np.inf
    scores = reference.scores(rows)
    assert np.isinf(scores[:2]).all() and np.isfinite(scores[2])


def test_the_reference_saves_and_loads(tmp_path):
    reference = fit(population(0), population(1), blocks=2, shrinkage=0.05, flag_rate=0.05)
    reference.save(tmp_path)
    loaded = Reference.load(tmp_path)
    np.testing.assert_allclose(loaded.scores(population(2)), reference.scores(population(2)), rtol=1e-6)
    assert Reference.load(tmp_path / "elsewhere") is None


def test_a_malformed_reference_is_refused():
    with pytest.raises(ValueError, match="typicality reference"):
        Reference(np.zeros(3), np.zeros((2, 4, 4)), 1.0, 0.02)


def scored(score: float | None):
    result = make_result()
    result.prediction = dataclasses.replace(result.prediction, typicality=score)
    return result


@pytest.mark.parametrize(("action", "score", "expected"), [
    ("flag", 0.7, None), ("flag", None, None), ("off", 3.0, None),
    ("flag", 1.3, [False]), ("withhold", 1.3, [True]),
])
def test_the_plugin_flags_or_withholds_above_one(config, action, score, expected):
    config["inputs"]["atypical"] = action
    flags = plugin.ctai_flags(result=scored(score), config=config)
    assert (None if flags is None else [f.withhold for f in flags]) == expected
    if flags:
        assert flags[0].code == "atypical" and flags[0].reason.startswith(f"{ATYPICAL} (typicality score 1.3")


def test_a_withheld_result_reads_as_such_everywhere():
    reason = f"skipped: {FLAG.reason}"
    assert refusal_reason(reason) == "atypical"
    assert for_phone(reason) == PHONE["atypical"]


def flagged():
    result = make_result()
    result.flags = [FLAG]
    return result


def test_the_sr_says_so_and_stays_valid():
    dataset = sr.build_sr(flagged(), 9901)
    texts = [item.TextValue for container in dataset.ContentSequence if container.ValueType == "CONTAINER"
             for item in container.get("ContentSequence", []) if item.ValueType == "TEXT"]
    assert f"Caution (atypical): {FLAG.reason}" in texts
    assert errors(dataset) == []


def test_the_oru_carries_each_flag(config):
    text = hl7.build_oru(flagged(), config["hl7"], "CTRL1", make_result().prediction.started).to_er7()
    message = parse_message(text, find_groups=True)
    rows = [(group.OBX.obx_3.to_er7(), group.OBX.obx_5.to_er7())
            for group in message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.ORU_R01_OBSERVATION]
    assert ("CTAI-FLAG-ATYPICAL^Caution: atypical^99CTAI", hl7.escape(FLAG.reason)) in rows


def test_the_fhir_finding_carries_a_note():
    bundle = fhir.build_bundle(flagged(), "urn:test:1", datetime(2026, 12, 5, 9, 0, tzinfo=UTC))
    notes = [note.text for entry in bundle.entry if entry.resource.__resource_type__ == "Observation"
             for note in entry.resource.note or []]
    assert notes == [f"Caution (atypical): {FLAG.reason}"]


def test_the_picture_and_json_show_it():
    assert picture.notice(flagged()).startswith(f"Caution: {FLAG.reason}.")
    assert picture.notice(make_result()) == picture.NOTICE
    drawn = picture.render_picture(flagged())
    assert np.asarray(drawn).std() > 0
    row = _outcome_json(flagged())
    assert row["flags"] == [{"code": "atypical", "reason": FLAG.reason}]


class Flagger:
    """A plugin flagging every result, withholding the second image."""

    @hookimpl
    def ctai_flags(self, result, config):
        return [Flag("test", "a test flag", withhold=result.source.path == "second")]


@requires_model
def test_the_pipeline_gathers_flags_and_withholds(config):
    pm = plugin_manager(config)
    pm.register(Flagger())
    config["inputs"]["gate"] = False
    base = make_result().source
    sources = [dataclasses.replace(base, path=name) for name in ("first", "second")]
    first, second = Pipeline(config, pm).run(Job("j", "test", {"outputs": False}), sources)
    assert [f.code for f in first.flags] == ["test"], first
    assert second.reason == "skipped: a test flag"
    assert summarize([first], [second]).details["flags"] == [{"code": "test", "reason": "a test flag"}]


def odd(pixels: np.ndarray) -> SourceImage:
    return dataclasses.replace(make_result().source, pixels=pixels)


@requires_model
def test_odd_images_get_a_finite_score_and_the_committed_films_none_above_one(pipeline):
    """Tiny, huge, constant and extreme images are scored without a crash; the committed
    Kermany films (of the training hospital) are typical."""
    rng = np.random.default_rng(0)
    images = [odd(np.full((2, 2), 0.5, np.float32)), odd(rng.random((4000, 3000), dtype=np.float32)),
              odd(np.zeros((300, 300), np.float32)), odd(np.tile(np.float32([0, 1]), (256, 128)))]
    predictions = pipeline.classify(images)
    assert all(p.typicality is not None and np.isfinite(p.typicality) for p in predictions)
    committed = [make_result().source]
    assert all(p.typicality <= 1 for p in pipeline.classify(committed))


def test_the_picture_of_a_flagged_result_is_a_png():
    buffer = BytesIO()
    picture.render_picture(flagged()).save(buffer, "PNG")
    assert Image.open(buffer).size[0] > 0


@requires_model
def test_adult_films_of_other_hospitals_are_atypical_and_the_training_hospitals_are_not(pipeline):
    """Real films (tests/data/external, with their sources and licences): three adults of NIH
    ChestX-ray14 lie beyond the limit; the committed Kermany films well within it."""
    from ctai.inputs import load_files
    from tests.conftest import DATA, IMAGES

    adults = sorted((DATA / "external").glob("chest-nih-*.jpg"))
    children = sorted(IMAGES.glob("*.jpeg"))
    scores = [p.typicality for p in pipeline.classify(list(load_files([*adults, *children])))]
    assert len(adults) == 3 and all(score > 1.05 for score in scores[:3]), scores
    assert all(score < 0.95 for score in scores[3:]), scores


def test_ctai_jobs_shows_a_flagged_jobs_flags():
    from ctai.cli import _job_line
    from ctai.results import JobRecord

    record = JobRecord("job-1", "upload", "done", "viral", {"normal": 0.1, "bacterial": 0.2, "viral": 0.7}, 1.0,
                       None, 1.0, 1.0, 2.0, 1, None, {},
                       details={"flags": [{"code": "atypical", "reason": FLAG.reason}]})
    assert _job_line(record).endswith(f"[{FLAG.reason}]")
