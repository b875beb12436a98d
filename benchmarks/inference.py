"""Model load time and inference speed of a classifier (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/inference.py [--model DIR ...] [--batch 1 16 64] [--repeat 5]

Runs on the Keras backend that ``KERAS_BACKEND`` names (TensorFlow by default; JAX on the GPU
machine). Per batch size: the network alone (``predict_on_batch``) and the calibrated
``KerasClassifier.predict`` that the service calls.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up: compiles the graph for this shape
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append",
                        help="model folder (repeatable; default: the shipped one); with several, each "
                             "line also gives the speed relative to the first, measured in this run")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    t0 = time.perf_counter()
    import keras

    from ctai.model.backend import KerasClassifier, shipped_model_dir
    from training.report import hardware

    print(f"import keras ({keras.backend.backend()}): {time.perf_counter() - t0:.2f} s; {hardware()}")
    classifiers = []
    for folder in args.model or [shipped_model_dir()]:
        t0 = time.perf_counter()
        classifiers.append(KerasClassifier(folder))
        info = classifiers[-1].info
        print(f"{info.name} {info.version} ({folder}): load {time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(0)
    for batch in args.batch:
        first = None
        for classifier in classifiers:
            x = rng.standard_normal((batch, classifier.input_size, classifier.input_size, 1)).astype(np.float32)
            network = best_time(partial(classifier.model.predict_on_batch, x), args.repeat)
            service = best_time(partial(classifier.predict, x), args.repeat)
            first = first or network
            print(f"{classifier.info.version:>8} batch {batch:3d}: network {network * 1000:8.2f} ms, "
                  f"{batch / network:8.1f} images/s ({first / network:.2f}x); calibrated predict "
                  f"{service * 1000:8.2f} ms, {batch / service:8.1f} images/s (best of {args.repeat})", flush=True)

if __name__ == "__main__":
    main()
