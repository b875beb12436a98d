"""The whole product against the bare network, as whole processes (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/product.py --data ../shared/data/chest_xray/train [--images 360] [--rounds 3]

Builds ``--images`` DICOM radiographs from the data set's pictures in six encodings (8-bit,
16-bit, MONOCHROME1, 1024-px CR, JPEG baseline, RLE) in a temporary folder, then times, in
alternated rounds, whole processes:

- ``ctai classify --json --out DIR`` on the set, as configured by default ("product"), with the
  SR and SC plugins disabled, and with ``[model] backend = "keras"`` too;
- a bare Keras process: import Keras, load the shipped model, ``predict_on_batch`` the same
  images' model inputs (prepared beforehand) at batch 16.

Prints each one's median and its ratio to the bare process (the issue's target: product/bare
<= 1.0). The converted backends are converted first (the one-time cost of a first start, shown
apart) into ``--data-dir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ENCODINGS = ("8-bit", "16-bit", "monochrome1", "cr-1024", "jpeg", "rle")

BARE = """
import sys
import numpy as np
from ctai.model.backend import shipped_model_dir
from ctai.model.storage import load_network
x = np.load(sys.argv[1])
model = load_network(shipped_model_dir())
for i in range(0, len(x), 16):
    model.predict_on_batch(x[i:i + 16])
print(len(x), "inputs")
"""


def dicom_set(pictures: list[Path], folder: Path) -> list[Path]:
    """One DICOM file per picture, the encodings taken in turn."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

    paths = []
    for i, picture in enumerate(pictures):
        encoding = ENCODINGS[i % len(ENCODINGS)]
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


def model_inputs(paths: list[Path], out: Path) -> Path:
    """The model inputs of the set (as ctai reads and preprocesses them), saved for the bare process."""
    from ctai.inputs import load_files
    from ctai.model.backend import CalibratedClassifier, shipped_model_dir
    from ctai.model.preprocess import to_model_input

    size = CalibratedClassifier(shipped_model_dir()).input_size
    np.save(out, np.stack([to_model_input(image.pixels, size) for image in load_files(paths)]))
    return out


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds the command took, and its output. ``ctai classify`` exits with 1 when some input
    was refused (the gate may refuse a few of the data set's pictures)."""
    t0 = time.perf_counter()
    run = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    if run.returncode not in (0, 1) or not run.stdout:
        sys.exit(f"{' '.join(command[:4])}... failed:\n{run.stderr[-2000:]}")
    return time.perf_counter() - t0, run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of chest radiograph pictures")
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="ctai's data dir, with its converted networks")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        data_dir = args.data_dir or work / "ctai-data"
        pictures = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        pictures = pictures[:: max(1, len(pictures) // args.images)][: args.images]
        (work / "set").mkdir()
        t0 = time.perf_counter()
        paths = dicom_set(pictures, work / "set")
        x = model_inputs(paths, work / "inputs.npy")
        print(f"{len(paths)} DICOM files ({', '.join(ENCODINGS)}) built in {time.perf_counter() - t0:.1f} s",
              flush=True)

        classify = [sys.executable, "-m", "ctai.cli", "classify", "--json", "--out", str(work / "out"),
                    str(work / "set")]
        no_sr_sc = {"CTAI_PLUGINS__DISABLED": '["sr", "sc"]'}
        base = {"CTAI_DATA__DIR": str(data_dir)}
        processes = {
            "bare Keras": ([sys.executable, "-c", BARE, str(x)], {}),
            "product": (classify, base),
            "product, no SR/SC": (classify, {**base, **no_sr_sc}),
            "product, no SR/SC, keras backend": (classify, {**base, **no_sr_sc, "CTAI_MODEL__BACKEND": "keras"}),
        }
        first, output = timed(classify, {**base, **no_sr_sc})
        refused = sum("error" in json.loads(line) for line in output.splitlines())
        print(f"first start (converts the networks once unless cached in {data_dir}): {first:.1f} s; "
              f"{refused} of {len(paths)} refused", flush=True)
        times: dict[str, list[float]] = {name: [] for name in processes}
        for round_ in range(args.rounds):
            for name, (command, env) in processes.items():
                times[name].append(timed(command, env)[0])
            print(f"round {round_ + 1}: " + json.dumps({k: round(v[-1], 1) for k, v in times.items()}), flush=True)
        bare = statistics.median(times["bare Keras"])
        for name, measured in times.items():
            median = statistics.median(measured)
            print(f"{name:>34}: median {median:6.1f} s ({len(paths) / median:5.1f} images/s), "
                  f"{median / bare:.2f}x bare Keras")


if __name__ == "__main__":
    main()
