"""Drift: statistics of the last studies (a rolling window of finished jobs) against what is
expected of them, the site's validated period when there is one, else the model's validation
split (``expected`` in the model's ``model.json``).

Each statistic is a share (of a label or of the "atypical" flag among classified studies, of a
refusal reason among all)
or the mean top probability; its range is the expectation plus or minus ``drift_z`` standard
errors of a window of this size (and at least ``drift_min_change``). A statistic outside its
range is an alarm: ``/healthz`` says "degraded", the gauge ``ctai_drift_alarm`` is 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from ctai.config import Config
from ctai.model.backend import model_meta
from ctai.results import DONE, FINISHED, JobRecord, JobStore, refusal_reason
from ctai.site import state
from ctai.site.store import SiteStore
from ctai.types import CLASSES

#: Refusal reasons (``ctai.results.refusal_reason``).
REASONS = ("modality", "body_part", "not_chest", "intended_use", "atypical", "unreadable")


@dataclass(frozen=True)
class Statistic:
    name: str
    observed: float
    expected: float
    low: float
    high: float
    n: int

    @property
    def alarm(self) -> bool:
        return not self.low <= self.observed <= self.high

    def describe(self) -> str:
        return (f"{self.name} {self.observed:.2f} over the last {self.n} studies, expected {self.expected:.2f} "
                f"(range {self.low:.2f} to {self.high:.2f})")


@dataclass(frozen=True)
class Baseline:
    """What a window of studies should look like, and where that comes from."""

    source: str
    label_shares: dict[str, float]
    mean_top_probability: float
    refusal_rates: dict[str, float]
    #: The share of classified studies flagged atypical (``ctai.builtin.typicality``).
    atypical_share: float = 0.0


def model_baseline(config: Config) -> Baseline | None:
    """The expectation stored with the model (its validation split), if it has one."""
    expected = model_meta(config["model"]["path"]).get("expected")
    if not expected:
        return None
    return Baseline(f"the model's validation split ({expected['n']} images)", expected["label_shares"],
                    expected["mean_top_probability"], {}, expected.get("atypical_share", 0.0))


def site_baseline(config: Config) -> Baseline | None:
    """The site's last validated period (``ctai site validate`` or ``calibrate``), if it was
    measured under the calibration now in force."""
    text = SiteStore(config).get("baseline.json")
    if not text:
        return None
    found = json.loads(text)
    active = state.active(config)
    if found.get("calibration") != (active.id if active else None):
        return None
    model = model_baseline(config)
    return Baseline(f"this site's validated period ({found['n']} cases, {found['when'][:10]})",
                    found["label_shares"], found["mean_top_probability"], found.get("refusal_rates", {}),
                    model.atypical_share if model else 0.0)


def expectation(probs: np.ndarray) -> dict[str, object]:
    """What a window of studies like these should show: the share of each predicted label and
    the mean top probability (stored as ``expected`` in ``model.json`` by ``training.calibrate``)."""
    predicted = probs.argmax(axis=1)
    shares = {c: round(float((predicted == i).mean()), 4) for i, c in enumerate(CLASSES)}
    return {"n": len(probs), "label_shares": shares,
            "mean_top_probability": round(float(probs.max(axis=1).mean()), 4)}


def save_baseline(config: Config, calibration: str | None, when: str, probs: np.ndarray) -> None:
    """Keep ``probs`` (the site's cases under ``calibration``) as the site's validated period."""
    SiteStore(config).put("baseline.json", json.dumps({"calibration": calibration, "when": when,
                                                        **expectation(probs)}, indent=2))


def window(config: Config) -> list[JobRecord]:
    """The last ``[site] drift_window`` finished studies."""
    size = int(config["site"]["drift_window"])
    return [r for r in JobStore(config).latest(size * 2) if r.status in FINISHED][:size]


def _range(expected: float, n: int, z: float, min_change: float, variance: float) -> tuple[float, float]:
    half = max(z * math.sqrt(variance / max(n, 1)), min_change)
    return expected - half, expected + half


def statistics(records: list[JobRecord], baseline: Baseline, z: float, min_change: float) -> list[Statistic]:
    """Each statistic of ``records`` with its expectation and range."""
    done = [r for r in records if r.status == DONE and r.probabilities]
    found = []
    if done:
        n = len(done)
        for label in CLASSES:
            share = sum(r.label == label for r in done) / n
            p = baseline.label_shares.get(label, 0.0)
            found.append(Statistic(f"share of {label}", share, p, *_range(p, n, z, min_change, p * (1 - p)), n))
        top = sum(max(r.probabilities.values()) for r in done) / n
        m = baseline.mean_top_probability
        found.append(Statistic("mean top probability", top, m, *_range(m, n, z, min_change, m * (1 - m)), n))
        flagged = sum(any(f["code"] == "atypical" for f in (r.details or {}).get("flags", [])) for r in done) / n
        a = baseline.atypical_share
        found.append(Statistic("share flagged atypical", flagged, a, *_range(a, n, z, min_change, a * (1 - a)), n))
    if records:
        n = len(records)
        reasons = [refusal_reason(part.strip()) for r in records if r.status != DONE and r.error
                   for part in r.error.split(";")[:1]]
        for reason in REASONS:
            rate = reasons.count(reason) / n
            p = baseline.refusal_rates.get(reason, 0.0)
            found.append(Statistic(f"refusal rate ({reason})", rate, p, *_range(p, n, z, min_change, p * (1 - p)),
                                   n))
    return found


@dataclass(frozen=True)
class Report:
    baseline: str
    statistics: list[Statistic]
    judged: bool

    @property
    def alarms(self) -> list[str]:
        return [s.describe() for s in self.statistics if s.alarm] if self.judged else []


def check(config: Config) -> Report:
    """The window's statistics against the site's baseline (else the model's); judged only once
    the window holds ``[site] drift_min_studies``."""
    settings = config["site"]
    baseline = site_baseline(config) or model_baseline(config)
    if baseline is None:
        return Report("none", [], False)
    records = window(config)
    found = statistics(records, baseline, float(settings["drift_z"]), float(settings["drift_min_change"]))
    return Report(baseline.source, found, len(records) >= int(settings["drift_min_studies"]))
