"""``ctai serve`` on a fresh data dir, with the shipped model on its default backend (ONNX Runtime):
the network and the gate are converted at the worker's start (30-60 s on 2 cores), and receiving
must not wait for that. dcmtk's echoscu and storescu are the peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from ctai.types import CLASSES
from tests.conftest import IMAGES
from tests.peers import PATIENT, free_port, tool, wait_until

RADIOGRAPH = "IM-0115-0001.jpeg"


def _config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    ports = {"listener": free_port(), "web": free_port(), "metrics": free_port()}
    path = tmp_path / "ctai.toml"
    path.write_text(f"""
[data]
dir = "{tmp_path / 'ctai-data'}"
[orthanc]
run = false
[listener]
enabled = true
port = {ports['listener']}
idle_seconds = 0.5
[web]
port = {ports['web']}
[metrics]
port = {ports['metrics']}
""")
    return path, ports


def _echo(port: int) -> bool:
    return subprocess.run([tool("echoscu"), "-to", "2", "-aec", "CTAI", "127.0.0.1", str(port)],
                          capture_output=True, timeout=10).returncode == 0


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code < 500
    except requests.RequestException:
        return False


def _healthz(port: int) -> str:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["status"]
    except requests.RequestException:
        return "no answer"


def _jobs(config: Path) -> list[dict]:
    run = subprocess.run([sys.executable, "-m", "ctai.cli", "--config", str(config), "jobs", "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_fresh_data_dir_answers_c_echo_within_5_s_and_classifies_what_arrived_meanwhile(tmp_path):
    config, ports = _config(tmp_path)
    image = tmp_path / "image.dcm"
    subprocess.run([tool("img2dcm"), "-k", f"PatientID={PATIENT.id}", "-k", "Modality=CR",
                    "-k", "BodyPartExamined=CHEST", str(IMAGES / RADIOGRAPH), str(image)],
                   check=True, capture_output=True, timeout=30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTAI_")}
    with open(tmp_path / "serve.log", "wb") as log:
        start = time.monotonic()
        serve = subprocess.Popen([sys.executable, "-m", "ctai.cli", "--config", str(config), "serve"],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: _echo(ports["listener"]), timeout=30)
        answered = time.monotonic() - start
        assert answered < 5, f"C-ECHO answered {answered:.1f} s after start"
        wait_until(lambda: _answers(f"http://127.0.0.1:{ports['web']}/staff"), timeout=30)
        assert time.monotonic() - start < 5, f"the web app answered {time.monotonic() - start:.1f} s after start"
        stored = subprocess.run([tool("storescu"), "-xy", "-aec", "CTAI", "127.0.0.1", str(ports["listener"]),
                                 str(image)], capture_output=True, text=True, timeout=30)
        assert stored.returncode == 0, stored.stderr
        assert _healthz(ports["metrics"]) == "warming up"  # the conversion takes tens of seconds
        wait_until(lambda: _healthz(ports["metrics"]) == "ok", timeout=300)
        [job] = wait_until(lambda: [j for j in _jobs(config) if j["status"] == "done"], timeout=60)
        assert job["label"] in CLASSES
    finally:
        serve.terminate()
        serve.wait(60)
    print(f"C-ECHO answered {answered:.1f} s after start", (tmp_path / "serve.log").read_text()[-2000:])
