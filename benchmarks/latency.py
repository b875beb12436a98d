"""End-to-end latency of the two ways in, with the real worker and model (issue 16 targets).

Runs in a private network namespace (re-executes itself under ``unshare -n``, like
benchmarks/orthanc_latency.py) with a real Orthanc, the DICOM listener, a pynetdicom Storage
SCP as the PACS and hl7apy's MLLP server as the HIS. Prints:

- serve start-up: how long after Orthanc answered the worker is ready (as ``ctai serve``: the
  worker starts last and warms up in a thread of its own), on the default backend with its
  networks already converted (the one-time conversion of a first start is done before, in a
  process of its own, and shown apart);
- listener: last instance answered -> ORU received by the HIS, and -> SR received by the PACS
  (median over --series one-radiograph series sent one after another, idle_seconds 2);
- Orthanc: last instance stored -> SR stored in Orthanc for a lone radiograph (median of 3),
  and for each of a burst of --burst radiographs sent at once (median, max), with StableAge;
- phone: a JPEG photo posted to an upload link -> its result picture received, through the web
  app and the same worker (median over --uploads, one after another, as a phone polls).

    .venv/bin/python benchmarks/latency.py [--series 5] [--burst 30] [--uploads 5] [--stable-age 2]
        [--backend B] [--converted DIR]

Timings on a shared or busy machine are noisy: compare the medians, and rerun.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.netns import enter_private_network  # noqa: E402

enter_private_network()

from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage  # noqa: E402
from pynetdicom import AE  # noqa: E402

from ctai import config as configuration  # noqa: E402
from ctai.model.converted import backend_name, cache_dir  # noqa: E402
from ctai.outbox import OutboxSender  # noqa: E402
from ctai.results import JobStore  # noqa: E402
from ctai.serve import WorkerService  # noqa: E402
from ctai.transports.dicom_scp import DicomListener  # noqa: E402
from tests.conftest import IMAGES  # noqa: E402
from tests.orthanc_harness import Harness, fast_config  # noqa: E402
from tests.peers import HIS, StoreSCP, free_port, wait_until  # noqa: E402
from tests.phantoms import image_names, radiograph  # noqa: E402
from tests.processes import cpu_seconds  # noqa: E402


class TimedPACS(StoreSCP):
    """The PACS, noting when each SR arrived (by Patient ID)."""

    def __init__(self) -> None:
        super().__init__(ComprehensiveSRStorage, SecondaryCaptureImageStorage)
        self.sr_at: dict[str, float] = {}

    def on_store(self, event) -> int:
        if event.dataset.SOPClassUID == ComprehensiveSRStorage:
            self.sr_at[event.dataset.PatientID] = time.time()
        return super().on_store(event)


class TimedHIS(HIS):
    """The HIS, noting when each ORU arrived (by Patient ID, PID-3)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.oru_at: dict[str, float] = {}

    def answer(self, message: str) -> str:
        pid = next(segment for segment in message.split("\r") if segment.startswith("PID|"))
        self.oru_at[pid.split("|")[3].split("^")[0]] = time.time()
        return super().answer(message)


