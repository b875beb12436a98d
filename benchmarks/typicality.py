"""What the typicality score costs per image (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/typicality.py [--model DIR] [--batch 16] [--repeat 7]

The score needs no second network pass: the pooled features come out of the forward pass that
gives the probabilities (``CalibratedClassifier.analyse``). What it adds is that output and the
distance to the reference (``ctai.model.typicality``). Printed: the classifier's ``analyse`` per
image on ONNX Runtime with the reference and without it (best of ``--repeat``, alternated), their
ratio, and the distance alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from inference import best_time  # benchmarks/inference.py

from ctai.config import load
from ctai.model.backend import shipped_model_dir
from ctai.model.converted import ConvertedClassifier, cache_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=shipped_model_dir())
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    classifier = ConvertedClassifier(args.model, "onnxruntime", cache_dir(load()["data"]["dir"]))
    reference = classifier.reference
    if reference is None:
        raise SystemExit(f"{args.model} has no typicality reference")
    x = np.random.default_rng(0).standard_normal((args.batch, classifier.input_size, classifier.input_size, 1))
    x = x.astype(np.float32)
    with_score, without = [], []
    for _ in range(args.repeat):
        classifier.reference = reference
        with_score.append(best_time(lambda: classifier.analyse(x), 1) / args.batch)
        classifier.reference = None
        without.append(best_time(lambda: classifier.analyse(x), 1) / args.batch)
    features = classifier.outputs(x).features
    distance = best_time(lambda: reference.scores(features), args.repeat) / args.batch
    print(f"batch {args.batch}, {features.shape[1]} features in {len(reference.whitening)} blocks")
    print(f"analyse per image: {1e3 * min(without):.2f} ms without the score, {1e3 * min(with_score):.2f} ms with it "
          f"(ratio {min(with_score) / min(without):.3f}); the distance alone {1e6 * distance:.1f} us per image")


if __name__ == "__main__":
    main()
