"""The faster backends (``ctai.model.converted``): a network converted to ONNX once, cached, run
by ONNX Runtime or OpenVINO with Keras's probabilities and heat maps, and loaded again without
TensorFlow. A small untrained ResNet stands in for the shipped ensemble (whose conversion takes
a minute: benchmarks/backends.py compares that one on the validation split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ctai.model.backend import CHUNK, KerasClassifier, in_calls
from ctai.model.converted import CONVERSION_LOG, ConvertedClassifier, Network, backend_name, converted_network
from ctai.model.gate import ChestGate, shipped_gate_dir
from ctai.types import CLASSES
from tests.conftest import IMAGES

SIZE = 64


def tiny_model(folder: Path, seed: int, network=None) -> Path:
    """A model folder holding ``network``, by default a small untrained ResNet."""
    import keras

    from training.resnet import build_resnet

    keras.utils.set_random_seed(seed)
    folder.mkdir()
    (network or build_resnet(18, 4, SIZE, dropout=0.0)).save(folder / "model.keras")
    meta = {"name": "tiny", "version": "0", "classes": list(CLASSES), "input_size": SIZE,
            "temperature": 0.05, "bias": [0.0, 0.3, -0.2]}  # a low temperature magnifies any difference
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("converted") / "model", seed=3)


@pytest.fixture(scope="module")
def cache(model, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    converted_network(model, cache, maps=True)
    return cache


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_a_converted_network_gives_keras_probabilities_and_heat_maps(model, cache, engine):
    x = np.random.default_rng(0).standard_normal((5, SIZE, SIZE, 1)).astype(np.float32)
    reference, converted = KerasClassifier(model), ConvertedClassifier(model, engine, cache)
    p_ref, maps_ref, t_ref = reference.analyse(x, heatmaps=True)
    p, maps, t = converted.analyse(x, heatmaps=True)
    np.testing.assert_allclose(p, p_ref, atol=1e-4)
    np.testing.assert_allclose(maps, maps_ref, atol=1e-3)
    np.testing.assert_allclose(converted.predict(x), p, atol=1e-6)


def test_a_two_stage_ensemble_converts_with_its_head(model, tmp_path):
    from training.ensemble import combine

    ensemble, _ = combine([model], [model, tiny_model(tmp_path / "other", seed=4)])
    folder = tiny_model(tmp_path / "two-stage", seed=0, network=ensemble)
    x = np.random.default_rng(1).standard_normal((4, SIZE, SIZE, 1)).astype(np.float32)
    p_ref, maps_ref, _ = KerasClassifier(folder).analyse(x, heatmaps=True)
    p, maps, _ = ConvertedClassifier(folder, "onnxruntime", tmp_path / "cache").analyse(x, heatmaps=True)
    np.testing.assert_allclose(p, p_ref, atol=1e-4)
    np.testing.assert_allclose(maps, maps_ref, atol=1e-3)


def test_batches_run_at_once_give_their_own_outputs(model, cache):
    network = Network(converted_network(model, cache, maps=True), "onnxruntime")
    assert network.concurrency == min(2, len(os.sched_getaffinity(0)))  # on the CPU
    batches = np.random.default_rng(2).standard_normal((4, 3, SIZE, SIZE, 1)).astype(np.float32)
    with ThreadPoolExecutor(network.concurrency) as pool:
        at_once = list(pool.map(network, batches))
    for batch, outputs in zip(batches, at_once, strict=True):
        for alone, together in zip(network(batch), outputs, strict=True):
            np.testing.assert_allclose(together, alone, atol=1e-6)


def test_a_batch_goes_to_the_network_in_chunks_on_a_cpu_and_whole_on_an_accelerator(model, cache):
    calls = []

    def network(batch):
        calls.append(len(batch))
        return [batch[:, :3], batch[:, 3:]]  # logits, maps

    # On an accelerator every size of batch is padded to a power of two rows: a few shapes to compile.
    for rows, accelerated, expected in ((2 * CHUNK + 2, False, [CHUNK, CHUNK, 2]), (2 * CHUNK + 2, True, [4 * CHUNK]),
                                        (5, True, [8]), (1, True, [1]), (CHUNK, True, [CHUNK])):
        batch = np.arange(rows, dtype=np.float32)[:, None].repeat(5, axis=1) + 1
        calls.clear()
        raw = in_calls(network, batch, accelerated)
        assert calls == expected
        np.testing.assert_array_equal(raw.logits, batch[:, :3])
        np.testing.assert_array_equal(raw.maps, batch[:, 3:])
    # This machine computes on its CPU, whichever backend runs the network; padded, a network
    # gives each image the outputs it gives it alone.
    classifier = KerasClassifier(model)
    assert not classifier.accelerated
    assert not ConvertedClassifier(model, "onnxruntime", cache).network.accelerated
    x = np.random.default_rng(4).standard_normal((5, SIZE, SIZE, 1)).astype(np.float32)
    classifier.accelerated = True
    padded = classifier.outputs(x)
    classifier.accelerated = False
    for one, other in zip(padded, classifier.outputs(x), strict=True):
        np.testing.assert_allclose(one, other, atol=1e-5)


def test_the_conversion_is_cached_by_the_network_file(model, cache):
    before = sorted(cache.iterdir())
    assert converted_network(model, cache, maps=True) in before
    assert sorted(cache.iterdir()) == before  # not converted again, no partial files left


def test_the_gate_scores_alike_on_a_converted_backend(cache):
    images = [np.random.default_rng(1).random((200, 180)), np.linspace(0, 1, 150 * 150).reshape(150, 150)]
    keras_gate, fast_gate = ChestGate(shipped_gate_dir()), ChestGate(shipped_gate_dir(), "onnxruntime", cache)
    np.testing.assert_allclose(fast_gate.scores(images), keras_gate.scores(images), atol=1e-4)


# A conversion asked for by a process that cannot import TensorFlow or Keras.
CONVERT_WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = sys.modules["keras"] = None
from pathlib import Path
from ctai.model.converted import converted_network
print(converted_network(Path(sys.argv[1]), Path(sys.argv[2]), maps=False))
"""


