"""Write the model card's figures (confusion matrix, ROC curves, reliability diagram) from a
training run's validation predictions.

    python -m training.model_card --work training-work --out docs/img
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from ctai.metrics import BACTERIAL, NORMAL, VIRAL  # noqa: E402
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("training-work"))
    p.add_argument("--out", type=Path, default=Path("docs/img"))
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
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
