"""The whole product against the bare network, as whole processes, and where its CPU time goes
(prints numbers, asserts nothing).

    .venv/bin/python benchmarks/product.py --data ../shared/data/chest_xray/train [--images 360] [--rounds 3]

Builds ``--images`` DICOM radiographs from the data set's pictures in six encodings (8-bit,
16-bit, MONOCHROME1, 1024-px CR, JPEG baseline, RLE) in a temporary folder, then times, in
alternated rounds (each process in turn, so that the machine's load falls on all alike), whole
processes, wall clock and CPU time (user + system, from the kernel's accounting of children):

- a bare Keras process: import Keras, load the model, ``predict_on_batch`` the images' model
  inputs (prepared beforehand, as ctai prepares them) at batch 16;
- a bare ONNX process: ONNX Runtime on the product's own converted file (with its heat-map
  output, as the product runs it: threads that wait idle, ``Network.concurrency`` batches at once,
  ``ctai.model.converted.Network``), the same inputs at batch 16;
- ``ctai classify --json --out DIR`` on the set, as configured by default ("product, --out");
- the same without the SC, and without the SR ("product, --out, no SC": ``[plugins] disabled``);
- ``ctai classify --json``: no outputs made or written ("product, no --out");
- ``ctai classify --json`` of one file: its CPU time is the start-up (imports, plugins, networks);
- with ``--keras-backend``, ``ctai classify --json --out DIR`` on ``[model] backend = "keras"``.

Prints each one's median and the product's ratios to the bare network in the same backend (the
issue's targets: <= 1.5 with --out, <= 1.2 without) and to bare Keras, each the median of the
rounds' own ratios (``paired``), and what each output costs in a whole run (``output_cost``): more
than its stages below, each of which runs alone (docs/model-experiments.md, "2026-12-07
(evening)"). Then the per-stage CPU time of the product's own steps on the same set, one stage
at a time in this process: decoding (per encoding), the selection (header rules and the gate's
network), preprocessing, the network (heat maps included), the result picture (of which the heat
map), the SR, the SC, writing them and syncing them (a fresh folder's files, in the background
as the folder plugin does). Last, the pipeline in this
process with the network replaced by an instant one (``without_network``): the most images a
second that one process can give an accelerator. The converted networks are made first (the
one-time cost of a first start, shown apart) in ``--data-dir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ctai.config import Config
    from ctai.hookspecs import Classifier
    from ctai.model.backend import Analysis
    from ctai.pipeline import Pipeline

ENCODINGS = ("8-bit", "16-bit", "monochrome1", "cr-1024", "jpeg", "rle")
#: The DICOM outputs, each also left out of one process (``[plugins] disabled``, by its plugin's name).
OUTPUTS = ("SR", "SC")

BARE = """
import sys
import numpy as np
from pathlib import Path
from ctai.model.storage import load_network
x = np.load(sys.argv[1])
model = load_network(Path(sys.argv[2]))
for i in range(0, len(x), 16):
    model.predict_on_batch(x[i:i + 16])
print(len(x), "inputs")
"""

BARE_ONNX = """
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from ctai.model.converted import Network
x = np.load(sys.argv[1])
network = Network(Path(sys.argv[2]), "onnxruntime")
with ThreadPoolExecutor(network.concurrency) as pool:  # batches at once, as the product runs them
    list(pool.map(network, [x[i:i + 16] for i in range(0, len(x), 16)]))
