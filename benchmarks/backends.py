"""Classifier backends against the Keras reference: agreement on the validation split, and speed
at several batch sizes, measured in one run (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/backends.py --data ../shared/data/chest_xray/train [--batch 1 16 64]

The validation split is training's (``training.data.load``: patients split with the default seed).
For each backend: how many labels equal Keras's, the largest probability difference |Δp| and
heat-map difference, then per batch size the best of ``--repeat`` timings (wall clock and CPU) of
the calibrated ``predict`` and its speed relative to Keras, the backends taking turns.
``backend = "auto"`` (``ctai.model.converted.AUTO``) should be the fastest that keeps every label
and |Δp| <= 0.005. OpenVINO's bfloat16 default (not offered as a backend) is measured for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

MAX_DELTA_P = 0.005


def best_times(calls: dict[str, object], repeat: int) -> dict[str, tuple[float, float]]:
    """The least wall-clock and the least CPU time (all threads) of ``repeat`` calls of each,
    taking turns. On a busy machine the CPU time is the fairer comparison: a backend with fewer
    threads gets a smaller share of contended cores, and waits longer for them."""
    for fn in calls.values():
        fn()  # warm-up
    walls: dict[str, list[float]] = {name: [] for name in calls}
    cpus: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    return {name: (min(walls[name]), min(cpus[name])) for name in calls}


def classifiers(folder: Path, cache: Path) -> dict[str, object]:
    from ctai.model.backend import KerasClassifier
    from ctai.model.converted import ConvertedClassifier, Network, converted_network

    found: dict[str, object] = {}
    for name, make in [("keras", partial(KerasClassifier, folder)),
                       ("onnxruntime", partial(ConvertedClassifier, folder, "onnxruntime", cache)),
                       ("openvino", partial(ConvertedClassifier, folder, "openvino", cache))]:
        t0 = time.perf_counter()
        found[name] = make()
        print(f"{name}: load {time.perf_counter() - t0:.1f} s", flush=True)
    bf16 = ConvertedClassifier(folder, "openvino", cache)
    bf16.network = Network(converted_network(folder, cache, maps=True), "openvino", float32=False)
    found["openvino-default-precision"] = bf16
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Kermany-layout training folder")
    parser.add_argument("--model", type=Path, help="model folder (default: the shipped one)")
    parser.add_argument("--cache", type=Path, help="converted-network cache (default: a temporary folder)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from ctai.model.backend import shipped_model_dir
    from training import data
    from training.report import hardware

    print(hardware())
    _, val, _ = data.load(args.data, 0.2, 20180222)
    with tempfile.TemporaryDirectory() as temporary:
        backends = classifiers(args.model or shipped_model_dir(), args.cache or Path(temporary))
        size = backends["keras"].input_size
        x, _ = data.load_arrays(val, size)
        print(f"validation split: {len(x)} images", flush=True)
        outputs = {name: c.analyse(x, heatmaps=True)[:2] for name, c in backends.items()}
        p_ref, maps_ref = outputs["keras"]
        for name, (p, maps) in outputs.items():
            same = int((p.argmax(1) == p_ref.argmax(1)).sum())
            dp = float(np.abs(p - p_ref).max())
            dmap = float(np.abs(maps - maps_ref).max())
            verdict = "ok" if same == len(x) and dp <= MAX_DELTA_P else "FAILS"
            print(f"{name:>27}: labels equal {same}/{len(x)}, max |Δp| {dp:.2e}, max |Δheat map| {dmap:.2e} "
                  f"({verdict})", flush=True)
        for batch in args.batch:
            times = best_times({name: partial(c.predict, x[:batch]) for name, c in backends.items()}, args.repeat)
            keras_wall, keras_cpu = times["keras"]
            for name, (wall, cpu) in times.items():
                print(f"batch {batch:3d} {name:>27}: {wall * 1000:8.1f} ms, {batch / wall:7.1f} images/s, "
                      f"{keras_wall / wall:.2f}x Keras; CPU {cpu * 1000:8.1f} ms, {keras_cpu / cpu:.2f}x Keras",
                      flush=True)

if __name__ == "__main__":
    main()
