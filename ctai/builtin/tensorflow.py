"""Built-in classifier backend: the shipped model run by TensorFlow/Keras, the reference (and what
answers when ``ctai.builtin.onnx`` does not), and the default preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctai import hookimpl
from ctai.config import Config
from ctai.model.backend import KerasClassifier, shipped_model_dir
from ctai.model.preprocess import to_model_input
from ctai.types import SourceImage


@hookimpl(trylast=True)
def ctai_classifier(config: Config) -> KerasClassifier:
    folder = config["model"]["path"]
    return KerasClassifier(Path(folder) if folder else shipped_model_dir())


@hookimpl(trylast=True)
def ctai_preprocess(image: SourceImage, size: int, config: Config) -> np.ndarray:
    return to_model_input(image.pixels, size)
