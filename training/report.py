"""Hardware description for the model card."""

from __future__ import annotations

import os
import platform


def hardware() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
        return f"{', '.join(names)} (mixed precision), TensorFlow {tf.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), no GPU, TensorFlow {tf.__version__}"
