"""Per-site calibration's arithmetic (``ctai.site.calibration``): what it fits, what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from ctai.site import calibration
from ctai.site.cases import PNEUMONIA, Cases, nll, summary
from ctai.site.workflow import Refused, _check_counts


def site(n: int = 600, normal_shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, model probabilities and patients of a synthetic site: the exact posteriors of
    Gaussian scores, then normal's logit moved by ``normal_shift`` (a new acquisition batch)."""
    rng = np.random.default_rng(seed)
    priors = np.array([0.35, 0.4, 0.25])
    y = rng.choice(3, size=n, p=priors)
    scores = rng.normal(0.0, 1.0, (n, 3)) + 3.0 * np.eye(3)[y]
    logits = 3.0 * scores + np.log(priors)
    logits[:, 0] += normal_shift
    return y, np.exp(logits - logsumexp(logits, axis=1, keepdims=True)), [f"p{i // 2}" for i in range(n)]


def test_no_site_calibration_is_exactly_the_identity():
    _, probs, _ = site(50)
    np.testing.assert_allclose(calibration.apply(probs, 1.0, np.zeros(3)), probs, atol=1e-12)


def test_a_shifted_site_gets_a_bias_that_restores_specificity_cross_validated():
    y, probs, patients = site(normal_shift=-3.0)
    comparison = calibration.compare(y, probs, patients, 0.95, 5, False, rounds=50)
    assert comparison.chosen in ("bias", "temperature+bias")
    assert comparison.after["spec"] > comparison.before["spec"] + 0.1
    assert comparison.after["sens"] >= 0.95
    assert comparison.after["logloss"] < comparison.before["logloss"]
    low, high = comparison.after["intervals"]["spec"]
    assert low <= comparison.after["spec"] <= high


def test_a_site_like_the_validation_split_keeps_the_models_own():
    y, probs, patients = site()
    assert calibration.compare(y, probs, patients, 0.95, 5, False, rounds=20).chosen == "none"


def test_the_sensitivity_floor_holds_where_the_best_fit_would_cross_it():
    y, probs, _ = site(normal_shift=+1.5, seed=3)  # a site whose pneumonias look normal: NLL wants them normal
    free = calibration.apply(probs, *calibration.fit(y, probs, "bias", False, 0.0))
    floored = calibration.apply(probs, *calibration.fit(y, probs, "bias", False, 0.99))
    assert summary(y, free)["sens"] < 0.99 <= summary(y, floored)["sens"]


def test_bacterial_and_viral_tied_move_together():
    y, probs, _ = site(normal_shift=-3.0)
    _, bias = calibration.fit(y, probs, "bias", True, 0.95)
    assert bias[1] == bias[2]


def test_a_pneumonia_of_unstated_kind_counts_bacterial_plus_viral():
    probs = np.array([[0.2, 0.5, 0.3]])
    assert nll(np.array([PNEUMONIA]), probs) == pytest.approx(-np.log(0.8))


def test_too_few_cases_are_refused_with_the_numbers_and_the_setting():
    cases = Cases()
    for i in range(40):
        cases.add(f"n{i}", 0, [0.8, 0.1, 0.1], f"p{i}", {})
    for i in range(12):
        cases.add(f"b{i}", 1, [0.1, 0.8, 0.1], f"q{i}", {})
    with pytest.raises(Refused, match=r"40 normal and 12 pneumonia; at least 30 of each.*min_cases_per_class"):
        _check_counts(cases, 30)
    for i in range(30):
        cases.add(f"x{i}", PNEUMONIA, [0.1, 0.8, 0.1], f"r{i}", {})
    assert _check_counts(cases, 30) is True  # enough pneumonia, too few of each kind: they move together
