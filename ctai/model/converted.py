"""Faster CPU backends: the Keras network converted to ONNX, run by ONNX Runtime or OpenVINO.

The network is converted once, on first load (``keras.Model.export(format="onnx")``, which
needs TensorFlow and tf2onnx but no network access), in a process of its own, and cached under
the data dir keyed by the hash of the network file: neither that start-up nor later ones import
TensorFlow. OpenVINO reads the same ONNX file and runs it in float32 (its bfloat16 default
moves probabilities too far: docs/model-experiments.md, "Backends (CPU)").
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ctai.config import CHOICES
from ctai.model.backend import CalibratedClassifier, RawOutputs, in_calls, with_class_maps
from ctai.model.storage import load_network, network_file

#: The backends that ``[model] backend`` may name, less "auto".
BACKENDS = tuple(name for name in CHOICES["model", "backend"] if name != "auto")
#: What ``backend = "auto"`` means: the fastest that kept every validation label and moved no
#: probability more than 0.005 (benchmarks/backends.py; docs/model-experiments.md, "Backends (CPU)").
AUTO = "onnxruntime"
#: Part of the cache key: raise it when the conversion changes.
CONVERSION = 3
#: Batches that ONNX Runtime runs at once on the CPU, each on its share of the cores (intra-op
#: threads; ``Network.concurrency``). Batches at once wait for each other nowhere, where one batch
#: on all the cores waits for its slowest thread at every operation's end: for a thread that the
#: rest of the job (the outputs, the next batch's reading) has taken a core from. On the 2-core
#: machine a ``classify --out`` of 360 images took 11.1-11.6 s with two batches at once on one core
#: each, against 12.0-12.7 s with one on both; an image alone waits 42 ms instead of 26
#: (docs/model-experiments.md, "2026-12-06 (later)").
CONCURRENCY = 2

#: The file under the cache that keeps what the converting processes wrote to standard error.
CONVERSION_LOG = "conversion.log"

log = logging.getLogger(__name__)


def backend_name(configured: str) -> str:
    """The backend that ``[model] backend`` names ("auto" resolved)."""
    name = AUTO if configured == "auto" else configured
    if name not in BACKENDS:
        raise ValueError(f"[model] backend must be auto or one of {', '.join(BACKENDS)}, not {configured!r}")
    return name


def cache_dir(data: str) -> Path:
    """Where converted networks are kept under the data dir ``[data] dir``."""
    return Path(data).expanduser() / "converted-models"


def converted_network(folder: Path, cache: Path, maps: bool) -> Path:
    """The ONNX file of the network stored in ``folder`` (with its class-activation maps and
    features as more outputs when ``maps`` and the network has them), converted now if not cached
    yet, by a new Python process (spawned): TensorFlow, once imported, kept its 4.5 GB in a worker
    that had converted its networks for good."""
    digest = hashlib.sha256(network_file(folder).read_bytes()).hexdigest()[:24]
    path = cache / f"{digest}-{'maps' if maps else 'logits'}-v{CONVERSION}.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        output = cache / CONVERSION_LOG
        # A warning, so that a command line shows it too: the wait (about a minute on 2 cores) has
        # a reason (``ctai prepare`` does it ahead).
        log.warning("converting the network in %s once, into %s (TensorFlow's output: %s)", folder, cache, output)
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_errors_to, initargs=(output,)) as converter:
                converter.submit(export_onnx, folder, partial, maps).result()
            partial.replace(path)  # atomic: another process never reads half a file
        finally:
            partial.unlink(missing_ok=True)
    return path


def _errors_to(output: Path) -> None:
    """A converting process's standard error goes to the end of ``output``: TensorFlow writes its
    start-up lines there whatever ``TF_CPP_MIN_LOG_LEVEL`` says, and a failure still reaches the
    caller as the exception it raised."""
    handle = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(handle, 2)
    os.close(handle)


def export_onnx(folder: Path, path: Path, maps: bool) -> None:
    """Write the network of ``folder`` to ``path`` as ONNX (imports TensorFlow)."""
    model = load_network(folder)
    model = (with_class_maps(model) if maps else None) or model
    model.predict_on_batch(np.zeros((1, *model.input.shape[1:]), dtype=np.float32))  # export needs a built graph
    model.export(str(path), format="onnx", verbose=False)


class Network:
    """An ONNX file run by ``engine`` ("onnxruntime" or "openvino"): called on a float32 batch,
    it returns the network's outputs. Safe to call from several threads; ``concurrency`` batches
    at once run best; ``accelerated`` on a GPU. OpenVINO computes in float32 unless ``float32`` is
    False (then its device default: bfloat16 where the CPU has it)."""

    def __init__(self, path: Path, engine: str, float32: bool = True) -> None:
        self.engine = engine
        #: How many batches to run at once: ``CONCURRENCY`` for ONNX Runtime on the CPU, else one.
        self.concurrency = 1
        self.accelerated = False
        if engine == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            # Threads that spin between calls take the cores from the rest of the job (the gate's
            # network, the SR and SC, Orthanc): they wait idle instead.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            cores = len(os.sched_getaffinity(0))
            concurrency = min(CONCURRENCY, cores)
            options.intra_op_num_threads = cores // concurrency
            # A GPU when the installed ONNX Runtime has one (the onnxruntime-gpu wheel), else the CPU.
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in onnxruntime.get_available_providers()]
            self._session = onnxruntime.InferenceSession(str(path), options, providers=providers)
            self._input = self._session.get_inputs()[0].name
            self.outputs = len(self._session.get_outputs())
            self.accelerated = self._session.get_providers()[0] != "CPUExecutionProvider"
            if not self.accelerated:
                self.concurrency = concurrency
        elif engine == "openvino":
            import openvino

            hints = {"INFERENCE_PRECISION_HINT": "f32"} if float32 else {}
            self._compiled = openvino.Core().compile_model(str(path), "CPU", hints)
            self._lock = threading.Lock()  # one infer request, whose output buffers the next call reuses
            self.outputs = len(self._compiled.outputs)
        else:
            raise ValueError(f"no such engine: {engine}")

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.engine == "onnxruntime":
            return self._session.run(None, {self._input: batch})
        with self._lock:
            results = self._compiled(batch)
            return [np.array(results[output]) for output in self._compiled.outputs]


class ConvertedClassifier(CalibratedClassifier):
    """The classifier of ``folder`` run by ONNX Runtime or OpenVINO (``engine``), its ONNX
    file cached in ``cache``."""

    def __init__(self, folder: Path, engine: str, cache: Path) -> None:
        super().__init__(folder)
        self.network = Network(converted_network(folder, cache, maps=True), engine)
        self.concurrency = self.network.concurrency

    def outputs(self, batch: np.ndarray) -> RawOutputs:
        return in_calls(self.network, batch, self.network.accelerated)