print(len(x), "inputs")
"""


def dicom_set(pictures: list[Path], folder: Path, encodings: tuple[str, ...] = ENCODINGS) -> list[Path]:
    """One DICOM file per picture, ``encodings`` (of ``ENCODINGS``) taken in turn."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

    paths = []
    for i, picture in enumerate(pictures):
        encoding = encodings[i % len(encodings)]
        with Image.open(picture) as im:
            gray = im.convert("L")
            if encoding == "cr-1024":
                gray = gray.resize((1024, 1024), Image.Resampling.BILINEAR)
            pixels = np.asarray(gray)
        photometric, bits = "MONOCHROME2", 8
        if encoding in ("16-bit", "cr-1024"):
            pixels, bits = pixels.astype(np.uint16) * 16, 12
        elif encoding == "monochrome1":
            pixels, photometric = 255 - pixels, "MONOCHROME1"
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.BodyPartExamined, ds.PatientID, ds.PatientName = "CR", "CHEST", f"P{i}", "Bench^Mark"
        ds.set_pixel_data(pixels, photometric, bits)
        path = folder / f"{i:04d}-{encoding}.dcm"
        if encoding == "rle":
            ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
        if encoding == "jpeg":  # dcmtk's baseline JPEG, as a modality would send it
            plain = path.with_suffix(".plain")
            path.rename(plain)
            subprocess.run(["dcmcjpeg", "+eb", str(plain), str(path)], check=True, capture_output=True)
            plain.unlink()
        paths.append(path)
    return paths


def model_inputs(paths: list[Path], out: Path, model: Path) -> Path:
    """The model inputs of the set (as ctai reads and preprocesses them), saved for the bare processes."""
    from ctai.inputs import load_files
    from ctai.model.backend import CalibratedClassifier
    from ctai.model.preprocess import to_model_input

    size = CalibratedClassifier(model).input_size
    np.save(out, np.stack([to_model_input(image.pixels, size) for image in load_files(paths)]))
    return out


