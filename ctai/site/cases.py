"""A site's labelled cases: the model's own probabilities, the truth, the patient, and what the
headers say (modality, manufacturer, age), with the numbers a go-live decision reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctai import evaluation as metrics
from ctai.types import CLASSES

NORMAL, BACTERIAL, VIRAL = (CLASSES.index(c) for c in ("normal", "bacterial", "viral"))
#: The label of a pneumonia whose kind the site's records do not say (RIS "pneumonia").
PNEUMONIA = len(CLASSES)
LABELS = {"normal": NORMAL, "bacterial": BACTERIAL, "viral": VIRAL, "pneumonia": PNEUMONIA}
NAMES = {index: name for name, index in LABELS.items()}


@dataclass
class Cases:
    """Parallel lists, one entry per labelled case."""

    names: list[str] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    #: Per case: modality, manufacturer, age (years) where known.
    headers: list[dict[str, object]] = field(default_factory=list)
    #: Images the pipeline refused (input gate, modality, body part), with why: not counted.
    refused: list[str] = field(default_factory=list)

    def add(self, name: str, label: int, probs: list[float], patient: str, headers: dict[str, object]) -> None:
        self.names.append(name)
        self.y.append(label)
        self.probs.append(probs)
        self.patients.append(patient)
        self.headers.append(headers)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.y, dtype=np.int64), np.array(self.probs, dtype=np.float64).reshape(-1, len(CLASSES))

    def counts(self) -> dict[str, int]:
        return {name: self.y.count(index) for name, index in LABELS.items()}


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the truth; a ``PNEUMONIA`` label counts p(bacterial) + p(viral)."""
    padded = np.concatenate([probs, 1.0 - probs[:, NORMAL:NORMAL + 1]], axis=1)
    return float(-np.log(np.clip(padded[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def summary(y: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """``metrics.summary``'s numbers where some pneumonias have no kind: 3-class accuracy, the
    bacterial-vs-viral AUC and ECE over the cases with one, the rest over all."""
    from sklearn.metrics import roc_auc_score  # imported when used: seconds that classifying never needs

    known = y != PNEUMONIA
    three = metrics.summary(metrics.compute(y[known], probs[known])) if known.any() else {}
    sick, called = y != NORMAL, probs.argmax(axis=1) != NORMAL
    auc = float(roc_auc_score(sick, 1.0 - probs[:, NORMAL])) if 0 < sick.sum() < len(y) else None
    return {"acc": three.get("acc"), "bal_acc": three.get("bal_acc"),
            "sens": float(called[sick].mean()) if sick.any() else None,
            "spec": float((~called[~sick]).mean()) if (~sick).any() else None,
            "auc_pn": auc, "auc_bv": three.get("auc_bv"), "logloss": nll(y, probs), "ece": three.get("ece")}


def intervals(y: np.ndarray, probs: np.ndarray, patients: list[str], rounds: int = 1000) -> dict:
    """95 % bootstrap intervals of ``summary`` by patient."""
    return metrics.intervals(y, probs, patients, rounds=rounds, statistic=summary)
