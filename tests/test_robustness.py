"""The shift transforms, training augmentation, the leave-source-out split, and a smoke run of
the shift benchmark on the committed images."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctai.inputs.images import read_gray
from ctai.labelled_folder import Sample
from ctai.model.preprocess import BLANK_RANGE, MAX_TRIM, content_box, to_model_input, trim_blank_margins
from tests.conftest import IMAGES, kermany_layout, requires_model
from training import augment, data, shifts

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return read_gray(IMAGES / "IM-0115-0001.jpeg")


@pytest.mark.parametrize("shift", shifts.suite(), ids=lambda s: f"{s.name}-{s.strength}")
def test_each_shift_gives_a_valid_image_of_the_same_size(shift, image):
    for source in (image, image[:, 20:]):  # square and not
        out = shift.apply(source)
        assert out.shape == source.shape
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_shifts_change_the_image_and_none_does_not(image):
    for shift in shifts.suite():
        changed = not np.allclose(shift.apply(image), image, atol=1e-6)
        assert changed == (shift.name != "none"), shift


@pytest.mark.parametrize("recipe", [augment.Recipe(), augment.Recipe((0.35, 1.0), True),
                                    augment.Recipe((0.25, 1.0), True, (0.6, 1.67), mixup=0.2),
                                    augment.Recipe((0.35, 1.0), True, corners=True),
                                    augment.Recipe((0.35, 1.0), True, corners=True, field=True)])
def test_augmentation_is_deterministic_under_a_seed(recipe):
    raw = data.load_raw([Sample(p, 0, p.stem) for p in sorted(IMAGES.glob("*.jpeg"))])
    labels = np.arange(len(raw)) % 3

    def batch(seed: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batches = augment.Batches(raw, labels, 4, 64, recipe, seed, class_weight=np.array([1.0, 2.0, 3.0]))
        for _ in range(epoch):
            batches.on_epoch_end()
        return batches[1]

    x, targets, weights = batch(5)
    assert x.shape == (4, 64, 64, 1) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert weights.min() >= 1.0 and weights.max() <= 3.0
    for expected, got in zip(batch(5), (x, targets, weights), strict=True):
        np.testing.assert_array_equal(expected, got)
    assert not np.array_equal(x, batch(6)[0])
    assert not np.array_equal(x, batch(5, epoch=1)[0])


def test_augmented_images_stay_in_range(image):
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment.augment(image, rng, augment.Recipe((0.35, 1.0), True))
        assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0


def test_corners_recipe_keeps_the_black_corners_of_a_tilt(image):
    def black_corner_pixels(corners: bool) -> int:
        rng = np.random.default_rng(1)
        outs = [augment.augment(image, rng, augment.Recipe((0.35, 1.0), corners=corners)) for _ in range(10)]
        return sum(int((out[:8, :8] == 0).sum() + (out[-8:, -8:] == 0).sum()) for out in outs)

    assert black_corner_pixels(True) > 2 * black_corner_pixels(False)


def test_field_brightens_the_middle_against_the_edges(image):
    out = shifts.field(image, 0.3, 0.3)
    assert out.shape == image.shape and out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    middle, edge = (slice(96, 128), slice(96, 128)), (slice(0, 32), slice(0, 32))
    assert out[middle].mean() / image[middle].mean() > 1.2 > 1.1 > out[edge].mean() / image[edge].mean()
    assert shifts.field(image, -0.3, 0.3)[middle].mean() < 0.75 * image[middle].mean()


def test_equalisation_removes_an_exposure_change(image):
    flat = augment.equalize(image)
    assert flat.shape == image.shape and flat.min() >= 0.0 and flat.max() <= 1.0
    # A monotone change of exposure keeps the order of the pixel values, so the equalised image
    # is the same up to the 8-bit quantisation of the two.
    assert np.abs(augment.equalize(shifts.gamma(image, 0.6)) - flat).mean() < 0.02


def test_held_out_source_is_in_neither_split(tmp_path: Path):
    root = kermany_layout(tmp_path)
    train, val, held_out = data.load(root, 0.4, 1, "NORMAL/IM-*")
    assert {s.path.name for s in held_out} == {p.name for p in IMAGES.glob("IM-*")}
    assert not {s.path for s in held_out} & {s.path for s in train + val}
    assert len(train) + len(val) + len(held_out) == len(list(IMAGES.glob("*.jpeg")))


@requires_model
def test_benchmark_smoke_run(tmp_path: Path):
    out = tmp_path / "shift.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--data",
                          str(kermany_layout(tmp_path / "data")), "--all", "--json", str(out),
                          "--member-logits", str(tmp_path / "logits.npz")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "worst case" in run.stdout and "mean" in run.stdout
    report = json.loads(out.read_text())
    assert report["images"] == len(list(IMAGES.glob("*.jpeg")))
    (model,) = report["models"]
    assert len(model["rows"]) == len(shifts.suite())
    assert 0.0 <= model["worst"]["spec"] <= model["mean"]["spec"] <= 1.0

    # Candidate ensembles scored from the members' saved logits.
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ensembles.py"), "--logits",
                          str(tmp_path / "logits.npz"), "--candidate", "all=*", "--candidate", "twice=*:*",
                          "--json", str(tmp_path / "c.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    candidates = json.loads((tmp_path / "c.json").read_text())["candidates"]
    rebuilt = candidates["all"]
    assert len(rebuilt["members"]) >= 1 and len(rebuilt["rows"]) == len(shifts.suite())
    assert 0.0 <= rebuilt["worst"]["spec"] <= rebuilt["mean"]["spec"] <= 1.0
    # Two stages from the same members: the same probabilities.
    for twice, once in zip(candidates["twice"]["rows"], rebuilt["rows"], strict=True):
        assert twice == pytest.approx(once, rel=1e-6, abs=1e-9, nan_ok=True)

    from training.model_card import shift_figure

    shift_figure(report, "spec", "Specificity", tmp_path / "shift.png")
    assert (tmp_path / "shift.png").stat().st_size > 0


@pytest.mark.parametrize("fraction, value", [(0.05, 0.0), (0.1, 0.0), (0.08, 1.0)])
def test_blank_frames_are_trimmed_before_the_model_sees_them(image, fraction, value):
    framed = shifts.border(image, fraction, value)
    assert trim_blank_margins(framed).shape < image.shape
    difference = np.abs(to_model_input(framed, 64) - to_model_input(image, 64))
    assert np.median(difference) < 0.1  # the same picture, resampled twice


def _margin(spans: np.ndarray, limit: int) -> int:
    """The definition: blank lines (values spanning at most BLANK_RANGE) before the first that is not."""
    content = np.flatnonzero(spans[:limit] > BLANK_RANGE)
    return int(content[0]) if content.size else limit


@pytest.mark.parametrize("seed", range(4))
def test_the_content_box_is_its_definition_for_frames_of_any_width(seed):
    """``content_box`` reads an edge's first rows before the rest of it; the box stays the one
    that the value span of every row and column within a quarter of each side gives."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        h, w = (int(n) for n in rng.integers(1, 120, 2))
        pixels = rng.random((h, w)) * rng.choice([1.0, 0.01])  # some images blank throughout
        top, bottom, left, right = (int(n) for n in rng.integers(0, 40, 4) * (rng.random(4) < 0.6))
        pixels[:top], pixels[h - bottom:], pixels[:, :left], pixels[:, w - right:] = rng.random(4)
        rows, cols = int(h * MAX_TRIM), int(w * MAX_TRIM)
        row_spans, col_spans = np.ptp(pixels, axis=1), np.ptp(pixels, axis=0)
        expected = (_margin(row_spans, rows), _margin(col_spans, cols),
                    h - _margin(row_spans[::-1], rows), w - _margin(col_spans[::-1], cols))
        assert content_box(pixels) == expected


def test_trimming_keeps_images_without_margins_and_flat_images(image):
    assert trim_blank_margins(image).shape == image.shape
    flat = np.full((40, 30), 0.5)
    assert 0 < trim_blank_margins(flat).size < flat.size
    assert not to_model_input(flat, 16).any()
