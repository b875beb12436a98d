"""Evaluation metrics for the three-class classifier (used by ``ctai evaluate`` and training)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ctai.types import CLASSES

NORMAL, BACTERIAL, VIRAL = (CLASSES.index(c) for c in ("normal", "bacterial", "viral"))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities floored at 1e-12)."""
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)).mean())


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score  # imported when used: seconds that classifying never needs

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def compute(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """All the numbers ``ctai evaluate`` prints, as a JSON-ready dict."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=range(len(CLASSES)))
    per_class = {}
    for i, name in enumerate(CLASSES):
        predicted, actual = cm[:, i].sum(), cm[i, :].sum()
        per_class[name] = {
            "precision": float(cm[i, i] / predicted) if predicted else None,
            "recall": float(cm[i, i] / actual) if actual else None,
            "n": int(actual),
        }
    sick_true = y_true != NORMAL
    sick_pred = y_pred != NORMAL
    sick_score = 1.0 - probs[:, NORMAL]
    pneumonia = y_true != NORMAL
    viral_true = y_true[pneumonia] == VIRAL
    viral_score = probs[pneumonia, VIRAL] / np.maximum(probs[pneumonia, BACTERIAL] + probs[pneumonia, VIRAL], 1e-12)
    viral_pred = probs[pneumonia, VIRAL] > probs[pneumonia, BACTERIAL]
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "confusion_matrix": {"labels": list(CLASSES), "rows_true_columns_predicted": cm.tolist()},
        "per_class": per_class,
        "pneumonia_vs_normal": {
            "accuracy": float((sick_pred == sick_true).mean()),
            "sensitivity": float(sick_pred[sick_true].mean()) if sick_true.any() else None,
            "specificity": float((~sick_pred[~sick_true]).mean()) if (~sick_true).any() else None,
            "roc_auc": _auc(sick_true, sick_score),
        },
        "bacterial_vs_viral": {
            "n": int(pneumonia.sum()),
            "accuracy": float((viral_pred == viral_true).mean()) if pneumonia.any() else None,
            "roc_auc": _auc(viral_true, viral_score),
        },
        "log_loss": log_loss(y_true, probs),
        "brier_score": float(((probs - np.eye(len(CLASSES))[y_true]) ** 2).sum(axis=1).mean()),
        "expected_calibration_error": expected_calibration_error(y_true, probs),
    }


def summary(report: dict[str, Any]) -> dict[str, float | None]:
    """The headline numbers of a ``compute`` report, flat: 3-class and balanced accuracy,
    sensitivity and specificity for pneumonia, both ROC AUCs, log-loss and ECE."""
    pn, bv = report["pneumonia_vs_normal"], report["bacterial_vs_viral"]
    return {"acc": report["accuracy"], "bal_acc": report["balanced_accuracy"],
            "sens": pn["sensitivity"], "spec": pn["specificity"], "auc_pn": pn["roc_auc"],
            "auc_bv": bv["roc_auc"], "logloss": report["log_loss"], "ece": report["expected_calibration_error"]}


def intervals(y_true: np.ndarray, probs: np.ndarray, patients: list[str], rounds: int = 1000,
              level: float = 0.95, seed: int = 0,
              statistic: Callable[[np.ndarray, np.ndarray], dict[str, float | None]] | None = None
              ) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals (Efron and Tibshirani 1993) of the ``summary`` numbers (or
    of ``statistic``'s), resampling whole patients: images of one patient are not independent,
    so resampling images would make the intervals too narrow."""
    statistic = statistic or (lambda y, p: summary(compute(y, p)))
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    by_patient = [np.flatnonzero(np.asarray(patients) == p) for p in dict.fromkeys(patients)]
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(rounds):
        picked = np.concatenate([by_patient[k] for k in rng.integers(len(by_patient), size=len(by_patient))])
        rows.append(statistic(y_true[picked], probs[picked]))
    tail = (1 - level) / 2 * 100
    return {key: None if any(r[key] is None for r in rows)
            else [float(v) for v in np.percentile([r[key] for r in rows], [tail, 100 - tail])]
            for key in rows[0]}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_report(report: dict[str, Any]) -> str:
    """The metrics as a readable text table."""
    cm = report["confusion_matrix"]["rows_true_columns_predicted"]
    lines = [
        f"images              {report['n']}",
        f"3-class accuracy    {_fmt(report['accuracy'])}",
        f"balanced accuracy   {_fmt(report['balanced_accuracy'])}",
        "",
        "confusion matrix (rows: true, columns: predicted)",
        "            " + "".join(f"{c:>11}" for c in CLASSES),
        *(f"{c:<12}" + "".join(f"{v:>11}" for v in row) for c, row in zip(CLASSES, cm, strict=True)),
        "",
        f"{'class':<12}{'precision':>11}{'recall':>11}{'n':>7}",
        *(f"{c:<12}{_fmt(v['precision']):>11}{_fmt(v['recall']):>11}{v['n']:>7}"
          for c, v in report["per_class"].items()),
        "",
    ]
    pn, bv = report["pneumonia_vs_normal"], report["bacterial_vs_viral"]
    lines += [
        f"pneumonia vs normal: accuracy {_fmt(pn['accuracy'])}  sensitivity {_fmt(pn['sensitivity'])}  "
        f"specificity {_fmt(pn['specificity'])}  ROC AUC {_fmt(pn['roc_auc'])}",
        f"bacterial vs viral:  accuracy {_fmt(bv['accuracy'])}  ROC AUC {_fmt(bv['roc_auc'])}  (n={bv['n']})",
        f"log-loss {_fmt(report['log_loss'])}  Brier score {_fmt(report['brier_score'])}  "
        f"expected calibration error {_fmt(report['expected_calibration_error'])}",
    ]
    if report.get("intervals"):
        names = {"acc": "3-class accuracy", "sens": "sensitivity", "spec": "specificity", "auc_pn": "pneumonia AUC",
                 "auc_bv": "bacterial-vs-viral AUC", "logloss": "log-loss"}
        lines += ["", "95 % intervals (bootstrap over patients):"]
        lines += [f"  {name:<24}{_fmt(report['intervals'][key][0])} to {_fmt(report['intervals'][key][1])}"
                  for key, name in names.items() if report["intervals"][key] is not None]
    if report.get("failed"):
        lines.append(f"not classified      {report['failed']}")
    return "\n".join(lines)
