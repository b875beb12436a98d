"""Calibration: bias-corrected temperature scaling (BCTS; Guo et al. 2017, "On Calibration of
Modern Neural Networks"; Alexandari et al. 2020, "Maximum Likelihood with Bias-Corrected
Calibration is Hard-To-Beat at Label Shift Adaptation").

One temperature T and one bias per class, fitted on the validation split by minimising the
negative log-likelihood of softmax(logits / T + b). The bias undoes the shift in class priors
that class-balanced training leaves in the logits. Refit an exported model on a split with

    python -m training.calibrate --model ctai/model/artifact --data ../shared/data/chest_xray/train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from ctai.evaluation import log_loss
from ctai.site.drift import expectation


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrated(logits: np.ndarray, temperature: float, bias: np.ndarray) -> np.ndarray:
    return softmax(logits / temperature + bias)


def fit(logits: np.ndarray, y: np.ndarray, priors: np.ndarray | None = None) -> tuple[float, list[float]]:
    """The temperature and class biases (first class's bias fixed at 0) of least validation NLL.

    With ``priors``, the biases are then moved from the validation split's class frequencies to
    those priors (Saerens et al. 2002, "Adjusting the Outputs of a Classifier to New a Priori
    Probabilities"), so that the probabilities hold where the classes are that common.
    """
    classes = logits.shape[1]

    def loss(params: np.ndarray) -> float:
        return log_loss(y, calibrated(logits, float(np.exp(params[0])), np.r_[0.0, params[1:]]))

    result = minimize(loss, np.zeros(classes), method="L-BFGS-B",
                      bounds=[(-3.0, 3.0)] + [(-5.0, 5.0)] * (classes - 1))
    bias = np.r_[0.0, result.x[1:]]
    if priors is not None:
        frequencies = np.bincount(y, minlength=classes) / len(y)
        bias += np.log(np.asarray(priors) / np.sum(priors)) - np.log(frequencies)
        bias -= bias[0]
    return float(np.exp(result.x[0])), [float(b) for b in bias]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The calibration's options, shared by every command that fits it."""
    parser.add_argument("--priors", type=float, nargs=3, metavar=("NORMAL", "BACTERIAL", "VIRAL"),
                        help="class prevalence the probabilities are for (default: the validation split's)")


def main(argv=None) -> None:
    from ctai import evaluation
    from ctai.model.backend import KerasClassifier
    from training import data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="model folder (model.json, and model.keras or model.f16.npz)")
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    data.add_split_arguments(p)
    add_arguments(p)
    p.add_argument("--predictions", type=Path, help="also save the validation labels and probabilities here (.npz)")
    args = p.parse_args(argv)
    classifier = KerasClassifier(args.model)
    _, val, _ = data.load(args.data, args.val_fraction, args.split_seed)
    x, y = data.load_arrays(val, classifier.input_size)
    logits = classifier.outputs(x).logits
    temperature, bias = fit(logits, y, args.priors)
    probs = calibrated(logits, temperature, np.array(bias))
    meta_path = args.model / "model.json"
    meta = json.loads(meta_path.read_text())
    meta.update(temperature=temperature, bias=bias, priors=args.priors, expected=expectation(probs))
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if args.predictions:
        np.savez(args.predictions, y=y, probs=probs)
    report = evaluation.compute(y, probs)
    report["intervals"] = evaluation.intervals(y, probs, [s.patient for s in val])
    print(json.dumps({"temperature": temperature, "bias": bias, "validation": report}, indent=2))


if __name__ == "__main__":
    main()
