"""The shipped classifier: a Keras ResNet whose softmax is calibrated by a temperature and class
biases fitted on the validation split (``training/calibrate.py``), with class-activation maps."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ctai.model.preprocess import check_preprocessing
from ctai.model.storage import load_network
from ctai.model.typicality import Reference
from ctai.types import CLASSES, ModelInfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr

#: Rows per network call on a CPU, where a larger call gains nothing and holds more memory. On a
#: GPU a call costs 10-20 ms whatever its size, and 64 rows capped an H200 at about 3,800 images/s
#: (docs/model-experiments.md, "Speed"): there a batch goes in one call (``in_calls``).
CHUNK = 64


def shipped_model_dir() -> Path:
    return Path(str(resources.files("ctai.model").joinpath("artifact")))


def model_meta(path: str) -> dict:
    """The ``model.json`` of the model in ``path`` (``[model] path``; empty: the shipped model)."""
    return json.loads(((Path(path) if path else shipped_model_dir()) / "model.json").read_text())


class Analysis(NamedTuple):
    """What the classifier says of a batch of model inputs, from one forward pass."""

    #: Calibrated probabilities, (n, len(CLASSES)).
    probabilities: np.ndarray
    #: Heat maps, (n, h, w, len(CLASSES)), each in [0, 1]; None when not asked for or the network has none.
    heatmaps: np.ndarray | None
    #: How far each input lies from the training population in the network's feature space
    #: (``ctai.model.typicality``), (n,); None when the model has no reference population.
    typicality: np.ndarray | None


class RawOutputs(NamedTuple):
    """A network's outputs before calibration: logits (n, classes); the class-activation maps
    (n, h, w, classes), whose spatial mean is the logits; the pooled features before the logits
    (n, d), every member's side by side. Maps and features are None when the network has none."""

    logits: np.ndarray
    maps: np.ndarray | None
    features: np.ndarray | None


