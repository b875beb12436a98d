"""What a heat map costs per image (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/heatmap.py [--model DIR] [--batch 1 16] [--repeat 5]

On a 2500 x 2048 radiograph (synthetic, float32 as ``ctai.inputs`` gives): the preprocessing
(``to_model_input``) and the extra time ``render_picture`` takes to draw the heat map. Per batch
size: the calibrated ``KerasClassifier.predict`` per image and the same with the class-activation
maps (``analyse(batch, heatmaps=True)``: one forward pass with more outputs). The heat map's cost
(maps and drawing) is then given as a share of the classification time per image
(preprocessing and network).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from inference import best_time  # benchmarks/inference.py
from pydicom import Dataset

from ctai.model.preprocess import to_model_input
from ctai.outputs.picture import render_picture
from ctai.types import CLASSES, ModelInfo, Prediction, Result, SourceImage


def radiograph() -> np.ndarray:
    """A display-ready image of a radiograph's size, with a black margin that preprocessing trims."""
    pixels = np.random.default_rng(0).uniform(0, 1, (2500, 1948)).astype(np.float32)
    return np.pad(pixels, ((0, 0), (100, 0)))


def drawing_times(pixels: np.ndarray, heatmap: np.ndarray, repeat: int) -> tuple[float, float]:
    """Seconds to render the result picture of ``pixels`` without and with ``heatmap``."""
    probabilities = dict(zip(CLASSES, (0.2, 0.5, 0.3), strict=True))
    results = [Result(SourceImage("bench", Dataset(), pixels), Prediction(probabilities, ModelInfo("m", "0"), h))
               for h in (None, heatmap)]
    plain, drawn = (best_time(lambda r=result: render_picture(r), repeat) for result in results)
    return plain, drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model folder (default: the shipped one)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from ctai.model.backend import KerasClassifier, shipped_model_dir
    from training.report import hardware

    classifier = KerasClassifier(args.model or shipped_model_dir())
    size = classifier.input_size
    print(f"{classifier.info.name} {classifier.info.version} on {hardware()}")
    pixels = radiograph()
    preprocess = best_time(lambda: to_model_input(pixels, size), args.repeat)
    maps = classifier.analyse(to_model_input(pixels, size)[np.newaxis], heatmaps=True).heatmaps
    plain_picture, heat_picture = drawing_times(pixels, maps[0, :, :, 0], args.repeat)
    draw = heat_picture - plain_picture
    print(f"2500 x 2048 radiograph: preprocessing {preprocess * 1000:.1f} ms; result picture "
          f"{plain_picture * 1000:.1f} ms, with its {maps.shape[1]} x {maps.shape[2]} heat map "
          f"{heat_picture * 1000:.1f} ms (drawing +{draw * 1000:.1f} ms)")
    rng = np.random.default_rng(0)
    for batch in args.batch:
        x = rng.standard_normal((batch, size, size, 1)).astype(np.float32)
        network = best_time(lambda x=x: classifier.predict(x), args.repeat) / batch
        with_maps = best_time(lambda x=x: classifier.analyse(x, heatmaps=True), args.repeat) / batch
        classification, heat = preprocess + network, with_maps - network + draw
        print(f"batch {batch:3d}: network {network * 1000:.2f} ms/image, with maps {with_maps * 1000:.2f} ms "
              f"({(with_maps - network) / network:+.1%}); classification {classification * 1000:.1f} ms/image, "
              f"heat map (maps and drawing) {heat * 1000:.1f} ms = {heat / classification:.0%} of it "
              f"({heat / network:.0%} of the network alone); best of {args.repeat}", flush=True)


if __name__ == "__main__":
    main()
