"""Smoke runs of benchmarks/product.py and benchmarks/gpu_product.py (issue 32): on a few files,
each runs every step and prints its numbers. Speed itself is measured by the benchmarks, never
asserted by a test."""

from __future__ import annotations

import os
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
    for name in ("bare Keras", "bare ONNX", "product, --out", "product, --out, no SR", "product, --out, no SC",
                 "product, no --out"):
        assert f"{name}: median" in out
    assert out.count("x bare ONNX (CPU") >= 6 and "x bare Keras" in out
    assert "the SR in a whole run:" in out and "the SC in a whole run:" in out
    for stage in ("start-up", "decode 8-bit", "decode rle", "select", "preprocess", "network", "heat map",
                  "SR", "SC", "write", "sync", "total"):
        assert stage in out, stage
    assert "one process without its network (an instant one), no --out:" in out


# As on the lent GPU machine: Keras on JAX, where TensorFlow is not installed (an import of it fails).
GPU_PRODUCT_WITHOUT_TENSORFLOW = """
import runpy, sys
sys.modules["tensorflow"] = None
sys.argv = [sys.argv[1], "--images", "8", "--batch", "4", "--repeat", "1", "--out", "--processes", "2"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_gpu_benchmark_runs_the_pipeline_on_jax_without_tensorflow():
    """The pipelines in two processes (spawned, each with its own network; the parent's refusal of
    TensorFlow is not theirs, and the one-process case is the same function called in place)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    script = str(ROOT / "benchmarks" / "gpu_product.py")
    run = subprocess.run([sys.executable, "-c", GPU_PRODUCT_WITHOUT_TENSORFLOW, script],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "on jax" in run.stdout and "accelerated: False" in run.stdout
    assert "network alone one call" in run.stdout and "CHUNK rows a call" in run.stdout
    assert "end to end in 2 processes " in run.stdout and "2 processes with SR and SC written" in run.stdout
    assert "not classified" not in run.stdout
