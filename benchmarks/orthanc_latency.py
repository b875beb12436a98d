"""Orthanc end-to-end timings: a real Orthanc with ctai's plugin and the worker, in a private
network namespace (re-executes itself under ``unshare -n``, like tests/test_orthanc.py).

Prints: the time from the last instance received to the SR stored, for one radiograph and for a
100-slice CT series (with the part spent waiting for Orthanc's StableAge); the throughput for
200 radiographs sent at once; the cost of the work Orthanc's change callback does per series.

    .venv/bin/python benchmarks/orthanc_latency.py [--stable-age 5] [--radiographs 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.netns import enter_private_network  # noqa: E402

enter_private_network()

from ctai import jobs  # noqa: E402
from ctai.orthanc.series import series_job, series_skip_reason  # noqa: E402
from ctai.results import JobStore  # noqa: E402
from tests.orthanc_harness import Harness, fast_config  # noqa: E402
from tests.phantoms import ct_series, image_names, radiograph  # noqa: E402


def wait_done(store: JobStore, series_ids: list[str], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    waiting = set(series_ids)
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} jobs not done")
        records = {s: store.get(f"orthanc:{s}") for s in waiting}
        waiting = {s for s, r in records.items() if r is None or r.status not in ("done", "failed")}
        time.sleep(0.02)


def sr_stored(harness: Harness, study_id: str) -> bool:
    return any(s["MainDicomTags"].get("Modality") == "SR" for s in harness.study_series(study_id))


def latency(harness: Harness, datasets: list) -> tuple[float, float, float]:
    """Upload ``datasets`` (one series); seconds from the last instance stored to the SR stored,
    and the part of it before the job was queued (StableAge); also the upload time."""
    began = time.time()
    answers = [harness.upload(ds) for ds in datasets]
    received = time.time()
    study = answers[-1]["ParentStudy"]
    while not sr_stored(harness, study):
        time.sleep(0.02)
    stored = time.time()
    record = JobStore(harness.config).get(f"orthanc:{answers[-1]['ParentSeries']}")
    return stored - received, record.enqueued - received, received - began


def callback_cost(folder: Path, repeat: int = 50) -> float:
    """Milliseconds for the callback's own work per series (eligibility, record, durable enqueue),
    on a queue of its own."""
    config = fast_config(folder)
    tags = {"Modality": "DX", "BodyPartExamined": "CHEST"}
    began = time.perf_counter()
    for i in range(repeat):
        series_skip_reason(tags, config)
        jobs.enqueue(config, series_job(f"benchmark-{i}"))
    return (time.perf_counter() - began) / repeat * 1000


def report_radiograph(harness: Harness) -> None:
    names = image_names()
    runs = [latency(harness, [radiograph(names[i], f"LAT{i}")]) for i in range(3)]
    total = statistics.median(r[0] for r in runs)
    stable = statistics.median(r[1] for r in runs)
    each = ", ".join(f"{r[0]:.2f}" for r in runs)
    print(f"one radiograph: last instance received -> SR stored {total:.2f} s (median of 3: {each}), "
          f"of which waiting for StableAge {stable:.2f} s, ctai {total - stable:.2f} s")


def report_ct(harness: Harness) -> None:
    total, stable, upload = latency(harness, ct_series(slices=100, size=512, spacing=0.7, step=2.5))
    print(f"CT series, 100 slices of 512x512: uploaded in {upload:.1f} s; last instance received -> "
          f"SR stored {total:.2f} s, of which waiting for StableAge {stable:.2f} s, "
          f"ctai {total - stable:.2f} s")


def report_throughput(harness: Harness, count: int) -> None:
    names = image_names()
    batches = harness.worker.classifier.batch_sizes
    batches.clear()
    sent = [radiograph(names[i % len(names)], f"TP{i}") for i in range(count)]
    began = time.time()
    series_ids = [harness.upload(ds)["ParentSeries"] for ds in sent]
    uploaded = time.time()
    store = JobStore(harness.config)
    wait_done(store, series_ids)
    records = [store.get(f"orthanc:{s}") for s in series_ids]
    queued, done = min(r.enqueued for r in records), max(r.finished for r in records)
    failed = sum(r.status != "done" for r in records)
    print(f"{count} radiographs sent at once (REST, one after another, {uploaded - began:.1f} s): all done "
          f"{done - began:.1f} s after the first was sent, {count / (done - began):.1f} radiographs/s; "
          f"first job queued to last done {done - queued:.1f} s, {count / (done - queued):.1f}/s; "
          f"failed {failed}; classifier batches by size: {dict(sorted(batches.items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stable-age", type=int, default=5, help="Orthanc StableAge in seconds")
    parser.add_argument("--radiographs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = fast_config(Path(folder) / "ctai-data")
        config["orthanc"]["stable_age"] = args.stable_age
        harness = Harness(config)
        harness.start_orthanc()
        try:
            info = harness.start_worker().classifier.info
            print(f"{os.cpu_count()} CPU cores; model {info.name} {info.version}; "
                  f"StableAge {args.stable_age} s; {config['worker']['threads']} worker threads, "
                  f"batch {config['model']['batch_size']}")
            report_radiograph(harness)
            report_ct(harness)
            report_throughput(harness, args.radiographs)
            cost = callback_cost(Path(folder) / "callback")
            print(f"Orthanc callback work per series (eligibility, record, durable enqueue): {cost:.1f} ms")
        finally:
            harness.close()


if __name__ == "__main__":
    main()
