"""Per-site calibration on a stand-in site: the validation split's patients (never trained on)
under an acquisition shift, as ``ctai site calibrate`` would see a new hospital. For each shift:
the cross-validated comparison the command prints (on all of them), then ten random patient
halves, fitted on one and measured on the other.

    .venv/bin/python benchmarks/site_calibration.py --data ../shared/data/chest_xray/train \\
        --cache /tmp/site-probs.npz

``--cache`` keeps the model's probabilities (computed once, about a minute per shift on 2 cores).
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ctai import config as configuration
from ctai.inputs.images import read_gray
from ctai.model.preprocess import to_model_input
from ctai.plugins import plugin_manager
from ctai.site import calibration, cases
from training import data, shifts

SHIFTS = {"none": lambda im: im, "stretch": lambda im: shifts.stretch(im, 1.25, 0),
          "rotate": lambda im: shifts.rotate(im, -7.0)}
KEYS = ("acc", "sens", "spec", "logloss")


def probabilities(samples: list, shift: str) -> np.ndarray:
    config = configuration.load()
    classifier = plugin_manager(config).hook.ctai_classifier(config=config)
    out = []
    for i in range(0, len(samples), 64):
        x = np.stack([to_model_input(SHIFTS[shift](read_gray(s.path)), classifier.input_size)
                      for s in samples[i:i + 64]]).astype(np.float32)
        out.append(classifier.predict(x))
    return np.concatenate(out)


def report(y: np.ndarray, probs: np.ndarray, patients: list[str]) -> None:
    comparison = calibration.compare(y, probs, patients, 0.95, 5, False)
    print(calibration.table(comparison, 0.95))
    unique = sorted(set(patients))
    halves: dict[str, list[dict]] = {m: [] for m in calibration.METHODS}
    for seed in range(10):
        half = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2])
        a = np.array([p in half for p in patients])
        for method in calibration.METHODS:
            temperature, bias = calibration.fit(y[a], probs[a], method, False, 0.95)
            halves[method].append(cases.summary(y[~a], calibration.apply(probs[~a], temperature, bias)))
    for method, rows in halves.items():
        print(f"halves {method:<17} " + "  ".join(
            f"{k} {np.mean([r[k] for r in rows]):.3f} (lowest {np.min([r[k] for r in rows]):.3f})" for k in KEYS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    parser.add_argument("--cache", type=Path, help="keep the probabilities here (.npz) and reuse them")
    data.add_split_arguments(parser)
    args = parser.parse_args(argv)
    _, val, _ = data.load(args.data, args.val_fraction, args.split_seed)
    cached = dict(np.load(args.cache)) if args.cache and args.cache.exists() else {}
    for shift in SHIFTS:
        if shift not in cached:
            cached[shift] = probabilities(val, shift)
            if args.cache:
                np.savez(args.cache, **cached)
        print(f"\n== {shift}: {len(val)} images")
        report(np.array([s.label for s in val]), cached[shift], [s.patient for s in val])


if __name__ == "__main__":
    main()
