"""Speed work must not move what the product computes: each per-image step (decoding, the gate's
and the classifier's inputs, the result picture with its heat map) gives, bit for bit, what it
gave when ``tests/data/steps.json`` was recorded (issue 32), for the committed radiographs in the
encodings the benchmark uses (benchmarks/product.py), at their size and enlarged with a black frame
as a detector's image. After a deliberate change, record again:
``.venv/bin/python -m tests.test_steps_unchanged`` (and say why in the commit)."""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import RLELossless

from ctai import config as configuration
from ctai.inputs import load
from ctai.model.preprocess import to_model_input
from ctai.outputs.picture import render_picture
from ctai.plugins import plugin_manager
from ctai.types import CLASSES, ModelInfo, Prediction, Result
from tests.conftest import DATA, IMAGES
from tests.dicomfactory import compressed, dataset, dcmtk, save

RECORDED = DATA / "steps.json"
#: The gate's input size (ctai/model/gate-artifact/model.json) and the classifier's.
GATE_SIZE, MODEL_SIZE = 64, 160
ENCODINGS = ("8-bit", "12-bit", "monochrome1", "jpeg", "rle")


def _pixels(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """A committed radiograph in 8 bits, enlarged to ``size`` inside a black frame if given."""
    with Image.open(path) as im:
        gray = im.convert("L")
    if size is None:
        return np.asarray(gray)
    framed = np.zeros(size[::-1], np.uint8)
    inner = np.asarray(gray.resize((size[0] - 40, size[1] - 60), Image.Resampling.BILINEAR))
    framed[30:-30, 20:-20] = inner
    return framed


def _file(pixels: np.ndarray, encoding: str, path: Path) -> Path:
    if encoding == "12-bit":
        return save(dataset(pixels.astype(np.uint16) * 16, bits_stored=12), path)
    if encoding == "monochrome1":
        return save(dataset(255 - pixels, "MONOCHROME1"), path)
    ds = dataset(pixels, SOPInstanceUID="1.2.3.4")
    if encoding == "rle":
        return compressed(ds, RLELossless, path)
    plain = save(ds, path)
    return dcmtk("dcmcjpeg", plain, path.with_suffix(".jpeg.dcm"), "+eb") if encoding == "jpeg" else plain


def _digest(array: np.ndarray | bytes) -> str:
    data = array if isinstance(array, bytes) else np.ascontiguousarray(array).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _cases() -> list[tuple[str, Path, tuple[int, int] | None]]:
    pictures = sorted(IMAGES.glob("*.jpeg"))
    sizes = [None] * len(pictures)
    sizes[0], sizes[1], sizes[2] = (1024, 1024), (1500, 1200), (2048, 2500)
    return [(f"{picture.stem}@{size or 'own'}", picture, size) for picture, size in zip(pictures, sizes, strict=True)]


def steps(folder: Path) -> dict[str, str]:
    """Digests of each step's result for every case and encoding."""
    config = configuration.load(environ={})
    pm = plugin_manager(config)
    rng = np.random.default_rng(0)
    digests = {}
    for name, picture, size in _cases():
        pixels = _pixels(picture, size)
        for encoding in ENCODINGS:
            [source] = load(_file(pixels, encoding, folder / f"{picture.stem}-{encoding}.dcm"))
            heatmap = rng.random((5, 5), dtype=np.float32)
            probabilities = dict(zip(CLASSES, (0.2, 0.7, 0.1), strict=True))
            prediction = Prediction(probabilities, ModelInfo("m", "1"), heatmap, datetime(2026, 1, 2, 3, 4))
            digests[f"{name} {encoding}"] = " ".join([
                _digest(source.pixels),
                _digest(to_model_input(source.pixels, GATE_SIZE)),
                _digest(pm.hook.ctai_preprocess(image=source, size=MODEL_SIZE, config=config)),
                _digest(render_picture(Result(source, prediction)).tobytes()),
            ])
    return digests


def test_each_step_gives_the_recorded_bytes(tmp_path):
    recorded = json.loads(RECORDED.read_text())
    assert steps(tmp_path) == recorded


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as temporary:
        RECORDED.write_text(json.dumps(steps(Path(temporary)), indent=1) + "\n")
    print(f"recorded {RECORDED}", file=sys.stderr)
    pytest.main(["-q", __file__])
