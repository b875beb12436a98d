"""Drift (``ctai.site.drift``): quiet on a stream like the expectation, an alarm within one
window when a new X-ray room's films all come out viral, on /healthz and in Prometheus."""

from __future__ import annotations

import json

import numpy as np

from ctai.monitoring import drift_alarms, health, site_metrics, wsgi_app
from ctai.results import DONE, SKIPPED, JobStore, Summary
from ctai.site import drift
from ctai.types import CLASSES, Job

EXPECTED = {"normal": 0.28, "bacterial": 0.46, "viral": 0.26}


def studies(store: JobStore, labels: list[str], start: int = 0) -> None:
    for i, label in enumerate(labels, start=start):
        probabilities = {c: 0.84 if c == label else 0.08 for c in CLASSES}
        store.finish(Job(f"study-{i}", "dicom-listener"), "owner", Summary(DONE, label, probabilities), 1.0)


def stream(n: int, seed: int) -> list[str]:
    return list(np.random.default_rng(seed).choice(CLASSES, size=n, p=list(EXPECTED.values())))


def test_an_unshifted_stream_stays_quiet(config):
    store = JobStore(config)
    for seed in range(3):  # three windows of studies like the model's validation split
        studies(store, stream(200, seed), start=seed * 200)
        report = drift.check(config)
        assert report.judged and report.alarms == [], report.alarms
    assert health({"worker": lambda: True}, alarms=lambda: drift_alarms(config))[1]["status"] == "ok"


def test_a_new_room_whose_films_all_come_out_viral_shows_within_one_window(config):
    store = JobStore(config)
    studies(store, stream(200, 0))
    studies(store, ["viral"] * 60, start=200)  # less than a third of the 200-study window
    alarms = drift.check(config).alarms
    assert any(a.startswith("share of viral") for a in alarms), alarms
    ok, body = health({"worker": lambda: True}, alarms=lambda: drift_alarms(config))
    assert ok and body["status"].startswith("degraded: ") and "share of viral 0.54" in body["status"]
    alarm = {s.labels["statistic"]: s.value for m in site_metrics(config) if m.name == "ctai_drift_alarm"
             for s in m.samples}
    assert alarm["share of viral"] == 1 and alarm["share of normal"] == 0

    answers = []
    app = wsgi_app(None, {"worker": lambda: True}, alarms=lambda: drift_alarms(config))
    body = b"".join(app({"PATH_INFO": "/healthz"}, lambda status, headers: answers.append(status)))
    assert answers == ["200 OK"] and json.loads(body)["status"].startswith("degraded")


def test_refusals_of_a_new_kind_show_too(config):
    store = JobStore(config)
    studies(store, stream(150, 1))
    for i in range(50):
        store.finish(Job(f"refused-{i}", "dicom-listener"), "owner",
                     Summary(SKIPPED, error="skipped: not a frontal chest radiograph (chest-image score 0.20)"), 0.1)
    assert any(a.startswith("refusal rate (not_chest)") for a in drift.check(config).alarms)


def test_too_few_studies_are_not_judged(config):
    studies(JobStore(config), ["viral"] * 20)
    report = drift.check(config)
    assert not report.judged and report.alarms == []


def test_the_sites_validated_period_replaces_the_models_expectation(config):
    probs = np.tile([0.9, 0.05, 0.05], (100, 1))  # a site where nearly every film is normal
    drift.save_baseline(config, None, "2026-12-01T10:00:00+00:00", probs)
    studies(JobStore(config), ["normal"] * 200)
    report = drift.check(config)
    assert report.baseline.startswith("this site's validated period (100 cases") and report.alarms == []


def test_a_room_whose_films_are_flagged_atypical_shows(config):
    store = JobStore(config)
    studies(store, stream(150, 2))
    flag = {"code": "atypical", "reason": "atypical image (typicality score 1.8, above 1)"}
    for i, label in enumerate(stream(50, 3)):
        probabilities = {c: 0.84 if c == label else 0.08 for c in CLASSES}
        store.finish(Job(f"flagged-{i}", "dicom-listener"), "owner",
                     Summary(DONE, label, probabilities, details={"flags": [flag]}), 1.0)
    alarms = drift.check(config).alarms
    assert any(a.startswith("share flagged atypical 0.25") for a in alarms), alarms
