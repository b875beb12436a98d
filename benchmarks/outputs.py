"""What the SR and SC outputs cost per image (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/outputs.py [--repeat 10] [--large] [--network]

On the committed test radiographs (tests/data/images, 224 x 224, wrapped as ``ctai.inputs`` wraps
pictures; ``--large``: also one enlarged to 2500 x 2048, a DX detector's size): building the SR and the SC
(picture included), the SC with a heat map, and encoding each as a file (``to_bytes``), the way ``ctai.outputs.sr``
and ``ctai.outputs.sc`` do it (``build_*``: a copy of the object highdicom built for the first
image of its kind, filled in) and with highdicom building every object (``reference_*``).
The two ways are measured alternately, image after image, and each figure is the median CPU time
of the calling thread (``time.thread_time``), which other processes on the machine disturb less
than the wall clock. ``--network``: the shipped model's calibrated ``predict`` per image at batch
16, for the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset

from ctai.inputs.wrap import PatientInfo, wrap_image
from ctai.outputs import sc, sr
from ctai.outputs.common import to_bytes
from ctai.outputs.picture import render_picture
from ctai.types import CLASSES, ModelInfo, Prediction, Result, SourceImage

IMAGES = Path(__file__).resolve().parent.parent / "tests" / "data" / "images"
MODEL = ModelInfo("ctai-resnet", "1.0.0")


def results(large: bool) -> list[Result]:
    """One Result per committed image (and a large source), each with a different prediction."""
    rng = np.random.default_rng(0)
    sources = []
    for index, path in enumerate(sorted(IMAGES.glob("*.jpeg"))):
        with Image.open(path) as image:
            dataset = wrap_image(image, PatientInfo(id=f"P{index}", name=f"Doe^{index}"), path.name)
            sources.append(SourceImage(str(path), dataset, np.asarray(image.convert("L"), np.float32) / 255))
    if large:  # the first radiograph enlarged to a DX detector's size
        with Image.open(sources[0].path) as image:
            pixels = np.asarray(image.convert("L").resize((2048, 2500), Image.Resampling.BICUBIC), np.float32) / 255
        sources.append(dataclasses.replace(sources[0], path="large", pixels=pixels))
    return [Result(source, Prediction(dict(zip(CLASSES, rng.dirichlet(np.ones(3)).tolist(), strict=True)),
                                      MODEL, started=datetime.now())) for source in sources]


def cpu_ms(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    """CPU milliseconds of the calling thread for ``fn(*args)``, and its value."""
    t0 = time.thread_time()
    value = fn(*args)
    return (time.thread_time() - t0) * 1000, value


def reference_sc(result: Result, series_number: int) -> Dataset:
    return sc.reference_sc(result, series_number, render_picture(result))


WAYS = {"highdicom": (sr.reference_sr, reference_sc), "copy": (sr.build_sr, sc.build_sc)}


def measure(results: list[Result], repeat: int) -> dict[str, list[float]]:
    """Milliseconds of each step for each image and repetition, the two ways interleaved."""
    times: dict[str, list[float]] = defaultdict(list)
    heat = np.random.default_rng(1).uniform(0, 1, (7, 7)).astype(np.float32)
    for _ in range(repeat):
        for result in results:
            heated = dataclasses.replace(result, prediction=dataclasses.replace(result.prediction, heatmap=heat))
            for way, (make_sr, make_sc) in WAYS.items():
                ms, report = cpu_ms(make_sr, result, 9901)
                times[f"SR build, {way}"].append(ms)
                ms, picture = cpu_ms(make_sc, result, 9902)
                times[f"SC build, {way}"].append(ms)
                times[f"SC build with heat map, {way}"].append(cpu_ms(make_sc, heated, 9902)[0])
                times[f"SR write, {way}"].append(cpu_ms(to_bytes, report)[0])
                times[f"SC write, {way}"].append(cpu_ms(to_bytes, picture)[0])
            times["SC picture alone (render_picture)"].append(cpu_ms(render_picture, result)[0])
    return times


def network_ms(repeat: int) -> float:
    """The shipped model's calibrated predict, CPU ms per image at batch 16 (all threads)."""
    from ctai.model.backend import KerasClassifier, shipped_model_dir

    classifier = KerasClassifier(shipped_model_dir())
    x = np.random.default_rng(0).standard_normal((16, classifier.input_size, classifier.input_size, 1))
    classifier.predict(x.astype(np.float32))
    spent = []
    for _ in range(repeat):
        t0 = time.process_time()
        classifier.predict(x.astype(np.float32))
        spent.append((time.process_time() - t0) * 1000 / 16)
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--large", action="store_true", help="also a 2500 x 2048 source, reported apart")
    parser.add_argument("--network", action="store_true", help="also the network's cost per image")
    args = parser.parse_args()

    small = results(large=False)
    measure(small, 1)  # warm-up: the first image of each kind builds its highdicom object
    groups = {f"{len(small)} test images (224 x 224)": small}
    if args.large:
        large = results(large=True)[-1:]
        measure(large, 1)
        groups["2500 x 2048 source"] = large
    network = network_ms(args.repeat) if args.network else None
    for title, chosen in groups.items():
        times = {step: statistics.median(values) for step, values in measure(chosen, args.repeat).items()}
        print(f"{title}, median CPU ms per image of {args.repeat} rounds:")
        for step, ms in times.items():
            print(f"  {step:38s} {ms:7.2f}")
        for way in ("highdicom", "copy"):
            both = times[f"SR build, {way}"] + times[f"SC build, {way}"]
            line = f"  SR + SC build, {way:9s}{'':14s} {both:7.2f}"
            written_too = both + times[f"SR write, {way}"] + times[f"SC write, {way}"]
            line += f"   with writing both {written_too:7.2f}"
            if network:
                line += f"   = {both / network:.1f} x the network ({network:.2f} ms/image at batch 16)"
            print(line)
        print(f"  copy vs highdicom: SR build {times['SR build, highdicom'] / times['SR build, copy']:.1f} x "
              f"faster, SC build {times['SC build, highdicom'] / times['SC build, copy']:.1f} x, "
              f"SR write {times['SR write, highdicom'] / times['SR write, copy']:.1f} x", flush=True)


if __name__ == "__main__":
    main()
