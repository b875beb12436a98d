"""The input gate: is this image a frontal chest radiograph that the classifier can read?

The classifier answers for any picture it is given (a blank page becomes "viral pneumonia
56 %"), so a separate small network, trained with outlier exposure (Hendrycks et al. 2019,
"Deep Anomaly Detection with Outlier Exposure") on chest radiographs against a corpus of other
images (``training.gate``), scores each image first; images below a threshold are refused with
a reason. Degenerate pixels are refused by rule before the network sees them.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from ctai.model.backend import in_calls, keras_on_accelerator
from ctai.model.converted import Network, converted_network
from ctai.model.preprocess import check_preprocessing, to_model_input
from ctai.model.storage import load_network

#: Every refusal by the gate starts with this.
NOT_A_CHEST = "not a frontal chest radiograph"
#: Images whose values span less than this of the display range are blank.
FLAT_RANGE = 0.02
#: Longer sides more than this many times the shorter one are strips, not radiographs.
MAX_ASPECT = 4.0


def shipped_gate_dir() -> Path:
    return Path(str(resources.files("ctai.model").joinpath("gate-artifact")))


def rule_refusal(image: np.ndarray) -> str | None:
    """Why pixels cannot be a radiograph, whatever the network says; None if they might be."""
    if image.ndim != 2 or min(image.shape) < 2:
        return f"{NOT_A_CHEST} (an image of shape {image.shape})"
    if not np.isfinite(image).all():
        return f"{NOT_A_CHEST} (pixel values are not finite)"
    if float(np.ptp(image)) < FLAT_RANGE:
        return f"{NOT_A_CHEST} (a blank image of one flat value)"
    if max(image.shape) > MAX_ASPECT * min(image.shape):
        return f"{NOT_A_CHEST} (a strip of {image.shape[1]} x {image.shape[0]} pixels)"
    return None


class ChestGate:
    """Loads the network and ``model.json`` (version, input size) from ``folder``, to run on
    ``backend`` (``ctai.model.converted.BACKENDS``; a converted one is cached in ``cache``)."""

    def __init__(self, folder: Path, backend: str = "keras", cache: Path | None = None) -> None:
        meta = json.loads((folder / "model.json").read_text())
        check_preprocessing(meta, folder)
        if backend == "keras":
            model, accelerated = load_network(folder), keras_on_accelerator()
            self._network = lambda x: in_calls(model.predict_on_batch, x, accelerated).logits
        else:
            if cache is None:
                raise ValueError(f"the {backend} backend needs a cache folder for its converted network")
            network = Network(converted_network(folder, cache, maps=False), backend)
            self._network = lambda x: in_calls(network, x, network.accelerated).logits
        self.version = str(meta["version"])
        self.input_size = int(meta["input_size"])

    def scores(self, images: list[np.ndarray]) -> np.ndarray:
        """p(frontal chest radiograph) of each display-ready image."""
        x = np.stack([to_model_input(image, self.input_size) for image in images])
        logits = np.asarray(self._network(x), dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e[:, 1] / e.sum(axis=1)

    def refusals(self, images: list[np.ndarray], threshold: float) -> list[str | None]:
        """Why each image is refused, or None to classify it: the network judges, in one call,
        those that no rule refuses."""
        reasons = [rule_refusal(image) for image in images]
        judged = [i for i, reason in enumerate(reasons) if reason is None]
        if judged:
            for i, score in zip(judged, self.scores([images[i] for i in judged]), strict=True):
                if score < threshold:
                    reasons[i] = f"{NOT_A_CHEST} (chest-image score {score:.2f}, below {threshold:.2f})"
        return reasons
