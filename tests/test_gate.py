"""The input gate: what is not a frontal chest radiograph is refused with a reason, in every path,
and nothing crashes it."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctai.inputs.images import read_gray
from ctai.model.gate import NOT_A_CHEST, ChestGate, rule_refusal, shipped_gate_dir
from tests.conftest import IMAGES
from training import nonchest, shifts


@pytest.fixture(scope="module")
def gate() -> ChestGate:
    return ChestGate(shipped_gate_dir())


@pytest.fixture(scope="module")
def threshold() -> float:
    from ctai import config

    return float(config.load(environ={})["inputs"]["gate_threshold"])


CHESTS = sorted(IMAGES.glob("*.jpeg"))


@pytest.mark.parametrize("pixels", [
    np.zeros((300, 300)), np.ones((300, 300)), np.full((300, 300), 0.5),  # blank, any grey
    np.full((300, 300), np.nan), np.zeros((1, 500)), np.zeros((500, 1)), np.zeros((2, 2)),
    np.random.default_rng(0).random((40, 400)),  # a strip
], ids=["black", "white", "grey", "nan", "row", "column", "2x2", "strip"])
def test_degenerate_pixels_are_refused_by_rule(gate, threshold, pixels):
    [reason] = gate.refusals([pixels.astype(np.float32)], threshold)
    assert reason and reason.startswith(NOT_A_CHEST)
    assert rule_refusal(pixels) == reason


def test_a_huge_image_is_judged_without_error(gate, threshold):
    gate.refusals([np.random.default_rng(0).random((4000, 3000), dtype=np.float32)], threshold)


def test_chest_radiographs_pass_plain_shifted_and_photographed(gate, threshold):
    images = [read_gray(p) for p in CHESTS]
    variants = images + [shifts.photo(im, seed=i) for i, im in enumerate(images)] + \
        [shifts.gamma(im, 1.3) for im in images] + [shifts.zoom(im, 0.9) for im in images]
    scores = gate.scores(variants)
    assert (scores >= threshold).mean() >= 0.95, scores.round(2)


def test_rendered_non_chest_images_are_refused(gate, threshold):
    images = [image for category, image in nonchest.corpus("held-out", 3) if category != "scan"]
    refused = [reason is not None for reason in gate.refusals(images, threshold)]
    assert np.mean(refused) >= 0.9


def test_the_refusal_says_why(gate, threshold):
    page = nonchest.text_page(np.random.default_rng(5))
    [reason] = gate.refusals([page], threshold)
    assert reason.startswith(f"{NOT_A_CHEST} (chest-image score ") and f"below {threshold:.2f}" in reason


def _png(pixels: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)
    return path


def test_classify_json_reports_the_refusal_and_the_off_switch_lets_it_through(tmp_path, capsys, monkeypatch):
    from ctai.cli import main

    page = _png(nonchest.text_page(np.random.default_rng(5)), tmp_path / "page.png")
    blank = _png(np.ones((300, 300)), tmp_path / "blank.png")
    monkeypatch.setenv("CTAI_DATA__DIR", str(tmp_path / "data"))
    main(["classify", "--json", str(page), str(blank), str(CHESTS[0])])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by_path = {Path(line["path"]).name: line for line in lines}
    assert by_path["page.png"]["error"].startswith(f"skipped: {NOT_A_CHEST} (chest-image score")
    assert by_path["blank.png"]["error"] == f"skipped: {NOT_A_CHEST} (a blank image of one flat value)"
    assert "error" not in by_path[CHESTS[0].name]

    monkeypatch.setenv("CTAI_INPUTS__GATE", "false")
    main(["classify", "--json", str(page)])
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert "error" not in line and "probabilities" in line


def test_wrapped_pictures_claim_no_body_part(tmp_path):
    from ctai.inputs import load

    [source] = load(_png(nonchest.chart(np.random.default_rng(1)), tmp_path / "chart.png"))
    assert "BodyPartExamined" not in source.dataset


def test_the_plugin_judges_pictures_not_ct_projections(config):
    from pydicom import Dataset

    from ctai.builtin.gate import ctai_skip_reasons
    from ctai.types import SourceImage

    blank = np.zeros((256, 256), np.float32)
    projection = SourceImage("ct/", Dataset(), blank, derivation="frontal mean projection of CT series")
    reasons = ctai_skip_reasons([projection, SourceImage("a.png", Dataset(), blank), projection], config)
    assert reasons[0] is None and reasons[1].startswith(NOT_A_CHEST) and reasons[2] is None
    assert ctai_skip_reasons([projection], config) is None
    config["inputs"]["gate"] = False
    assert ctai_skip_reasons([SourceImage("a.png", Dataset(), blank)], config) is None


def test_a_batch_is_judged_as_each_image_alone(gate, threshold):
    """One network call for a batch refuses what one call per image would, with the same scores."""
    images = [read_gray(p) for p in CHESTS[:3]] + [nonchest.text_page(np.random.default_rng(5)), np.zeros((9, 9))]
    assert gate.refusals(images, threshold) == [gate.refusals([image], threshold)[0] for image in images]


def test_dicom_encodings_of_chest_radiographs_pass(gate, threshold, tmp_path):
    """MONOCHROME1 and 12-bit MONOCHROME2 instances of the committed radiographs, read the way
    the service reads them, pass as their JPEG originals do."""
    from ctai.inputs import load
    from tests.dicomfactory import dataset, picture, save

    pixels = []
    for i, path in enumerate(CHESTS):
        gray = picture(path).astype(np.uint16)
        inverted = save(dataset(255 - gray, "MONOCHROME1"), tmp_path / f"m1-{i}.dcm")
        twelve_bit = save(dataset(gray * 16, bits_stored=12), tmp_path / f"m2-{i}.dcm")
        pixels += [source.pixels for file in (inverted, twelve_bit) for source in load(file)]
    assert (gate.scores(pixels) >= threshold).mean() >= 0.95


EXTERNAL = Path(__file__).parent / "data" / "external"


def test_real_images_of_other_sources_fall_on_the_right_side(gate, threshold):
    """Held-out real images (``tests/data/external/README.md``): adult frontal chest films from
    NIH, Shenzhen and a CR sample pass; a lower-leg radiograph and an axial CT slice are refused."""
    films, others = sorted(EXTERNAL.glob("chest-*.jpg")), sorted(EXTERNAL.glob("other-*.jpg"))
    assert len(films) == 5 and len(others) == 2
    film_reasons = gate.refusals([read_gray(p) for p in films], threshold)
    other_reasons = gate.refusals([read_gray(p) for p in others], threshold)
    assert [p.name for p, reason in zip(films, film_reasons, strict=True) if reason] == []
    assert [p.name for p, reason in zip(others, other_reasons, strict=True) if reason is None] == []
