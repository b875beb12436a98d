"""The hardware a training run used, for the model card; backend-neutral, so that training
imports TensorFlow only when it is the Keras backend."""

from __future__ import annotations

import os
import platform


def _backend() -> tuple[str, list[str]]:
    """The Keras backend with its version, and the names of the GPUs it sees."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return f"JAX {jax.__version__}", [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return f"TensorFlow {tf.__version__}", [
            tf.config.experimental.get_device_details(g).get("device_name", "GPU")
            for g in tf.config.list_physical_devices("GPU")]
    return keras.backend.backend(), []


def gpus() -> list[str]:
    return _backend()[1]


def hardware() -> str:
    import keras

    backend, names = _backend()
    where = f"Keras {keras.__version__} on {backend}"
    if names:
        return f"{', '.join(names)}, {where}"
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, {where}"
