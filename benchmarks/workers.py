"""Throughput of one and of two ``ctai worker`` processes sharing a Redis queue, on this machine:
a real Orthanc with ctai's plugin, a private redis-server, in a private network namespace
(re-executes itself under ``unshare -n``, like tests/test_several_machines.py).

For each count of workers: radiographs are sent to Orthanc with no worker running, their jobs
are held aside in Redis while the workers start (loading the model), then released at once;
throughput is the jobs over the time from the first claim to the last job done, beside the CPU
time the workers and Orthanc took meanwhile and each worker's resident memory when it is ready,
at its peak while the jobs run, and when the last job is done. Each worker has its own data dir,
as on its own machine. On one machine the workers share its cores: two cannot be twice as fast
as one here; on two machines each brings its own.

    .venv/bin/python benchmarks/workers.py [--radiographs 240] [--threads 4] [--height 2500]
                                           [--syntax JPEG2000Lossless]

The radiographs are the committed 224-px pictures; ``--height`` enlarges them to a detector's
size, 12 bits stored in 16 with a window, as a DX is; ``--syntax`` compresses them (a pydicom
transfer syntax name), as an archive may store them. A worker's CPU time includes that of its
decoding processes (``ctai.inputs.pool``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom.uid
from PIL import Image
from pydicom import Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.netns import enter_private_network  # noqa: E402
from benchmarks.product import prepared_networks  # noqa: E402

enter_private_network()

from ctai.config import load as load_config  # noqa: E402
from ctai.model.converted import cache_dir  # noqa: E402
from ctai.results import JobStore  # noqa: E402
from tests.orthanc_harness import Harness, WorkerProcess, fast_config  # noqa: E402
from tests.phantoms import image_names, radiograph  # noqa: E402
from tests.processes import children, cpu_seconds  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def wait_status(store: JobStore, ids: list[str], statuses: tuple[str, ...], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while any((r := store.get(i)) is None or r.status not in statuses for i in ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not {statuses} after {timeout} s")
        time.sleep(0.1)


def detector_sized(ds: Dataset, height: int) -> Dataset:
    """``ds``'s 8-bit picture enlarged to ``height`` rows, as 12-bit values a window shows whole."""
    picture = Image.fromarray(ds.pixel_array)
    picture = picture.resize((round(picture.width * height / picture.height), height), Image.Resampling.BICUBIC)
    values = np.asarray(picture, dtype=np.uint16) * 16
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = values.tobytes()
    return ds


def family_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and of its living children (a worker's decoding processes)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def stored(ds: Dataset, height: int | None, syntax: str | None) -> Dataset:
    """``ds`` enlarged to ``height`` rows and compressed in ``syntax``, each if given."""
    if height:
        ds = detector_sized(ds, height)
    if syntax:
        ds.compress(getattr(pydicom.uid, syntax), generate_instance_uid=False)
    return ds


def memory_mb(pid: int) -> tuple[float, float]:
    """The peak and the present resident memory of process ``pid`` (proc(5): VmHWM, VmRSS), MB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    peak, now = (int(status[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS"))
    return peak, now


def reset_peak(pid: int) -> None:
    """Start process ``pid``'s peak resident memory afresh from now (proc(5), clear_refs: 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def run(harness: Harness, server: RedisServer, root: Path, networks: Path, workers: int, count: int, tag: str,
        height: int | None = None, syntax: str | None = None) -> float:
    """Images per second of ``workers`` worker processes, with the converted ``networks``, over
    ``count`` queued radiographs (enlarged to ``height`` rows, compressed in ``syntax``, if given)."""
    names = image_names()
    datasets = (radiograph(names[i % len(names)], f"{tag}{i}") for i in range(count))
    answers = [harness.upload(stored(ds, height, syntax)) for ds in datasets]
    ids = [f"orthanc:{a['ParentSeries']}" for a in answers]
    store = JobStore(harness.config)
    wait_status(store, ids, ("pending",))
    queue = server.client()
    queue.rename("huey.redis.ctai", "held")  # while the workers start
    processes = [WorkerProcess(harness.config, root / f"{tag}-{n}") for n in range(workers)]
    for process in processes:
        cache_dir(process.config["data"]["dir"]).symlink_to(networks)
        process.launch()
    try:
        for process in processes:
            process.wait_started()
        pids = [p.process.pid for p in processes] + [harness.orthanc.process.pid]
        before = [family_cpu(pid) for pid in pids]
        ready = [memory_mb(pid)[1] for pid in pids[:-1]]
        for pid in pids[:-1]:
            reset_peak(pid)
        queue.rename("held", "huey.redis.ctai")
        wait_status(store, ids, ("done", "failed"))
        taken = [family_cpu(pid) - start for pid, start in zip(pids, before, strict=True)]
        memory = ", ".join(f"{start:.0f}/{peak:.0f}/{end:.0f}" for start, (peak, end)
                           in zip(ready, map(memory_mb, pids[:-1]), strict=True))
    finally:
        for process in processes:
            process.stop()
    records = [store.get(i) for i in ids]
    failed = sum(r.status != "done" for r in records)
    span = max(r.finished for r in records) - min(r.started for r in records)
    shares = "+".join(str(sum(p.done().values())) for p in processes)
    workers_cpu = sum(taken[:-1])
    print(f"{workers} worker process(es): {count} radiographs in {span:.1f} s = {count / span:.1f}/s"
          f" (jobs per process: {shares}){f', {failed} failed' if failed else ''}; CPU time meanwhile:"
          f" workers {workers_cpu:.1f} s ({1000 * workers_cpu / count:.0f} ms a radiograph), Orthanc"
          f" {taken[-1]:.1f} s; memory of each worker, ready/peak/at the end: {memory} MB", flush=True)
    return count / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radiographs", type=int, default=240)
    parser.add_argument("--threads", type=int, default=4, help="[worker] threads of each worker")
    parser.add_argument("--height", type=int, help="enlarge the radiographs to this many rows (a DX: 2500)")
    parser.add_argument("--syntax", help="compress them in this transfer syntax (pydicom's name: JPEG2000Lossless)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        server = RedisServer(root / "redis")
        server.start()
        config = fast_config(root / "pacs")
        config["queue"].update(backend="redis", url=server.url)
        config["orthanc"]["password"] = "benchmark"
        config["worker"]["threads"] = args.threads
        # The product's poll, not the tests' tenth of a second: each poll of each channel costs a query.
        config["outbox"]["poll_seconds"] = load_config(environ={})["outbox"]["poll_seconds"]
        # For every worker to find in its own data dir, as after scripts/setup.sh: a worker that
        # converted them itself would measure the conversion's memory.
        networks = prepared_networks(root / "networks")
        harness = Harness(config)
        harness.start_orthanc()
        try:
            print(f"{os.cpu_count()} CPU cores; Redis on a Unix socket; {args.threads} threads per worker")
            one = run(harness, server, root, networks, 1, args.radiographs, "ONE", args.height, args.syntax)
            two = run(harness, server, root, networks, 2, args.radiographs, "TWO", args.height, args.syntax)
            print(f"two worker processes / one: {two / one:.2f}x")
        finally:
            harness.close()
            server.stop()


if __name__ == "__main__":
    main()
