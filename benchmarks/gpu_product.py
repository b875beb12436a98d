"""The product's throughput end to end on a GPU against its network alone (issue 32, part 3a), in
one run (prints numbers, asserts nothing).

    KERAS_BACKEND=jax python benchmarks/gpu_product.py [--images 5000] [--batch 64 256 1024] [--out]
        [--processes 1 8]

The lent GPU machine has JAX but no TensorFlow and no ONNX Runtime for CUDA, so ctai runs there
as ``[model] backend = "keras"`` on Keras's JAX backend. Prints, for each ``--batch``:

- the network alone (``KerasClassifier.outputs`` on prepared model inputs, best of ``--repeat``):
  in one call per batch, as ctai calls an accelerator, and in calls of ``CHUNK`` rows, as it
  calls a CPU (``ctai.model.backend.in_calls``);
- the pipeline end to end on ``--images`` 8-bit radiographs (``benchmarks/product.py``'s 8-bit
  files, made from the committed test pictures at their size), decoded, checked by the header
  rules and the gate, preprocessed and classified with heat maps, ``[model] batch_size`` = the
  batch; with ``--out`` also with the SR and SC written to a folder. The plugins are the built-in ones that need no
  peer, registered from the entry points in ``pyproject.toml`` (the lent machine has no
  installed ctai). For each of ``--processes``: that many pipelines at once, each in a process of
  its own with its share of the files and its own network on the same GPU, as that many
  ``ctai worker`` processes (each with its own data dir, as in ``benchmarks/workers.py``) would
  share a GPU machine. One process reads, checks and prepares images on about one core (Python's
  GIL): 8-bit radiographs of the committed pictures' size take about 1.2 CPU-ms each outside the
  network, about 800 a second (2 CPU cores, the network replaced by an instant one).

On the lent machine, with the wheels of ``bash scripts/gpu-prepare.sh`` (no data folder: the
wheels only) carried as ``.gpu``:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl &&
    PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
    python3 benchmarks/gpu_product.py --images 16384 --batch 256 --processes 1 4 8
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import sys
import tempfile
import time
import tomllib
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.inference import best_time  # noqa: E402
from benchmarks.product import dicom_set, model_inputs  # noqa: E402

PICTURES = ROOT / "tests" / "data" / "images"
#: Built-in plugins that reach no peer (no Orthanc, PACS, HIS, EHR, upload page or metrics).
PLUGINS = ("chest", "gate", "tensorflow", "intended_use", "typicality", "sr", "sc", "folder")


def plugin_manager(config):
    """The built-in ``PLUGINS`` registered as their entry points in ``pyproject.toml`` name them."""
    import pluggy

    from ctai import hookspecs

    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["ctai"]
    pm = pluggy.PluginManager("ctai")
    pm.add_hookspecs(hookspecs)
    for name in PLUGINS:
        pm.register(importlib.import_module(entry_points[name]), name)
    return pm


def network_alone(classifier, x: np.ndarray, repeat: int) -> dict[str, float]:
    """Images a second of the network on ``x``: in one call, and in calls of ``CHUNK`` rows."""
    rates = {}
    accelerated = classifier.accelerated
    for name, one_call in (("one call", True), ("CHUNK rows a call", False)):
        classifier.accelerated = one_call
        rates[name] = len(x) / best_time(lambda: classifier.outputs(x), repeat)
    classifier.accelerated = accelerated
    return rates


def end_to_end(paths: list[Path], batch: int, out: Path | None, processes: int) -> float:
    """Images a second of ``processes`` pipelines at once, each on whole batches of its share of
    ``paths`` after a warm-up batch of its own (a new shape would compile again): the images of all
    over the time from the first start to the last end."""
    share = len(paths) // processes // batch * batch
    if share == 0:
        raise ValueError(f"{len(paths)} images are not a batch of {batch} for each of {processes} processes")
    shares = [paths[i * share:(i + 1) * share] for i in range(processes)]
    if processes == 1:
        start, end, classified = _pipeline_run(shares[0], batch, out)
        return classified / (end - start)
    spawn = multiprocessing.get_context("spawn")  # JAX's runtime does not survive a fork
    ready, runs = spawn.Barrier(processes), spawn.SimpleQueue()
    workers = [spawn.Process(target=_report, args=(runs, share, batch, out, ready)) for share in shares]
    for worker in workers:
        worker.start()
    done = [runs.get() for _ in workers]
    for worker in workers:
        worker.join()
    errors = [run for run in done if isinstance(run, str)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {processes} pipelines failed: {errors[0]}")
    return sum(classified for _, _, classified in done) / (max(end for _, end, _ in done) - min(s for s, _, _ in done))


def _report(runs: SimpleQueue, paths: list[Path], batch: int, out: Path | None, ready: Barrier) -> None:
    """Put the pipeline run's numbers, or its error, on ``runs``; an error releases the others' wait."""
    try:
        runs.put(_pipeline_run(paths, batch, out, ready))
    except Exception as error:
        ready.abort()
        runs.put(f"{type(error).__name__}: {error}")


def _pipeline_run(paths: list[Path], batch: int, out: Path | None,
                  ready: Barrier | None = None) -> tuple[float, float, int]:
    """One pipeline on ``paths`` after a warm-up batch (and, with ``ready``, once the other
    processes' pipelines are warm too): its start and end (``time.monotonic``, one clock for all
    processes) and the images it classified."""
    from ctai import config as configuration
    from ctai.inputs import load_files
    from ctai.pipeline import Pipeline
    from ctai.types import Job, Result

    env = {**os.environ, "CTAI_MODEL__BACKEND": "keras", "CTAI_MODEL__BATCH_SIZE": str(batch),
           "CTAI_DATA__DIR": tempfile.mkdtemp()}
    config = configuration.load(environ=env)
    pipeline = Pipeline(config, plugin_manager(config))
    options = {"send": False, "outputs": out is not None, **({"out_dir": str(out)} if out else {})}
    pipeline.run(Job("warm-up", "bench", options), load_files(paths[:batch]))  # compiles the batch's shape
    if ready is not None:
        ready.wait()
    start = time.monotonic()
    outcomes = pipeline.run(Job("bench", "bench", options), load_files(paths))
    end = time.monotonic()
    classified = sum(isinstance(o, Result) for o in outcomes)
    if classified < len(paths):
        print(f"  ({len(paths) - classified} of {len(paths)} not classified)")
    return start, end, classified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", action="store_true", help="also end to end with the SR and SC written")
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="pipelines at once, each in a process of its own (as worker processes)")
    args = parser.parse_args()

    import keras

    from ctai.model.backend import KerasClassifier, shipped_model_dir

    print(f"Keras {keras.__version__} on {keras.backend.backend()}, devices {keras.distribution.list_devices()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    classifier = KerasClassifier(shipped_model_dir())
    print(f"accelerated: {classifier.accelerated}", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        (work / "set").mkdir()
        t0 = time.perf_counter()
        pictures = sorted(PICTURES.glob("*.jpeg"))
        paths = dicom_set([pictures[i % len(pictures)] for i in range(args.images)], work / "set", ("8-bit",))
        print(f"{len(paths)} 8-bit DICOM files in {time.perf_counter() - t0:.1f} s", flush=True)
        inputs = np.load(model_inputs(paths[:len(pictures)], work / "inputs.npy", shipped_model_dir()))
        for batch in args.batch:
            x = np.resize(inputs, (batch, *inputs.shape[1:])).astype(np.float32)
            alone = network_alone(classifier, x, args.repeat)
            print(f"batch {batch}: network alone " + ", ".join(f"{k} {v:,.0f} images/s" for k, v in alone.items()),
                  flush=True)
            for processes in args.processes:
                for out in (None, work / f"out-{batch}") if args.out else (None,):
                    rate = end_to_end(paths, batch, out, processes)
                    print(f"batch {batch}: end to end in {processes} process{'es' * (processes > 1)}"
                          f"{' with SR and SC written' if out else ''} {rate:,.0f} images/s, "
                          f"{rate / alone['one call']:.2f}x the network alone in one call", flush=True)


if __name__ == "__main__":
    main()
