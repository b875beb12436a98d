"""Operational metrics for Prometheus and a health check, served by ``ctai serve`` on their own port.

``GET /metrics`` (text exposition format, ``prometheus-client``) and ``GET /healthz`` (JSON,
200 when every check passes, else 503) on ``[metrics] bind:port``, loopback by default.

Two kinds of numbers: counters fed by the pipeline's hooks in this process (the ``metrics``
plugin calls ``job_finished`` and ``job_failed`` here), and gauges read from ctai's state each
time Prometheus scrapes (queue depth, outbox, model), so they are right whichever process
wrote that state.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from ctai.config import Config
from ctai.outbox import Outbox
from ctai.results import refusal_reason
from ctai.types import ModelInfo

log = logging.getLogger(__name__)
disable_created_metrics()  # no *_created series: they double every counter's lines for little use

#: Outbox channels always reported, 0 when empty: the built-in plugins' (``ctai_outbox_senders``).
CHANNELS = ("hl7", "cstore", "fhir", "stow", "orthanc")

JOBS = Counter("ctai_jobs", "Jobs run by this process, by source and outcome (done, skipped, failed; "
               "retry: a transient failure, tried again)", ["source", "status"], registry=None)
LATENCY = Histogram("ctai_classification_latency_seconds",
                    "Seconds from a job being queued to its images being classified and their results queued "
                    "for delivery", ["source"], registry=None,
                    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
REFUSALS = Counter("ctai_refusals", "Images not classified, by reason: modality, body_part, not_chest "
                   "(the input gate), intended_use (withheld: the header is outside the model's intended use), "
                   "atypical (withheld: unlike the training films), unreadable (could not be loaded or decoded)",
                   ["reason"], registry=None)
HOOKED = (JOBS, LATENCY, REFUSALS)


class StateCollector:
    """The gauges read at scrape time."""

    def __init__(self, config: Config, model: Callable[[], ModelInfo | None]) -> None:
        self.config = config
        self.model = model
        self.outbox = Outbox.from_config(config)
        self.queue = _queue(config)

    def collect(self) -> Iterator[Metric]:
        try:
            waiting = self.queue.pending_count()
        except Exception as exc:  # noqa: BLE001 - a queue that does not answer: no number; /healthz says so
            log.warning("metrics: the queue does not answer: %s", exc)
        else:
            depth = GaugeMetricFamily("ctai_queue_depth", "Jobs waiting in the queue")
            depth.add_metric([], waiting)
            yield depth
        counts = self.outbox.counts()
        channels = sorted(set(CHANNELS) | {channel for channel, _ in counts})
        for state, name, text in (("pending", "ctai_outbox_pending", "Outbox messages waiting to be sent"),
                                  ("dead", "ctai_outbox_dead_letters", "Outbox dead letters (see `ctai outbox`)")):
            family = GaugeMetricFamily(name, text, labels=["channel"])
            for channel in channels:
                family.add_metric([channel], counts.get((channel, state), 0))
            yield family
        if model := self.model():
            info = InfoMetricFamily("ctai_model", "The classifier in use")
            info.add_metric([], {"name": model.name, "version": model.version, "manufacturer": model.manufacturer})
            yield info
        yield from site_metrics(self.config)


def site_metrics(config: Config) -> Iterator[Metric]:
    """The site's mode and calibration (``ctai site``), and each drift statistic of the last studies."""
    from ctai.site import drift, state

    try:
        active, shadow, report = state.active(config), state.mode(config) == "shadow", drift.check(config)
    except Exception as exc:  # noqa: BLE001 - a store that does not answer: no numbers; /healthz says so
        log.warning("metrics: the site state cannot be read: %s", exc)
        return
    mode = GaugeMetricFamily("ctai_site_shadow", "1 in shadow mode (results recorded, nothing delivered), 0 live")
    mode.add_metric([], int(shadow))
    calibration = InfoMetricFamily("ctai_site_calibration", "The calibration in force: a site calibration's ID, "
                                   "or 'model' (the model's own)")
    calibration.add_metric([], {"id": active.id if active else "model"})
    families = {"observed": GaugeMetricFamily("ctai_drift_observed", "A drift statistic over the last studies "
                                              "([site] drift_window)", labels=["statistic"]),
                "expected": GaugeMetricFamily("ctai_drift_expected", "Its expectation (the site's validated period, "
                                              "else the model's validation split)", labels=["statistic"]),
                "alarm": GaugeMetricFamily("ctai_drift_alarm", "1 when the statistic is out of its range (and the "
                                           "window holds [site] drift_min_studies)", labels=["statistic"])}
    for statistic in report.statistics:
        families["observed"].add_metric([statistic.name], statistic.observed)
        families["expected"].add_metric([statistic.name], statistic.expected)
        families["alarm"].add_metric([statistic.name], int(report.judged and statistic.alarm))
    yield from (mode, calibration, *families.values())


