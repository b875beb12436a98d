"""Per-site calibration: the model's own probabilities moved by a temperature and per-class
biases on their logarithms, ``softmax(log p / t + b)``, fitted on the site's labelled cases.

A new acquisition batch mostly moves the model's scores as a whole (the held-out split's
normals come out "viral" more often); a bias per class undoes such a shift with few
parameters, and a temperature corrects over- or under-confidence. Which of them is fitted is
chosen by a cross-validated comparison, by patient, on the site's own cases (``compare``).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ctai.site import cases
from ctai.site.cases import NORMAL, nll
from ctai.types import CLASSES

#: The candidate methods, simplest first.
METHODS = ("none", "bias", "temperature+bias")
#: A simpler method is chosen when its cross-validated log-loss is within this of the best:
#: closer than that is noise between folds (the one-standard-error rule's spirit).
TOLERANCE = 0.005


@dataclass(frozen=True)
class Calibration:
    """One fitted version, as stored and named in every output."""

    id: str
    created: str
    model: str
    method: str
    temperature: float
    bias: list[float]
    cases: dict[str, int]
    patients: int
    source: str
    #: The cross-validated operating point and its 95 % intervals (``compare``).
    expected: dict[str, Any] = field(default_factory=dict)
    #: Share of each predicted label on the site's cases after calibration (``ctai.site.drift``).
    label_shares: dict[str, float] = field(default_factory=dict)
    mean_top_probability: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_id(now: datetime) -> str:
    """A calibration ID: its UTC time and a random suffix, e.g. ``site-20261204T1830-3fa2``."""
    return f"site-{now.astimezone(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def apply(probs: np.ndarray, temperature: float, bias: np.ndarray) -> np.ndarray:
    """``softmax(log probs / temperature + bias)`` row by row."""
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature + np.asarray(bias)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit(y: np.ndarray, probs: np.ndarray, method: str, tie_kinds: bool, min_sensitivity: float
        ) -> tuple[float, np.ndarray]:
    """Temperature and biases (normal's 0) of least NLL for ``method``, then, if the fitted
    sensitivity is below ``min_sensitivity``, normal's bias lowered until it is not. With
    ``tie_kinds`` bacterial and viral share one bias (too few of either to split them)."""
    from scipy.optimize import minimize  # imported when used: seconds that classifying never needs

    if method == "none":
        return 1.0, np.zeros(len(CLASSES))
    scaled = method == "temperature+bias"

    def unpack(params: np.ndarray) -> tuple[float, np.ndarray]:
        t = float(np.exp(params[0])) if scaled else 1.0
        b = params[1:] if scaled else params
        return t, np.r_[0.0, b[0], b[0] if tie_kinds else b[1]]

    size = (1 if tie_kinds else 2) + scaled
    result = minimize(lambda p: nll(y, apply(probs, *unpack(p))), np.zeros(size), method="L-BFGS-B",
                      bounds=[(-2.0, 2.0)] * scaled + [(-8.0, 8.0)] * (size - scaled))
    temperature, bias = unpack(result.x)
    return temperature, _floored(y, apply(probs, temperature, bias), bias, min_sensitivity)


def _floored(y: np.ndarray, probs: np.ndarray, bias: np.ndarray, floor: float) -> np.ndarray:
    """``bias`` with normal's lowered just enough that, of these pneumonias, at least ``floor``
    plus one standard error are called pneumonia (arg max not normal): the margin keeps the
    floor on new cases, which the cross-validation in ``compare`` checks."""
    logp = np.log(np.clip(probs[y != NORMAL], 1e-12, 1.0))
    margins = np.sort(logp[:, NORMAL] - logp[:, NORMAL + 1:].max(axis=1))[::-1]
    target = min(1.0, floor + np.sqrt(floor * (1.0 - floor) / max(len(margins), 1)))
    allowed = int(np.floor((1.0 - target) * len(margins) + 1e-9))
    if allowed >= len(margins) or margins[allowed] < 0:
        return bias
    return bias - np.eye(len(CLASSES))[NORMAL] * (margins[allowed] + 1e-6)


def out_of_fold(y: np.ndarray, probs: np.ndarray, patients: list[str], method: str, tie_kinds: bool,
                min_sensitivity: float, folds: int) -> np.ndarray:
    """Each case's probabilities from a fit on the other folds (folds of whole patients,
    stratified by label)."""
    from sklearn.model_selection import StratifiedGroupKFold

    result = np.array(probs, dtype=np.float64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    for train, test in splitter.split(probs, y, groups=patients):
        temperature, bias = fit(y[train], probs[train], method, tie_kinds, min_sensitivity)
        result[test] = apply(probs[test], temperature, bias)
    return result


@dataclass(frozen=True)
class Comparison:
    """Every candidate's cross-validated numbers, and the chosen one."""

    rows: dict[str, dict[str, float | None]]
    chosen: str
    before: dict[str, Any]
    after: dict[str, Any]
    tie_kinds: bool


def compare(y: np.ndarray, probs: np.ndarray, patients: list[str], min_sensitivity: float, folds: int,
            tie_kinds: bool, rounds: int = 1000) -> Comparison:
    """Cross-validate every method by patient; choose the simplest of least log-loss (``TOLERANCE``)
    among those that keep sensitivity at or above ``min_sensitivity`` (or the model's own, if lower).
    ``before`` and ``after``: the model's own and the chosen method's numbers with 95 % intervals."""
    predictions = {m: out_of_fold(y, probs, patients, m, tie_kinds, min_sensitivity, folds) for m in METHODS}
    rows = {m: cases.summary(y, p) for m, p in predictions.items()}
    floor = min(min_sensitivity, rows["none"]["sens"] or 0.0)
    allowed = [m for m in METHODS if (rows[m]["sens"] or 0.0) >= floor - 1e-9]
    best = min(rows[m]["logloss"] for m in allowed)
    chosen = next(m for m in allowed if rows[m]["logloss"] <= best + TOLERANCE)
    return Comparison(rows, chosen,
                      {**rows["none"], "intervals": cases.intervals(y, predictions["none"], patients, rounds)},
                      {**rows[chosen], "intervals": cases.intervals(y, predictions[chosen], patients, rounds)},
                      tie_kinds)


def table(comparison: Comparison, floor: float) -> str:
    """The comparison as ``ctai site calibrate`` prints it: every method's cross-validated numbers,
    then the model's own and the chosen one with 95 % intervals."""
    keys = {"acc": "3-class acc.", "sens": "sensitivity", "spec": "specificity", "logloss": "log-loss", "ece": "ECE"}
    shown = {"none": "model's own", "bias": "bias", "temperature+bias": "temperature+bias"}

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"{'cross-validated':<20}" + "".join(f"{k:>14}" for k in keys.values())]
    lines += [f"{shown[m]:<20}" + "".join(f"{fmt(row[k]):>14}" for k in keys) for m, row in comparison.rows.items()]
    lines += ["", f"chosen: {shown[comparison.chosen]} (the simplest within {TOLERANCE} of the least cross-validated "
                  f"log-loss, among those with sensitivity >= {floor:.2f} or the model's own)",
              f"{'':<20}{'before':>26}{'after':>26}"]
    for key, name in keys.items():
        cells = []
        for numbers in (comparison.before, comparison.after):
            interval = numbers["intervals"].get(key)
            span = f" ({fmt(interval[0])}-{fmt(interval[1])})" if interval else ""
            cells.append(fmt(numbers[key]) + span)
        lines.append(f"{name:<20}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)
