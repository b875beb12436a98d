"""Heat maps (class-activation maps): exact, deterministic, on the evidence, and threaded through
the pipeline and the worker's batches. The model is a tiny ResNet trained here on synthetic
images whose class is decided by a planted patch: bright (bacterial), dark (viral) or none (normal)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from ctai.model.backend import KerasClassifier, unit_range
from ctai.model.batching import BatchingClassifier
from ctai.model.preprocess import to_model_input
from ctai.pipeline import Pipeline
from ctai.types import CLASSES, SourceImage
from tests.test_sr import make_result

SIZE, PATCH, MARGIN, CONTRAST = 128, 20, 16, 4.0


def synthetic(rng: np.random.Generator, label: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A model input of unit noise with the patch of ``label`` at a random place; and that place."""
    x = rng.standard_normal((SIZE, SIZE, 1)).astype(np.float32)
    y0, x0 = (int(v) for v in rng.integers(MARGIN, SIZE - PATCH - MARGIN + 1, 2))
    if label:
        x[y0:y0 + PATCH, x0:x0 + PATCH] += CONTRAST if label == 1 else -CONTRAST
    return x, (y0, x0)


def save_model(model, folder: Path) -> Path:
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    meta = {"name": "patch-test", "version": "0", "classes": list(CLASSES), "input_size": SIZE,
            "temperature": 1.0}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory) -> Path:
    """A width-4 ResNet-18 trained for one pass over 1600 synthetic images (seconds on a CPU)."""
    import keras

    from training.resnet import build_resnet

    rng = np.random.default_rng(1)
    labels = np.arange(1600) % len(CLASSES)
    x = np.stack([synthetic(rng, int(label))[0] for label in labels])
    keras.utils.set_random_seed(1)
    model = build_resnet(18, 4, SIZE, dropout=0.0)
    for layer in model.layers:  # a short run: let BatchNorm's moving statistics keep up
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, labels, batch_size=16, epochs=1, verbose=0)
    return save_model(model, tmp_path_factory.mktemp("heatmap") / "model")


@pytest.fixture(scope="module")
def classifier(patch_model) -> KerasClassifier:
    return KerasClassifier(patch_model)


def _peak_on_patch(heatmap: np.ndarray, y0: int, x0: int) -> bool:
    """Whether the hottest cell of a coarse map overlaps the patch at (y0, x0)."""
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    cell = SIZE / heatmap.shape[0]
    return row * cell < y0 + PATCH and y0 < (row + 1) * cell and col * cell < x0 + PATCH and x0 < (col + 1) * cell


def test_the_peak_falls_on_the_patch(classifier):
    # A 4 x 4 map at 128 px is coarse: a cell is 32 px. By chance the peak would overlap the
    # 20 px patch about one time in six; the map must find it nearly always.
    rng = np.random.default_rng(7)
    cases = [(label, *synthetic(rng, label)) for label in [1, 2] * 10]
    probabilities, maps, _ = classifier.analyse(np.stack([x for _, x, _ in cases]), heatmaps=True)
    assert maps.shape == (len(cases), 4, 4, len(CLASSES))
    predicted = probabilities.argmax(axis=1)
    hits = [predicted[i] == label and _peak_on_patch(maps[i, :, :, label], *place)
            for i, (label, _, place) in enumerate(cases)]
    assert sum(hits) >= 16, hits


def test_maps_average_to_the_logits_also_for_an_ensemble(patch_model, classifier, tmp_path):
    import keras

    from training.ensemble import combine
    from training.resnet import build_resnet

    keras.utils.set_random_seed(2)
    untrained = save_model(build_resnet(18, 4, SIZE), tmp_path / "untrained")
    (tmp_path / "untrained" / "model.json").write_text((patch_model / "model.json").read_text())
    ensemble, _ = combine([patch_model, untrained])
    both = KerasClassifier(save_model(ensemble, tmp_path / "ensemble"))
    x = np.stack([synthetic(np.random.default_rng(i), i % 3)[0] for i in range(3)])

    logits, maps, _ = both.outputs(x)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), logits, atol=1e-4)  # CAM is exact
    members = [KerasClassifier(folder).outputs(x).maps for folder in (patch_model, untrained)]
    np.testing.assert_allclose(maps, np.mean(members, axis=0), atol=1e-4)


def test_the_same_input_gives_the_same_map(classifier):
    x = synthetic(np.random.default_rng(3), 1)[0][np.newaxis]
    first, second = classifier.analyse(x, heatmaps=True), classifier.analyse(x, heatmaps=True)
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_allclose(first[0], classifier.predict(x), atol=1e-6)


def test_a_constant_image_gives_finite_maps(classifier):
    x = to_model_input(np.full((200, 150), 0.4), SIZE)[np.newaxis]
    assert np.ptp(x) == 0
    probabilities, maps, _ = classifier.analyse(x, heatmaps=True)
    assert np.isfinite(probabilities).all() and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    flat = np.zeros((2, 4, 4, 3), np.float32)
    np.testing.assert_array_equal(unit_range(flat), flat)


def _source(seed: int) -> SourceImage:
    """A display-ready image of the synthetic kind, with a black margin the network never sees."""
    x, _ = synthetic(np.random.default_rng(seed), 1)
    pixels = np.pad(np.clip(0.5 + 0.1 * x[..., 0], 0, 1), ((0, 0), (30, 0)))
    return SourceImage(f"image{seed}", make_result().source.dataset, pixels)


@pytest.mark.parametrize("heatmap", [True, False])
def test_pipeline_gives_the_predicted_class_map_when_configured(config, patch_model, classifier, heatmap):
    config["model"]["path"] = str(patch_model)
    config["outputs"]["heatmap"] = heatmap
    images = [_source(seed) for seed in range(3)]
    predictions = Pipeline(config).classify(images)
    if not heatmap:
        assert all(p.heatmap is None for p in predictions)
        return
    maps = classifier.analyse(np.stack([to_model_input(im.pixels, SIZE) for im in images]), heatmaps=True).heatmaps
    for prediction, expected in zip(predictions, maps, strict=True):
        np.testing.assert_allclose(prediction.heatmap, expected[:, :, CLASSES.index(prediction.label)], atol=1e-6)


def test_batches_of_callers_with_and_without_maps(classifier):
    x = np.stack([synthetic(np.random.default_rng(i), i % 3)[0] for i in range(6)])
    expected_probabilities, expected_maps, _ = classifier.analyse(x, heatmaps=True)
    batcher = BatchingClassifier(classifier, max_batch=16, max_wait=1.0)
    answers: dict[int, object] = {}
    barrier = threading.Barrier(3)

    def call(i: int) -> None:
        rows = x[2 * i:2 * i + 2]
        barrier.wait()
        answers[i] = batcher.analyse(rows, heatmaps=True)[:2] if i % 2 else batcher.predict(rows)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    assert batcher.batch_sizes == {6: 1}  # one shared batch
    for i in (0, 2):
        np.testing.assert_allclose(answers[i], expected_probabilities[2 * i:2 * i + 2], atol=1e-5)
    probabilities, maps = answers[1]
    np.testing.assert_allclose(probabilities, expected_probabilities[2:4], atol=1e-5)
    np.testing.assert_allclose(maps, expected_maps[2:4], atol=1e-5)