def prepared_networks(data_dir: Path) -> Path:
    """The folder of the networks converted once (``ctai prepare``) into the data dir ``data_dir``."""
    from ctai.model.converted import cache_dir

    subprocess.run([sys.executable, "-m", "ctai.cli", "prepare"], env={**os.environ, "CTAI_DATA__DIR": str(data_dir)},
                   check=True, capture_output=True)
    return cache_dir(str(data_dir))


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Seconds the command took, wall and CPU (its process and theirs), and its output.
    ``ctai classify`` exits with 1 when some input was refused (the gate may refuse a few of the
    data set's pictures)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode not in (0, 1) or not run.stdout:
        sys.exit(f"{' '.join(command[:4])}... failed:\n{run.stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, run.stdout


class Stages:
    """CPU seconds and counts per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, name: str, count: int = 1) -> Iterator[None]:
        t0 = time.process_time()  # the whole process: ONNX Runtime's threads count too
        yield
        self.seconds[name] += time.process_time() - t0
        self.counts[name] += count


def warm_pipeline(env: dict[str, str]) -> tuple[Config, Pipeline]:
    """The configuration ``ctai classify`` has under ``env``, and a pipeline with its networks loaded."""
    from ctai import config as configuration
    from ctai.pipeline import Pipeline

    config = configuration.load(environ={**os.environ, **env})
    pipeline = Pipeline(config)
    pipeline.warm_up()
    return config, pipeline


def stage_costs(paths: list[Path], env: dict[str, str], out: Path) -> Stages:
    """The CPU time of each of the product's steps on ``paths``, a batch at a time, one step after
    the other in this thread, with the configuration ``ctai classify`` has under ``env``."""
    from ctai.builtin.folder import start_sync, write
    from ctai.inputs import load
    from ctai.outputs.picture import _draw_heatmap, _scaled_source, picture
    from ctai.outputs.sc import build_sc
    from ctai.outputs.sr import build_sr
    from ctai.types import Output, Result, SourceImage

    config, pipeline = warm_pipeline(env)
    hook, series = pipeline.pm.hook, config["outputs"]
    size = pipeline.classifier.input_size
    stages = Stages()
    syncs: list[Future[None]] = []
    for start in range(0, len(paths), int(config["model"]["batch_size"])):
        images = []
        for path in paths[start:start + int(config["model"]["batch_size"])]:
            with stages(f"decode {path.stem.split('-', 1)[1]}"):
                images += load(path)
        with stages("select (header rules, gate)", len(images)):
            kept = [o for o in pipeline._judged([pipeline._selected(image) for image in images])
                    if isinstance(o, SourceImage)]
        with stages("preprocess", len(kept)):
            x = np.stack([hook.ctai_preprocess(image=image, size=size, config=config) for image in kept])
        with stages("network (heat maps included)", len(kept)):
            predictions = pipeline._predictions(x.astype(np.float32))
        for image, prediction in zip(kept, predictions, strict=True):
            result = Result(image, prediction)
            if prediction.heatmap is not None:
                source = _scaled_source(image.pixels)
                with stages("  of which the heat map"):
                    _draw_heatmap(source, image.pixels, prediction.heatmap)
            with stages("result picture"):
                picture(result)
            with stages("SR"):
                sr = build_sr(result, series["sr_series_number"], True)
            with stages("SC"):
                sc = build_sc(result, series["sc_series_number"])
            with stages("write (SR + SC files)"):  # each synced in the background, as the folder plugin does
                syncs += [start_sync(write(out, Output("sr", sr))), start_sync(write(out, Output("sc", sc)))]
    with stages("sync (waits at the end)", len(syncs) // 2):
        for sync in syncs:
            sync.result()
    return stages


class InstantNetwork:
    """A classifier that answers at once, with ``real``'s answer for its first rows (any batch of
    up to ``len(analysis)``): what is left of a pipeline is everything but the network."""

    def __init__(self, real: Classifier, analysis: Analysis) -> None:
        self.info, self.input_size, self.concurrency = real.info, real.input_size, real.concurrency
        self.analysis = analysis

    def analyse(self, batch: np.ndarray, heatmaps: bool = False) -> Analysis:
        return self.analysis._make(None if part is None else part[:len(batch)] for part in self.analysis)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.analyse(batch).probabilities


def without_network(paths: list[Path], env: dict[str, str], rounds: int) -> tuple[float, float]:
    """The best of ``rounds`` runs of one pipeline, in this process, over ``paths`` with an instant
    network and no outputs: images a second and CPU-ms an image (all its threads). The most that
    one process can give a network that takes no time, as on a fast accelerator."""
    from ctai.inputs import load_files
    from ctai.types import Job

    config, pipeline = warm_pipeline(env)
    size, batch = pipeline.classifier.input_size, int(config["model"]["batch_size"])
    real = pipeline.analyse(np.random.default_rng(0).random((batch, size, size, 1), dtype=np.float32))
    pipeline._classifier = InstantNetwork(pipeline.classifier, real)
    runs = []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        pipeline.run(Job("bench", "bench", {"send": False, "outputs": False}), load_files(paths))
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = min(runs)
    return len(paths) / wall, 1000 * cpu / len(paths)


def print_stages(stages: Stages, start: float) -> None:
    """The stages' CPU time, after ``start``: the CPU time of a ``ctai classify`` of one file
    (its start-up: imports, plugins, both networks loaded)."""
    decode = [name for name in stages.seconds if name.startswith("decode")]
    order = sorted(decode) + [name for name in stages.seconds if name not in decode]
    total = sum(seconds for name, seconds in stages.seconds.items() if not name.startswith(" "))
    print("per-stage CPU time (this process, one stage at a time):")
    print(f"  {'start-up (classify one file)':<30} {start:6.2f} s")
    for name in order:
        seconds, count = stages.seconds[name], stages.counts[name]
        print(f"  {name:<30} {seconds:6.2f} s  {1000 * seconds / max(count, 1):6.1f} ms/image ({count})")
    print(f"  {'total':<30} {start + total:6.2f} s")


def paired(times: dict[str, list[float]], name: str, bare: str) -> float:
    """The median of the rounds' own ratios of ``name`` to ``bare``: each round's processes ran
    one after the other, so a machine that is slower for a while weighs on both sides alike."""
    return statistics.median(t / b for t, b in zip(times[name], times[bare], strict=True))


def output_cost(cpus: dict[str, list[float]], kind: str, images: int) -> float:
    """CPU-ms an image that the output ``kind`` costs in a whole ``--out`` run: the median of the
    rounds' differences between the product with it and without it."""
    with_it, without = cpus["product, --out"], cpus[f"product, --out, no {kind}"]
    return 1000 * statistics.median(a - b for a, b in zip(with_it, without, strict=True)) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of chest radiograph pictures")
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="ctai's data dir, with its converted networks")
    parser.add_argument("--model", type=Path, help="model folder ([model] path); default: the shipped one")
    parser.add_argument("--keras-backend", action="store_true", help="also time the product on Keras")
    args = parser.parse_args()

    from ctai.model.backend import shipped_model_dir
    from ctai.model.converted import cache_dir, converted_network

    model = args.model or shipped_model_dir()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        data_dir = args.data_dir or work / "ctai-data"
        pictures = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if not pictures:
            raise SystemExit(f"no JPEG or PNG pictures under {args.data}")
        pictures = pictures[:: max(1, len(pictures) // args.images)][: args.images]
        (work / "set").mkdir()
        t0 = time.perf_counter()
        paths = dicom_set(pictures, work / "set")
        x = model_inputs(paths, work / "inputs.npy", model)
        print(f"{len(paths)} DICOM files ({', '.join(ENCODINGS)}) built in {time.perf_counter() - t0:.1f} s",
              flush=True)

        base = {"CTAI_DATA__DIR": str(data_dir), "CTAI_MODEL__BACKEND": "onnxruntime",
                **({"CTAI_MODEL__PATH": str(model)} if args.model else {})}
        classify = [sys.executable, "-m", "ctai.cli", "classify", "--json"]
        with_out = [*classify, "--out", str(work / "out"), str(work / "set")]
        first, _, output = timed(with_out, base)
        refused = sum("error" in json.loads(line) for line in output.splitlines())
        print(f"first start (converts the networks once unless cached in {data_dir}): {first:.1f} s; "
              f"{refused} of {len(paths)} refused", flush=True)
        onnx = converted_network(model, cache_dir(str(data_dir)), maps=True)
        processes = {
            "bare Keras": ([sys.executable, "-c", BARE, str(x), str(model)], {}),
            "bare ONNX": ([sys.executable, "-c", BARE_ONNX, str(x), str(onnx)], {}),
            "product, --out": (with_out, base),
            **{f"product, --out, no {kind}": (with_out, {**base, "CTAI_PLUGINS__DISABLED": json.dumps([kind.lower()])})
               for kind in OUTPUTS},
            "product, no --out": ([*classify, str(work / "set")], base),
            "product, one file": ([*classify, str(paths[0])], base),
        }
        if args.keras_backend:
            processes["product on Keras, --out"] = (with_out, {**base, "CTAI_MODEL__BACKEND": "keras"})
        walls: dict[str, list[float]] = {name: [] for name in processes}
        cpus: dict[str, list[float]] = {name: [] for name in processes}
        for round_ in range(args.rounds):
            for name, (command, env) in processes.items():
                wall, cpu, _ = timed(command, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
            print(f"round {round_ + 1} (wall s): " + json.dumps({k: round(v[-1], 1) for k, v in walls.items()}),
                  flush=True)
        wall, cpu = ({name: statistics.median(v) for name, v in d.items()} for d in (walls, cpus))
        start = cpu.pop("product, one file")
        for name in cpu:
            print(f"{name:>24}: median {wall[name]:6.1f} s wall ({len(paths) / wall[name]:5.1f} images/s), "
                  f"{cpu[name]:6.1f} CPU-s; {paired(walls, name, 'bare ONNX'):.2f}x bare ONNX "
                  f"(CPU {paired(cpus, name, 'bare ONNX'):.2f}x), {paired(walls, name, 'bare Keras'):.2f}x bare Keras")

        for kind in OUTPUTS:
            print(f"the {kind} in a whole run: {output_cost(cpus, kind, len(paths)):.1f} CPU-ms an image "
                  f"(product, --out less product, --out, no {kind}; median of the rounds)")

        stages = stage_costs(paths, base, work / "stages-out")
        print_stages(stages, start)
        rate, cpu_ms = without_network(paths, base, args.rounds)
        print(f"one process without its network (an instant one), no --out: {rate:.0f} images/s, "
              f"{cpu_ms:.2f} CPU-ms an image (best of {args.rounds})")


if __name__ == "__main__":
    main()
