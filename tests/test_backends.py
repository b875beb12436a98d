"""Training runs under Keras's JAX backend (the GPU machine has no TensorFlow) without importing
TensorFlow, and the TensorFlow backend that ctai serves with loads the result unchanged."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ctai.model.backend import KerasClassifier
from tests.conftest import kermany_layout

# Runs under KERAS_BACKEND=jax as on the GPU machine, where TensorFlow is not installed (an
# import of it fails): train, then write the calibrated probabilities and heat maps of fixed inputs.
TRAIN_UNDER_JAX = """
import sys
sys.modules["tensorflow"] = None
import numpy as np
from training.train import main
out, work, data = sys.argv[1:4]
main(["--data", data, "--out", out, "--work", work, "--epochs", "1", "--size", "64", "--width", "8",
      "--batch", "4", "--val-fraction", "0.4", "--crop-scale", "0.35", "1", "--intensity", "--workers", "2"])
import keras
from ctai.model.backend import KerasClassifier
x = np.random.default_rng(0).standard_normal((5, 64, 64, 1)).astype(np.float32)
classifier = KerasClassifier(__import__("pathlib").Path(out))
np.save(work + "/jax_probs.npy", classifier.predict(x))
np.save(work + "/jax_maps.npy", classifier.analyse(x, heatmaps=True).heatmaps)
print("trained under", keras.backend.backend())
"""


def test_a_model_trained_under_jax_loads_under_tensorflow_with_equal_outputs(tmp_path: Path):
    data, out, work = kermany_layout(tmp_path / "data"), tmp_path / "model", tmp_path / "work"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", TRAIN_UNDER_JAX, str(out), str(work), str(data)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained under jax" in run.stdout

    import keras

    assert keras.backend.backend() == "tensorflow"
    x = np.random.default_rng(0).standard_normal((5, 64, 64, 1)).astype(np.float32)
    classifier = KerasClassifier(out)
    np.testing.assert_allclose(classifier.predict(x), np.load(work / "jax_probs.npy"), atol=1e-4)
    np.testing.assert_allclose(classifier.analyse(x, heatmaps=True).heatmaps, np.load(work / "jax_maps.npy"), atol=1e-3)