class ProbabilityClassifier:
    """A classifier that gives probabilities only, no heat maps or typicality scores (a plugin's
    stand-in, say): a subclass defines ``info``, ``input_size`` and ``predict``."""

    concurrency = 1

    def predict(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def analyse(self, batch: np.ndarray, heatmaps: bool = False) -> Analysis:
        return Analysis(self.predict(batch), None, None)


class CalibratedClassifier:
    """Reads ``model.json`` (name, version, input size, calibration) and the reference population
    (``ctai.model.typicality``), and turns a backend's raw network outputs into an ``Analysis``.
    A backend subclass provides ``outputs``, and its ``concurrency`` when it runs several batches
    at once best."""

    concurrency = 1

    def __init__(self, folder: Path) -> None:
        meta = json.loads((folder / "model.json").read_text())
        if tuple(meta["classes"]) != CLASSES:
            raise ValueError(f"{folder}: model classes {meta['classes']} are not {list(CLASSES)}")
        check_preprocessing(meta, folder)
        self.info = ModelInfo(meta["name"], meta["version"], meta.get("manufacturer", "ctai"))
        self.input_size = int(meta["input_size"])
        self.temperature = float(meta["temperature"])
        self.bias = np.asarray(meta.get("bias", [0.0] * len(CLASSES)), dtype=np.float64)
        self.reference = Reference.load(folder)

    def outputs(self, batch: np.ndarray) -> RawOutputs:
        """The network's raw outputs for a batch of model inputs (``in_calls``)."""
        raise NotImplementedError

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.analyse(batch).probabilities

    def analyse(self, batch: np.ndarray, heatmaps: bool = False) -> Analysis:
        raw = self.outputs(batch)
        maps = unit_range(raw.maps) if heatmaps and raw.maps is not None else None
        typicality = None if self.reference is None or raw.features is None else self.reference.scores(raw.features)
        return Analysis(self._calibrated(raw.logits), maps, typicality)

    def _calibrated(self, logits: np.ndarray) -> np.ndarray:
        logits = logits / self.temperature + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


class KerasClassifier(CalibratedClassifier):
    """The network as Keras runs it (``ctai.model.storage``): the reference backend."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        model = load_network(folder)
        #: The network with its maps and features as more outputs, when its end allows (``with_class_maps``).
        self.model = with_class_maps(model) or model
        self.accelerated = keras_on_accelerator()

    def outputs(self, batch: np.ndarray) -> RawOutputs:
        # predict_on_batch runs a compiled graph: 7x faster than an eager call for one image.
        return in_calls(self.model.predict_on_batch, batch, self.accelerated)


def keras_on_accelerator() -> bool:
    """Whether Keras computes on a GPU or TPU: ``keras.distribution.list_devices`` lists the
    devices of the default kind, the CPU's only when there is no other (JAX and TensorFlow)."""
    import keras

    return not keras.distribution.list_devices()[0].startswith("cpu")


def in_calls(run: Callable[[np.ndarray], Any], batch: np.ndarray, accelerated: bool) -> RawOutputs:
    """The ``RawOutputs`` of the network ``run`` on ``batch``: in calls of ``CHUNK`` rows on a CPU;
    on an accelerator in one call, padded with zeros to a power of two rows. There each new shape
    compiles the network again (JAX: seconds), so a few shapes serve every size of batch (the
    worker's merged batches have any size), and a call costs about the same whatever its rows."""
    if not accelerated:
        return joined([run(batch[i:i + CHUNK]) for i in range(0, len(batch), CHUNK)])
    rows = 1 << max(0, len(batch) - 1).bit_length()
    padded = batch if rows == len(batch) else np.concatenate(
        [batch, np.zeros((rows - len(batch), *batch.shape[1:]), batch.dtype)])  # no copy of a whole batch
    outputs = run(padded)
    parts = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return joined([[np.asarray(part)[:len(batch)] for part in parts]])


def joined(chunks: list) -> RawOutputs:
    """The ``RawOutputs`` of a network's outputs on consecutive chunks (each its logits, or a
    list of logits, maps and features)."""
    parts = [chunk if isinstance(chunk, (list, tuple)) else [chunk] for chunk in chunks]
    columns = [np.concatenate([np.asarray(part[i]) for part in parts]) for i in range(len(parts[0]))]
    logits, maps, features = [*columns, None, None][:3]
    return RawOutputs(logits.astype(np.float64), maps if maps is None else maps.astype(np.float32),
                      features if features is None else features.astype(np.float32))


def with_class_maps(model):
    """``model`` with two more outputs: its class-activation maps (Zhou et al. 2016, "Learning Deep
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
    logits = combine([logits for logits, _, _ in outputs])
    maps = [maps for _, maps, _ in outputs]
    maps = combine.maps(maps) if isinstance(combine, TwoStage) else keras.layers.Average()(maps)
    features = keras.layers.Concatenate(name="features")([features for _, _, features in outputs])
    return keras.Model(image, [logits, maps, features])


def members(model) -> list:
    """An ensemble's member networks in order (layers ``member0``, ``member1``, ...;
    ``training.ensemble``), else the model itself."""
    members = [layer for layer in model.layers if layer.name.startswith("member") and hasattr(layer, "layers")]
    return sorted(members, key=lambda layer: int(layer.name.removeprefix("member"))) or [model]


def _class_map_head(network):
    """``network`` with outputs (logits, class maps, pooled features), or None if its end is not
    pool -> dense."""
    import keras

    layers = network.layers
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if len(pools) != 1:
        return None
    *between, dense = layers[pools[0] + 1:]
    if not isinstance(dense, keras.layers.Dense) or not all(isinstance(x, keras.layers.Dropout) for x in between):
        return None
    return keras.Model(network.input, [network.output, dense(layers[pools[0]].input), layers[pools[0]].output])


def unit_range(maps: np.ndarray) -> np.ndarray:
    """Each (image, class) map of ``maps`` (n, h, w, classes) scaled to [0, 1]; a flat map is 0."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 1e-6)
