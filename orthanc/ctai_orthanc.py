"""Run by Orthanc's Python plugin ("PythonScript"): hands each new stable series to ctai.

When a series has had no new instance for [orthanc] stable_age seconds, it decides from the
series' main DICOM tags whether the series is for ctai and queues a job, or records why not: a
few milliseconds, never the model, which runs in ``ctai worker``. A timer per series, reset by
each NEW_INSTANCE, says when: Orthanc's own STABLE_SERIES comes up to a second later (its clock
steps in whole seconds), and then queues only a series that ctai has not decided on since its
last instance. When Orthanc starts, a background thread queues the series that changed in the
last [orthanc] catch_up_hours and that ctai has not seen since (left unstable when Orthanc
stopped, say). A series that cannot be queued because the queue is unreachable or full (Redis
down) is tried again every few seconds until it is. Environment, set by ``ctai serve``:
CTAI_SITE_PACKAGES (the virtual environment's site-packages, imported from here), CTAI_CONFIG
(ctai's configuration file).
"""

import json
import os
import site
import threading
import time

site.addsitedir(os.environ["CTAI_SITE_PACKAGES"])

import orthanc  # noqa: E402  (Orthanc's embedded module)
from ctai import config as configuration  # noqa: E402
from ctai import jobs  # noqa: E402
from ctai.errors import TransientError  # noqa: E402
from ctai.inputs.selection import OWN_OUTPUT  # noqa: E402
from ctai.orthanc.client import STATUS_METADATA  # noqa: E402
from ctai.orthanc.series import series_job, series_skip_reason, status_now, status_value  # noqa: E402
from ctai.results import PENDING, SKIPPED, JobStore, Summary  # noqa: E402

CONFIG = configuration.load()
STARTED = status_now()
RETRY_SECONDS = 5.0

# Series whose job could not be queued for a passing reason (Redis down or full), to try again.
unqueued: set[str] = set()
unqueued_lock = threading.Lock()

# Series receiving instances, and when each counts as stable (time.monotonic()).
stable_at: dict[str, float] = {}
stable_changed = threading.Condition()


def consider(series_id):
    """Queue the series' job, or record why it is not for ctai (nothing for ctai's own outputs)."""
    began = time.perf_counter()
    series = json.loads(orthanc.RestApiGet(f"/series/{series_id}"))
    reason = series_skip_reason(series["MainDicomTags"], CONFIG)
    if reason == OWN_OUTPUT:
        return
    job = series_job(series_id)
    if reason:
        JobStore(CONFIG).skipped(job, reason)
        value = status_value(SKIPPED, Summary(SKIPPED, error=reason))
    else:
        jobs.enqueue(CONFIG, job)
        value = status_value(PENDING)
    orthanc.RestApiPut(f"/series/{series_id}/metadata/{STATUS_METADATA}", json.dumps(value))
    milliseconds = (time.perf_counter() - began) * 1000
    orthanc.LogInfo(f"ctai: series {series_id} {value['status']} in {milliseconds:.1f} ms")


def catch_up():
    """Queue series changed before this start (within catch_up_hours) that ctai has not seen since."""
    hours = float(CONFIG["orthanc"]["catch_up_hours"])
    since = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() - 3600 * hours))
    for series_id in json.loads(orthanc.RestApiGet("/series")):
        try:
            updated = json.loads(orthanc.RestApiGet(f"/series/{series_id}"))["LastUpdate"]
            if not since <= updated <= STARTED:
                continue
            metadata = json.loads(orthanc.RestApiGet(f"/series/{series_id}/metadata?expand"))
            status = json.loads(metadata.get(STATUS_METADATA) or "null")
            if status is None or status["time"] < updated:
                consider_or_keep(series_id)
        except Exception as exc:  # one broken series must not stop the others
            orthanc.LogError(f"ctai: catch-up of series {series_id}: {exc!r}")


def consider_or_keep(series_id):
    """``consider``; a series that fails for a passing reason is kept to be tried again."""
    try:
        consider(series_id)
    except TransientError as exc:
        with unqueued_lock:
            unqueued.add(series_id)
        orthanc.LogWarning(f"ctai: series {series_id} not queued yet, tried again in {RETRY_SECONDS:.0f} s: {exc}")
        return False
    except Exception as exc:
        orthanc.LogError(f"ctai: series {series_id} could not be queued: {exc!r}")
    with unqueued_lock:
        unqueued.discard(series_id)
    return True


def retry_unqueued():
    """Queue the kept series once the queue is back (one failure ends the round)."""
    while True:
        time.sleep(RETRY_SECONDS)
        with unqueued_lock:
            waiting = sorted(unqueued)
        for series_id in waiting:
            if not consider_or_keep(series_id):
                break


def instance_arrived(instance_id):
    """Start (or restart) the stability timer of the instance's series."""
    series_id = json.loads(orthanc.RestApiGet(f"/instances/{instance_id}"))["ParentSeries"]
    with stable_changed:
        stable_at[series_id] = time.monotonic() + float(CONFIG["orthanc"]["stable_age"])
        stable_changed.notify()


def queue_stable_series():
    """Consider each series as soon as its stability timer ends."""
    while True:
        with stable_changed:
            now = time.monotonic()
            due = [s for s, at in stable_at.items() if at <= now]
            for series_id in due:
                del stable_at[series_id]
            if not due:
                stable_changed.wait(min(stable_at.values(), default=now + 60) - now)
                continue
        for series_id in due:
            consider_or_keep(series_id)


def seen_since_last_instance(series_id):
    """Whether ctai recorded a decision on the series after its last instance arrived."""
    updated = json.loads(orthanc.RestApiGet(f"/series/{series_id}"))["LastUpdate"]
    metadata = json.loads(orthanc.RestApiGet(f"/series/{series_id}/metadata?expand"))
    status = json.loads(metadata.get(STATUS_METADATA) or "null")
    return status is not None and status["time"] >= updated


def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        instance_arrived(resource_id)
    elif change_type == orthanc.ChangeType.STABLE_SERIES:
        with stable_changed:
            waiting = resource_id in stable_at
        if not waiting and not seen_since_last_instance(resource_id):
            consider_or_keep(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        threading.Thread(target=catch_up, name="ctai-catch-up", daemon=True).start()
        threading.Thread(target=retry_unqueued, name="ctai-retry", daemon=True).start()


threading.Thread(target=queue_stable_series, name="ctai-stable", daemon=True).start()
orthanc.RegisterOnChangeCallback(on_change)
