"""How a network is stored in a model folder: ``model.keras`` (what training writes), or the same
network as its architecture and float16 weights in ``model.f16.npz`` (half the bytes: the shipped
ensemble stays under 50 MB). Either way it runs in float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

KERAS_FILE = "model.keras"
FLOAT16_FILE = "model.f16.npz"


def has_network(folder: Path) -> bool:
    return (folder / KERAS_FILE).exists() or (folder / FLOAT16_FILE).exists()


def network_file(folder: Path) -> Path:
    """The file that holds the network of ``folder`` (``load_network`` reads it)."""
    return folder / KERAS_FILE if (folder / KERAS_FILE).exists() else folder / FLOAT16_FILE


def load_network(folder: Path):
    """The Keras model stored in ``folder``, in float32."""
    import keras

    import ctai.model.heads  # noqa: F401  (registers the layers that combine an ensemble's members)

    path = network_file(folder)
    if path.name == KERAS_FILE:
        return keras.saving.load_model(path, compile=False)
    with np.load(path) as stored:
        model = keras.models.model_from_json(str(stored["architecture"]))
        model.set_weights([stored[k].astype(np.float32) for k in sorted(stored.files) if k.startswith("w")])
    return model


def save_float16(model, folder: Path) -> Path:
    """Store ``model`` in ``folder`` as ``model.f16.npz``."""
    weights = {f"w{i:04d}": np.asarray(w).astype(np.float16) for i, w in enumerate(model.get_weights())}
    np.savez_compressed(folder / FLOAT16_FILE, architecture=model.to_json(), **weights)
    return folder / FLOAT16_FILE
