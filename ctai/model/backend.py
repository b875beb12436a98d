"""The shipped classifier: a Keras ResNet whose softmax is calibrated by a temperature and class
biases fitted on the validation split (``training/calibrate.py``), with class-activation maps."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ctai.model.preprocess import check_preprocessing
from ctai.model.storage import load_network
from ctai.types import CLASSES, ModelInfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr

#: Rows per network call.
CHUNK = 64


def shipped_model_dir() -> Path:
    return Path(str(resources.files("ctai.model").joinpath("artifact")))


class CalibratedClassifier:
    """Reads ``model.json`` (name, version, input size, calibration) and turns a backend's raw
    network outputs into calibrated probabilities and heat maps. A backend subclass provides
    ``logits`` and, when ``has_maps``, ``logits_and_maps``."""

    #: Whether the network also gives class-activation maps (``logits_and_maps``).
    has_maps: bool = False

    def __init__(self, folder: Path) -> None:
        meta = json.loads((folder / "model.json").read_text())
        if tuple(meta["classes"]) != CLASSES:
            raise ValueError(f"{folder}: model classes {meta['classes']} are not {list(CLASSES)}")
        check_preprocessing(meta, folder)
        self.info = ModelInfo(meta["name"], meta["version"], meta.get("manufacturer", "ctai"))
        self.input_size = int(meta["input_size"])
        self.temperature = float(meta["temperature"])
        self.bias = np.asarray(meta.get("bias", [0.0] * len(CLASSES)), dtype=np.float64)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw network outputs, before calibration."""
        raise NotImplementedError

    def logits_and_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw network outputs and, from the same forward pass, the raw class-activation maps
        (n, h, w, classes), whose spatial mean is the logits."""
        raise NotImplementedError

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._calibrated(self.logits(batch))

    def predict_with_heatmaps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.has_maps:
            return self.predict(batch), None
        logits, maps = self.logits_and_maps(batch)
        return self._calibrated(logits), unit_range(maps)

    def _calibrated(self, logits: np.ndarray) -> np.ndarray:
        logits = logits / self.temperature + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


class KerasClassifier(CalibratedClassifier):
    """The network as Keras runs it (``ctai.model.storage``): the reference backend."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.model = load_network(folder)
        #: The same network with a second output, its class-activation maps; None if it has none.
        self.cam_model = with_class_maps(self.model)
        self.has_maps = self.cam_model is not None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        # predict_on_batch runs a compiled graph: 7x faster than an eager call for one image.
        return np.concatenate([np.asarray(self.model.predict_on_batch(batch[i:i + CHUNK]), dtype=np.float64)
                               for i in range(0, len(batch), CHUNK)])

    def logits_and_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chunks = [self.cam_model.predict_on_batch(batch[i:i + CHUNK]) for i in range(0, len(batch), CHUNK)]
        return (np.concatenate([np.asarray(logits, dtype=np.float64) for logits, _ in chunks]),
                np.concatenate([np.asarray(maps, dtype=np.float32) for _, maps in chunks]))


def with_class_maps(model):
    """``model`` with a second output: its class-activation maps (Zhou et al. 2016, "Learning Deep
    Features for Discriminative Localization"), or None when it does not end as the ResNets of
    ``training/resnet.py`` do (global average pooling, dropout, dense logits).

    The dense layer applied at every position of the last features, instead of to their average,
    gives maps whose spatial mean is exactly the logits. An ensemble (``training/ensemble.py``)
    combines its members' logits with its layer ``logits`` (``ctai.model.heads``): a mean of
    logits has the mean of its members' maps; two stages take each class's map from the members
    that decide that class.
    """
    import keras

    from ctai.model.heads import TwoStage

    heads = [_class_map_head(member) for member in members(model)]
    if not heads or None in heads:
        return None
    image = keras.Input(model.input.shape[1:], name="image")
    outputs = [head(image) for head in heads]
    if len(outputs) == 1:
        return keras.Model(image, outputs[0])
    combine = model.get_layer("logits")
    logits = combine([logits for logits, _ in outputs])
    maps = [maps for _, maps in outputs]
    maps = combine.maps(maps) if isinstance(combine, TwoStage) else keras.layers.Average()(maps)
    return keras.Model(image, [logits, maps])


def members(model) -> list:
    """An ensemble's member networks in order (layers ``member0``, ``member1``, ...;
    ``training.ensemble``), else the model itself."""
    members = [layer for layer in model.layers if layer.name.startswith("member") and hasattr(layer, "layers")]
    return sorted(members, key=lambda layer: int(layer.name.removeprefix("member"))) or [model]


def _class_map_head(network):
    """``network`` with outputs (logits, class maps), or None if its end is not pool -> dense."""
    import keras

    layers = network.layers
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if len(pools) != 1:
        return None
    *between, dense = layers[pools[0] + 1:]
    if not isinstance(dense, keras.layers.Dense) or not all(isinstance(x, keras.layers.Dropout) for x in between):
        return None
    return keras.Model(network.input, [network.output, dense(layers[pools[0]].input)])


def unit_range(maps: np.ndarray) -> np.ndarray:
    """Each (image, class) map of ``maps`` (n, h, w, classes) scaled to [0, 1]; a flat map is 0."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 1e-6)
