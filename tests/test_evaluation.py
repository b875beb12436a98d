"""Bootstrap intervals of the evaluation metrics (``ctai.evaluation.intervals``)."""

import numpy as np

from ctai import evaluation


def _predictions(patients: int, images_each: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each patient's images share a label and a prediction (right or wrong), as a patient's
    films of one visit tend to."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 3, patients), images_each)
    probs = rng.dirichlet(np.ones(3), patients).repeat(images_each, axis=0)
    probs[np.arange(len(y)), y] += np.repeat(rng.random(patients) < 0.8, images_each) * 2
    probs /= probs.sum(axis=1, keepdims=True)
    return y, probs, [f"p{i}" for i in np.repeat(np.arange(patients), images_each)]


def test_intervals_hold_the_estimate_and_repeat_under_a_seed():
    y, probs, patients = _predictions(300, 2)
    ci = evaluation.intervals(y, probs, patients, rounds=200)
    point = evaluation.summary(evaluation.compute(y, probs))
    for key in ("acc", "sens", "spec", "auc_pn", "auc_bv", "logloss"):
        low, high = ci[key]
        assert low <= point[key] <= high, key
    assert evaluation.intervals(y, probs, patients, rounds=200) == ci


def test_intervals_resample_patients_not_images():
    y, probs, patients = _predictions(200, 3)
    by_patient = evaluation.intervals(y, probs, patients, rounds=300)["acc"]
    by_image = evaluation.intervals(y, probs, [str(i) for i in range(len(y))], rounds=300)["acc"]
    assert by_patient[1] - by_patient[0] > 1.3 * (by_image[1] - by_image[0])


def test_an_interval_is_none_where_the_metric_is():
    y, probs, patients = _predictions(50, 1)
    y[:] = 1  # no normal film: no specificity, no pneumonia AUC
    ci = evaluation.intervals(y, probs, patients, rounds=20)
    assert ci["spec"] is None and ci["auc_pn"] is None and ci["acc"] is not None