def registry(config: Config, model: Callable[[], ModelInfo | None]) -> CollectorRegistry:
    """A registry with the hook-fed metrics and the state read at scrape time."""
    found = CollectorRegistry()
    for metric in HOOKED:
        found.register(metric)
    found.register(StateCollector(config, model))
    return found


def job_finished(source: str, status: str, refusals: list[str], latency: float | None) -> None:
    JOBS.labels(source, status).inc()
    for reason in refusals:
        REFUSALS.labels(refusal_reason(reason)).inc()
    if latency is not None:
        LATENCY.labels(source).observe(latency)


def job_failed(source: str, transient: bool) -> None:
    JOBS.labels(source, "retry" if transient else "failed").inc()


def _queue(config: Config) -> Any:
    """The job queue (``ctai.jobs``), imported here: the metrics plugin loads this module in every
    command, the queue (huey) only ``ctai serve`` needs."""
    from ctai import jobs

    return jobs.make_queue(config)


def queue_alive(config: Config) -> bool:
    """The queue's storage answers (the SQLite file, or the Redis server)."""
    try:
        _queue(config).pending_count()
    except Exception as exc:  # noqa: BLE001 - any failure means "not alive"; the reason is logged
        log.warning("healthz: the queue does not answer: %s", exc)
        return False
    return True


def orthanc_alive(config: Config, timeout: float = 3.0) -> bool:
    """Orthanc's REST API answers /system."""
    from ctai.orthanc.client import OrthancClient

    try:
        OrthancClient.from_config(config, timeout).system()
    except Exception as exc:  # noqa: BLE001
        log.warning("healthz: Orthanc does not answer: %s", exc)
        return False
    return True


def health_checks(config: Config, worker_alive: Callable[[], bool]) -> dict[str, Callable[[], bool]]:
    """What ``/healthz`` checks: the worker, the queue, and Orthanc when ctai uses one."""
    checks = {"worker": worker_alive, "queue": lambda: queue_alive(config)}
    if config["orthanc"]["run"] or config["orthanc"]["url"]:
        checks["orthanc"] = lambda: orthanc_alive(config)
    return checks


def health(checks: Mapping[str, Callable[[], bool]], ready: Callable[[], bool] = lambda: True,
           alarms: Callable[[], list[str]] = list) -> tuple[bool, dict[str, Any]]:
    """Whether all is well, and why not: "unhealthy" when a check fails (HTTP 503), "warming up"
    while the worker loads and converts its networks (``ready`` False; receiving already works),
    "degraded: ..." while ``alarms`` names a drift statistic out of its range (still 200)."""
    results = {name: bool(check()) for name, check in checks.items()}
    if not all(results.values()):
        return False, {"status": "unhealthy", "checks": results}
    if not ready():
        return False, {"status": "warming up", "checks": results}
    found = alarms()
    return True, {"status": ("degraded: " + "; ".join(found)) if found else "ok", "checks": results}


def drift_alarms(config: Config) -> list[str]:
    """The drift statistics out of their range (``ctai.site.drift``); none while they cannot be read."""
    from ctai.site import drift

    try:
        return drift.check(config).alarms
    except Exception as exc:  # noqa: BLE001 - the store's failure shows in the queue check
        log.warning("healthz: drift cannot be read: %s", exc)
        return []


def wsgi_app(registry: CollectorRegistry, checks: Mapping[str, Callable[[], bool]],
             ready: Callable[[], bool] = lambda: True, alarms: Callable[[], list[str]] = list) -> Callable:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            ok, body = health(checks, ready, alarms)
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"ctai metrics: see /metrics and /healthz\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        """Scrapes every few seconds would drown the log."""


class MetricsService:
    """The ``/metrics`` and ``/healthz`` endpoint (service API start/stop, ``ctai.serve``)."""

    name = "metrics"

    def __init__(self, config: Config, worker_alive: Callable[[], bool], worker_ready: Callable[[], bool],
                 model: Callable[[], ModelInfo | None]) -> None:
        self.config = config
        self.app = wsgi_app(registry(config, model), health_checks(config, worker_alive), worker_ready,
                            lambda: drift_alarms(config))
        self.server: WSGIServer | None = None

    def start(self) -> None:
        settings = self.config["metrics"]
        self.server = make_server(str(settings["bind"]), int(settings["port"]), self.app, ThreadingWSGIServer,
                                  handler_class=_QuietHandler)
        threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True).start()
        host, port = self.server.server_address[:2]
        log.info("metrics: http://%s:%d/metrics and /healthz", host, port)

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