def wait_for(condition, timeout: float = 120, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(str(condition))
        time.sleep(interval)


def send_series(port: int, patient_id: str, name: str) -> float:
    """C-STORE one radiograph as a series to the listener; when the last instance was answered."""
    ds = radiograph(name, patient_id)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CTAI")
    status = assoc.send_c_store(ds)
    answered = time.time()
    assoc.release()
    assert status.Status == 0, status
    return answered


def report_phone(config: configuration.Config, uploads: int) -> None:
    """Log in as staff, start an upload link, then post photos one after another and poll each
    one's status as the phone page does (every 0.1 s here) until its result picture arrives."""
    import httpx

    from ctai.web.app import WebService

    config["web"].update(staff_token="benchmark-staff-token", host="127.0.0.1", port=free_port())
    service = WebService(config)
    service.start()
    photo = (IMAGES / "IM-0115-0001.jpeg").read_bytes()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{config['web']['port']}", follow_redirects=True) as client:
            csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/staff").text).group(1)
            page = client.post("/staff/login", data={"token": "benchmark-staff-token", "csrf": csrf}).text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
            page = client.post("/staff/sessions", data={"patient_id": "PHONE", "patient_name": "Bench^Phone",
                                                        "accession": "", "csrf": csrf}).text
            link = re.search(r'href="[^"]*?(/u/[^"]+)"', page).group(1)
            times = []
            for number in range(uploads + 1):  # the first one warms up
                began = time.monotonic()
                upload = client.post(f"{link}/files", content=photo).json()["id"]
                while client.get(f"{link}/files/{upload}").json()["status"] == "pending":
                    time.sleep(0.1)
                assert client.get(f"{link}/files/{upload}/picture").status_code == 200
                if number:
                    times.append(time.monotonic() - began)
        print(f"phone: photo posted -> result picture received median {statistics.median(times):.2f} s "
              f"(each: {', '.join(f'{t:.2f}' for t in times)})")
    finally:
        service.stop()


def report_listener(config: configuration.Config, series: int) -> None:
    pacs, his = TimedPACS(), TimedHIS(free_port()).start()
    config["cstore"].update(host="127.0.0.1", port=pacs.peer.port, ae_title="PACS")
    config["hl7"].update(host="127.0.0.1", port=his.port)
    config["listener"].update(enabled=True, host="127.0.0.1", port=free_port(), idle_seconds=2.0)
    listener, sender = DicomListener(config), OutboxSender(config)
    listener.start()
    sender.start()
    try:
        names = image_names()
        to_oru, to_sr = [], []
        for number in range(series + 1):  # the first one warms up
            patient = f"LISTEN{number}"
            last = send_series(listener.port, patient, names[number % len(names)])
            wait_for(lambda: patient in his.oru_at and patient in pacs.sr_at)  # noqa: B023
            if number:
                to_oru.append(his.oru_at[patient] - last)
                to_sr.append(pacs.sr_at[patient] - last)
        each = ", ".join(f"{o:.2f}/{s:.2f}" for o, s in zip(to_oru, to_sr, strict=True))
        print(f"listener, idle_seconds 2: last instance answered -> ORU at the HIS median "
              f"{statistics.median(to_oru):.2f} s, -> SR at the PACS median {statistics.median(to_sr):.2f} s; "
              f"SR - ORU median {statistics.median(s - o for o, s in zip(to_oru, to_sr, strict=True)):+.2f} s "
              f"(ORU/SR per series: {each})")
    finally:
        listener.stop()
        sender.stop()
        his.stop()
        pacs.server.shutdown()
        config["cstore"]["host"] = config["hl7"]["host"] = ""


def sr_stored(harness: Harness, study_id: str) -> bool:
    return any(s["MainDicomTags"].get("Modality") == "SR" for s in harness.study_series(study_id))


def report_orthanc_lone(harness: Harness) -> None:
    names, runs = image_names(), []
    for number in range(3):
        answer = harness.upload(radiograph(names[number], f"LONE{number}"))
        received = time.time()
        wait_for(lambda: sr_stored(harness, answer["ParentStudy"]))  # noqa: B023
        runs.append(time.time() - received)
    print(f"Orthanc, lone radiograph: last instance stored -> SR stored median {statistics.median(runs):.2f} s "
          f"({', '.join(f'{r:.2f}' for r in runs)})")


def cpu_seconds_so_far(harness: Harness) -> tuple[float, float]:
    """CPU seconds used so far by this process (the worker) and by Orthanc."""
    own = os.times()
    return own.user + own.system, cpu_seconds(harness.orthanc.process.pid)


def report_orthanc_burst(harness: Harness, count: int) -> None:
    """Each series' last instance stored -> its job done (its SR and SC already stored in Orthanc)."""
    names = image_names()
    received: dict[str, float] = {}
    cpu = cpu_seconds_so_far(harness)
    for number in range(count):
        answer = harness.upload(radiograph(names[number % len(names)], f"BURST{number}"))
        received[answer["ParentSeries"]] = time.time()
    store = JobStore(harness.config)

    def all_done() -> bool:
        return all((r := store.get(f"orthanc:{s}")) and r.status == "done" for s in received)

    wait_for(all_done, timeout=600, interval=0.2)  # the records time the jobs: looking less often is fair
    ctai_cpu, orthanc_cpu = (after - before for after, before in zip(cpu_seconds_so_far(harness), cpu, strict=True))
    records = {s: store.get(f"orthanc:{s}") for s in received}
    latencies = sorted(r.finished - received[s] for s, r in records.items())
    stable = statistics.median(r.enqueued - received[s] for s, r in records.items())
    queued = statistics.median(r.started - r.enqueued for r in records.values())
    job = statistics.median(r.finished - r.started for r in records.values())
    sending = max(received.values()) - min(received.values())
    print(f"Orthanc, burst of {count} radiographs (REST uploads, {sending:.1f} s to send): "
          f"last instance stored -> SR stored (job done) median {statistics.median(latencies):.2f} s, "
          f"max {latencies[-1]:.2f} s; medians of its parts: to queued (StableAge, callback) {stable:.2f} s, "
          f"in the queue {queued:.2f} s, the job {job:.2f} s; CPU time: ctai {ctai_cpu:.1f} s, "
          f"Orthanc {orthanc_cpu:.1f} s")


CONVERT = """
import sys
from pathlib import Path
from ctai.model.backend import shipped_model_dir
from ctai.model.converted import converted_network
from ctai.model.gate import shipped_gate_dir
converted_network(shipped_model_dir(), Path(sys.argv[1]), maps=True)
converted_network(shipped_gate_dir(), Path(sys.argv[1]), maps=False)
"""


def convert_once(cache: Path, keep: Path | None) -> None:
    """The classifier's and the gate's networks converted into ``cache`` (a first start's
    one-time cost, kept in ``keep`` for the next run when given), in a process of its own so that
    this one never imports TensorFlow."""
    if keep:
        shutil.copytree(keep, cache, dirs_exist_ok=True)
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", CONVERT, str(cache)], check=True, capture_output=True)
    print(f"one-time conversion of the networks (a first start; cached after): {time.monotonic() - began:.1f} s")
    if keep:
        shutil.copytree(cache, keep, dirs_exist_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=5, help="listener series, one after another")
    parser.add_argument("--burst", type=int, default=30, help="radiographs sent to Orthanc at once")
    parser.add_argument("--uploads", type=int, default=5, help="phone photos, one after another")
    parser.add_argument("--stable-age", type=int, default=2, help="Orthanc StableAge in seconds")
    parser.add_argument("--backend", help="[model] backend (default: the product's default)")
    parser.add_argument("--converted", type=Path, help="a folder keeping the converted networks between runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = fast_config(Path(folder) / "ctai-data")
        config["orthanc"]["stable_age"] = args.stable_age
        defaults = configuration.defaults()
        config["worker"]["poll_interval"] = defaults["worker"]["poll_interval"]
        config["model"]["backend"] = args.backend or config["model"]["backend"]
        if backend_name(config["model"]["backend"]) != "keras":
            convert_once(cache_dir(config["data"]["dir"]), args.converted)
        harness = Harness(config)
        worker = WorkerService(config)
        began = time.monotonic()
        harness.start_orthanc()
        answered = time.monotonic()
        worker.start()  # as ctai serve: last, warming up in a thread of its own
        wait_until(lambda: worker.worker or worker.error, 600)
        if worker.error:
            raise worker.error
        ready = time.monotonic()
        harness.worker = worker.worker
        try:
            print(f"{os.cpu_count()} CPU cores; backend {config['model']['backend']} "
                  f"({type(worker.worker.classifier.inner).__name__}); StableAge {args.stable_age} s; worker poll "
                  f"{config['worker']['poll_interval']} s; outbox poll {config['outbox']['poll_seconds']} s")
            print(f"start-up: Orthanc answered after {answered - began:.2f} s; worker ready "
                  f"{ready - answered:.2f} s after that ({ready - began:.2f} s in all)")
            report_listener(config, args.series)
            harness.sender.start()  # Orthanc's deliveries; report_listener's own sender has stopped
            report_orthanc_lone(harness)
            report_orthanc_burst(harness, args.burst)
            report_phone(config, args.uploads)
        finally:
            harness.close()


if __name__ == "__main__":
    main()
