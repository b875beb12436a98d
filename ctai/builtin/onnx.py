"""Faster CPU classifier backends: the shipped network converted to ONNX and run by ONNX Runtime
or OpenVINO (``ctai.model.converted``), as ``[model] backend`` chooses; "keras" leaves it to
``ctai.builtin.tensorflow``, the reference, which also answers if the conversion fails."""

from __future__ import annotations

import logging
from pathlib import Path

from ctai import hookimpl
from ctai.config import Config
from ctai.model.backend import shipped_model_dir
from ctai.model.converted import ConvertedClassifier, backend_name, cache_dir

log = logging.getLogger(__name__)


@hookimpl
def ctai_classifier(config: Config) -> ConvertedClassifier | None:
    backend = backend_name(config["model"]["backend"])
    if backend == "keras":
        return None
    folder = Path(config["model"]["path"]) if config["model"]["path"] else shipped_model_dir()
    try:
        return ConvertedClassifier(folder, backend, cache_dir(config["data"]["dir"]))
    except Exception as error:  # a missing converter or runtime: the Keras reference still works
        log.warning("the %s backend could not load %s (%s: %s); using Keras", backend, folder,
                    type(error).__name__, error)
        return None
