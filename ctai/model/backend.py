"""The shipped classifier: a Keras ResNet with temperature-scaled (calibrated) softmax."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ctai.types import CLASSES, ModelInfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr


def shipped_model_dir() -> Path:
    return Path(str(resources.files("ctai.model").joinpath("artifact")))


class KerasClassifier:
    """Loads ``model.keras`` and ``model.json`` (name, version, input size, temperature)."""

    def __init__(self, folder: Path) -> None:
        meta = json.loads((folder / "model.json").read_text())
        if tuple(meta["classes"]) != CLASSES:
            raise ValueError(f"{folder}: model classes {meta['classes']} are not {list(CLASSES)}")
        import keras

        self.model = keras.saving.load_model(folder / "model.keras", compile=False)
        self.info = ModelInfo(meta["name"], meta["version"], meta.get("manufacturer", "ctai"))
        self.input_size = int(meta["input_size"])
        self.temperature = float(meta["temperature"])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits = np.asarray(self.model(batch, training=False), dtype=np.float64) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)
