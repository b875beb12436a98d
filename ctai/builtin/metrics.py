"""Built-in plugin that feeds the Prometheus counters (``ctai.monitoring``) from the job hooks:
jobs by source and outcome, images refused by reason, and the latency from queued to done."""

from __future__ import annotations

import time

from ctai import hookimpl, monitoring
from ctai.config import Config
from ctai.errors import TransientError
from ctai.results import JobStore, summarize
from ctai.types import Failure, Job, Result


def queued_at(job: Job, config: Config) -> float | None:
    """When a job the worker runs (it adds option "started") was queued; None for others
    (``ctai classify``), which have no job record."""
    if "started" not in job.options:
        return None
    record = JobStore(config).get(job.id)
    return record.enqueued if record else None


@hookimpl
def ctai_job_finished(job: Job, results: list[Result], failures: list[Failure], config: Config) -> None:
    queued = queued_at(job, config)
    monitoring.job_finished(job.source, summarize(results, failures).status, [f.reason for f in failures],
                            time.time() - queued if queued else None)


@hookimpl
def ctai_job_failed(job: Job, error: BaseException, config: Config) -> None:
    monitoring.job_failed(job.source, isinstance(error, TransientError))
