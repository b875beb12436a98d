"""Write the model card's figures (confusion matrix, ROC curves, reliability diagram) from a
training run's validation predictions, and the shift benchmark's from its JSON report.

    python -m training.model_card --work training-work --out docs/img [--shift shift.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from ctai.evaluation import BACTERIAL, NORMAL, VIRAL  # noqa: E402
from ctai.types import CLASSES  # noqa: E402


def confusion(y: np.ndarray, probs: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y, probs.argmax(1), labels=range(len(CLASSES)),
                                            display_labels=CLASSES, ax=ax, colorbar=False, cmap="Blues")
    ax.set_title("Validation split (by patient)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def roc(y_true: np.ndarray, score: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    RocCurveDisplay.from_predictions(y_true, score, ax=ax, name="ctai")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reliability(y: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10) -> None:
    confidence, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    centres, accuracy = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            centres.append(confidence[in_bin].mean())
            accuracy.append(correct[in_bin].mean())
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.plot(centres, accuracy, "o-", label="ctai (temperature-scaled)")
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on the validation split")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def shift_figure(report: dict, column: str, title: str, path: Path) -> None:
    """One metric per shift for each model of a ``benchmarks/robustness.py --json`` report."""
    labels = [f"{name} {strength}" if strength != "-" else name for name, strength in report["shifts"]]
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(labels) + 1.2))
    height = 0.8 / len(report["models"])
    for i, model in enumerate(report["models"]):
        values = [row[column] for row in model["rows"]]
        ax.barh(np.arange(len(labels)) + i * height, values, height, label=model["version"])
    ax.set_yticks(np.arange(len(labels)) + 0.4 - height / 2, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(column)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("training-work"))
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--shift", type=Path, help="a benchmarks/robustness.py --json report to draw too")
    args = p.parse_args(argv)
    data = np.load(args.work / "val_predictions.npz")
    y, probs = data["y"], data["probs"]
    args.out.mkdir(parents=True, exist_ok=True)
    confusion(y, probs, args.out / "confusion-matrix.png")
    roc(y != NORMAL, 1 - probs[:, NORMAL], "Pneumonia vs normal", args.out / "roc-pneumonia.png")
    sick = y != NORMAL
    viral_score = probs[sick, VIRAL] / (probs[sick, VIRAL] + probs[sick, BACTERIAL])
    roc(y[sick] == VIRAL, viral_score, "Viral vs bacterial (pneumonia only)", args.out / "roc-viral.png")
    reliability(y, probs, args.out / "reliability.png")
    if args.shift:
        report = json.loads(args.shift.read_text())
        shift_figure(report, "spec", "Specificity under acquisition shifts (validation split)",
                     args.out / "shift-specificity.png")
        shift_figure(report, "acc", "3-class accuracy under acquisition shifts (validation split)",
                     args.out / "shift-accuracy.png")
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