def test_a_network_is_converted_by_a_process_of_its_own(model, tmp_path):
    """TensorFlow, imported to convert, would keep its memory in the process for good. What it
    writes to standard error goes to the cache's conversion log; the caller says one line."""
    run = subprocess.run([sys.executable, "-c", CONVERT_WITHOUT_TENSORFLOW, str(model), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    log = tmp_path / CONVERSION_LOG
    assert sorted(tmp_path.iterdir()) == sorted([Path(run.stdout.strip()), log])  # no partial file
    assert run.stderr == f"converting the network in {model} once, into {tmp_path} (TensorFlow's output: {log})\n"


# `ctai classify` with TensorFlow and Keras made unimportable: the cached networks must do.
CLASSIFY_WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = sys.modules["keras"] = None
from ctai.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_with_its_conversions_cached_the_service_starts_without_tensorflow(model, cache, tmp_path):
    data = tmp_path / "data"
    (data / "converted-models").parent.mkdir()
    (data / "converted-models").symlink_to(cache)
    converted_network(shipped_gate_dir(), cache, maps=False)  # the gate's, as its first use converts it
    image = sorted(IMAGES.glob("*.jpeg"))[0]
    env = {"CTAI_MODEL__BACKEND": "onnxruntime", "CTAI_MODEL__PATH": str(model), "CTAI_DATA__DIR": str(data)}
    run = subprocess.run([sys.executable, "-c", CLASSIFY_WITHOUT_TENSORFLOW, "classify", "--json", str(image)],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(run.stdout)
    expected = KerasClassifier(model).predict(_model_input(image)[None])[0]
    np.testing.assert_allclose([row["probabilities"][c] for c in CLASSES], expected, atol=1e-4)


def _model_input(path: Path) -> np.ndarray:
    from ctai.inputs.images import read_gray
    from ctai.model.preprocess import to_model_input

    return to_model_input(read_gray(path), SIZE)


def test_an_unknown_backend_is_a_clear_error():
    assert backend_name("auto") in ("keras", "onnxruntime", "openvino")
    with pytest.raises(ValueError, match="backend must be auto or one of"):
        backend_name("tensorrt")
