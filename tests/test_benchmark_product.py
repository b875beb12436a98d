"""A smoke run of benchmarks/product.py (issue 32): on a few files and a small untrained network
it runs every process and prints the ratios and the per-stage breakdown. Speed itself is measured
by the benchmark, never asserted by a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import IMAGES
from tests.test_converted import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def test_the_product_benchmark_prints_its_ratios_and_stages(tmp_path):
    model = tiny_model(tmp_path / "model", seed=3)
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "product.py"), "--data", str(IMAGES),
                          "--images", "6", "--rounds", "1", "--model", str(model),
                          "--data-dir", str(tmp_path / "ctai-data")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for name in ("bare Keras", "bare ONNX", "product, --out", "product, no --out"):
        assert f"{name}: median" in out
    assert out.count("x bare ONNX (CPU") >= 4 and "x bare Keras" in out
    for stage in ("start-up", "decode 8-bit", "decode rle", "select", "preprocess", "network", "heat map",
                  "SR", "SC", "write", "sync", "total"):
        assert stage in out, stage
