"""Model load time and inference speed of the shipped classifier (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/inference.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    t0 = time.perf_counter()
    import tensorflow as tf

    from ctai.model.backend import KerasClassifier, shipped_model_dir

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    classifier = KerasClassifier(shipped_model_dir())
    t_load = time.perf_counter() - t0
    gpus = tf.config.list_physical_devices("GPU")
    print(f"device: {'GPU ' + str(gpus) if gpus else f'CPU ({platform.processor() or platform.machine()})'}")
    print(f"import tensorflow: {t_import:.2f} s; load model: {t_load:.2f} s")
    size = classifier.input_size
    rng = np.random.default_rng(0)
    for batch in (1, 16, 64):
        x = rng.standard_normal((batch, size, size, 1)).astype(np.float32)
        classifier.predict(x)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            classifier.predict(x)
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(f"batch {batch:3d}: {best * 1000:8.1f} ms per batch, {batch / best:7.1f} images/s "
              f"(best of {args.repeat})")


if __name__ == "__main__":
    main()
