"""Real images from public repositories for the input gate (``training.gate --real``), rebuilt
from the recorded snapshots into a folder outside git, with ``MANIFEST.csv`` beside them.

Every image keeps its source repository, commit, path and licence; ``split`` says whether the
gate may train on it (``train``) or it is kept for measuring (``held-out``), decided by patient
(NIH, Shenzhen), by series or volume (CT, MR) or by source, never by looking at scores. The NIH
and Shenzhen films of ``shared/data/external-dev`` are all held out except the even-numbered
Shenzhen ones.

    python -m training.gate_sources --mirrors /work/.mirror --pydicom-data DIR \
        --out /work/shared-extra/gate --manifest training/gate_sources.csv

``--mirrors`` holds ``owner+name/repo`` git directories (the snapshots at the commits below);
``--pydicom-data`` is ``pip install --target DIR pydicom-data==1.0.0``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import re
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ctai.inputs.dicom import display_pixels, read_dataset
from ctai.inputs.images import to_gray

MAX_SIDE = 512
NIH_LICENCE = "NIH ChestX-ray14: no restriction on use (NIH Clinical Center); repository BSD-3-Clause"
SHENZHEN_LICENCE = "Shenzhen CXR set (NLM / Shenzhen No.3 People's Hospital, public release); repository MIT"
TOTALSEG_LICENCE = ("TotalSegmentator test data (CT/MR from the TotalSegmentator data set, CC BY 4.0); "
                    "repository Apache-2.0")
PYDICOM_LICENCE = "pydicom-data 1.0.0 (PyPI), MIT"
FIELDS = ["file", "kind", "source", "split", "repo", "commit", "path", "licence"]


@dataclass(frozen=True)
class Repo:
    name: str
    commit: str

    def files(self, mirrors: Path, pattern: str) -> list[str]:
        out = subprocess.run(["git", f"--git-dir={self._git(mirrors)}", "ls-tree", "-r", "--name-only", self.commit],
                             check=True, capture_output=True, text=True).stdout
        return sorted(p for p in out.splitlines() if re.fullmatch(pattern, p))

    def read(self, mirrors: Path, path: str) -> bytes:
        return subprocess.run(["git", f"--git-dir={self._git(mirrors)}", "show", f"{self.commit}:{path}"],
                              check=True, capture_output=True).stdout

    def _git(self, mirrors: Path) -> Path:
        return mirrors / self.name.replace("/", "+") / "repo"


NIH = Repo("jrzech/reproduce-chexnet", "a011a9ab108cb03a533aeab52dc934b02a823ac8")
SHENZHEN = Repo("arcus-azure/arcus.ml", "fb5a3ffcc9ed2dd3714bf057ad55cb8a51870df9")
TOTALSEG = Repo("wasserth/TotalSegmentator", "0e65a448d557382b1e925276212b3bec7f5aff83")
CT_WINDOWS = ((-600, 1500), (40, 400), (400, 1800))  # lung, soft tissue, bone (centre, width)


def _external_dev_paths(manifest: Path) -> set[str]:
    """Source paths of the external-dev films (held out)."""
    with open(manifest, newline="") as f:
        return {row["source_path"] for row in csv.DictReader(f)}


def _fit(image: np.ndarray) -> Image.Image:
    picture = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return picture


def _window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.clip((hu - centre + width / 2) / width, 0, 1)


def _nifti(data: bytes) -> np.ndarray:
    """The volume of a NIfTI-1 file (gzipped) as float32 (x, y, z), scaled."""
    raw = gzip.decompress(data)
    dims = struct.unpack_from("<8h", raw, 40)
    datatype = struct.unpack_from("<h", raw, 70)[0]
    offset, slope, inter = struct.unpack_from("<3f", raw, 108)
    dtype = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}[datatype]
    shape = dims[1:1 + dims[0]]
    volume = np.frombuffer(raw, dtype, int(np.prod(shape)), int(offset)).reshape(shape, order="F")
    return volume.astype(np.float32) * (slope or 1.0) + inter


def _slices(volume: np.ndarray, step: int, ct: bool) -> Iterator[tuple[str, np.ndarray]]:
    """Axial slices every ``step`` (CT: in three windows), and middle coronal and sagittal ones."""
    def shown(image: np.ndarray, w: int) -> np.ndarray:
        if ct:
            return _window(image, *CT_WINDOWS[w % 3])
        low, high = np.percentile(image, [0.5, 99.5])
        return np.clip((image - low) / max(high - low, 1e-6), 0, 1)

    for i, z in enumerate(range(step // 2, volume.shape[2], step)):
        yield f"axial{z:03d}", np.rot90(shown(volume[:, :, z], i))
    for axis, name in ((1, "coronal"), (0, "sagittal")):
        middle = np.take(volume, volume.shape[axis] // 2, axis=axis)
        yield f"{name}", np.rot90(shown(middle, 1))


def _nih(mirrors: Path, external_dev: Path) -> Iterator[tuple[dict, Image.Image]]:
    held = _external_dev_paths(external_dev)
    for path in NIH.files(mirrors, r"starter_images/\d+_\d+\.png"):
        patient = int(Path(path).stem.split("_")[0])
        split = "held-out" if path in held or patient % 3 == 0 else "train"
        source = "nih (external-dev)" if path in held else "nih"
        image = to_gray(Image.open(io.BytesIO(NIH.read(mirrors, path))))
        row = dict(kind="chest_frontal", source=source, split=split, repo=NIH, path=path, licence=NIH_LICENCE)
        yield row, _fit(image)


def _shenzhen(mirrors: Path) -> Iterator[tuple[dict, Image.Image]]:
    for path in SHENZHEN.files(mirrors, r"tests/resources/images/lungs/CHNCXR_\d+_\d\.png"):
        number = int(Path(path).stem.split("_")[1])
        image = to_gray(Image.open(io.BytesIO(SHENZHEN.read(mirrors, path))))
        split = "train" if number % 2 == 0 else "held-out"
        yield dict(kind="chest_frontal", source="shenzhen (external-dev)", split=split, repo=SHENZHEN, path=path,
                   licence=SHENZHEN_LICENCE), _fit(image)


def _totalseg(mirrors: Path) -> Iterator[tuple[dict, Image.Image]]:
    volumes = (("tests/reference_files/example_ct.nii.gz", "ct_slice", "train", 4),
               ("tests/reference_files/aorta_report/test_result/models/ct_cropped.nii.gz", "ct_slice", "train", 6),
               ("tests/reference_files/example_mr_sm.nii.gz", "mr_slice", "held-out", 3))
    for path, kind, split, step in volumes:
        for name, image in _slices(_nifti(TOTALSEG.read(mirrors, path)), step, kind == "ct_slice"):
            yield dict(kind=kind, source="totalsegmentator", split=split, repo=TOTALSEG, path=f"{path}#{name}",
                       licence=TOTALSEG_LICENCE), _fit(image)
    for path in TOTALSEG.files(mirrors, r"tests/reference_files/example_ct_dicom/CT\..*"):
        yield dict(kind="ct_slice", source="totalsegmentator dicom", split="held-out", repo=TOTALSEG, path=path,
                   licence=TOTALSEG_LICENCE), _fit(_dicom(TOTALSEG.read(mirrors, path)))


def _dicom(data: bytes) -> np.ndarray:
    """Display-ready pixels of a DICOM file's bytes, read as ctai reads files."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(data)
        f.flush()
        return display_pixels(read_dataset(Path(f.name)))


def _pydicom_data(folder: Path) -> Iterator[tuple[dict, Image.Image]]:
    files = {"RG1_UNCR.dcm": "chest_frontal", "RG3_UNCR.dcm": "other_radiograph", "693_UNCR.dcm": "ct_slice",
             "MR2_UNCR.dcm": "mr_slice", "US1_UNCR.dcm": "ultrasound"}
    for name, kind in files.items():
        ds = read_dataset(folder / "data_store" / "data" / name)
        yield dict(kind=kind, source="pydicom-data", split="held-out", repo=Repo("pypi:pydicom-data", "1.0.0"),
                   path=f"data_store/data/{name}", licence=PYDICOM_LICENCE), _fit(display_pixels(ds))


def _file_name(row: dict) -> str:
    """``kind/source__name.png``, from the source path's last part."""
    stem = re.sub(r"[.](png|dcm)$", "", Path(row["path"]).name)
    return f"{row['kind']}/{row['source'].split()[0]}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}.png"


def rebuild(mirrors: Path, pydicom_data: Path, external_dev: Path, out: Path) -> list[dict]:
    """Write every image as an 8-bit PNG under ``out`` and return the manifest rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sources = [_nih(mirrors, external_dev), _shenzhen(mirrors), _totalseg(mirrors), _pydicom_data(pydicom_data)]
    for row, picture in (pair for source in sources for pair in source):
        repo: Repo = row.pop("repo")
        if min(picture.size) < 32 or max(picture.size) > 4 * min(picture.size):
            continue  # refused by ctai's rules before any network sees it
        name = _file_name(row)
        (out / name).parent.mkdir(exist_ok=True)
        picture.save(out / name)
        rows.append(dict(file=name, repo=repo.name, commit=repo.commit, **row))
    return rows


def write_manifest(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    p.add_argument("--pydicom-data", type=Path, default=Path("/work/shared-extra/pydicom-data"))
    p.add_argument("--external-dev", type=Path, default=Path("/work/shared/data/external-dev/MANIFEST.csv"))
    p.add_argument("--out", type=Path, default=Path("/work/shared-extra/gate"))
    p.add_argument("--manifest", type=Path, help="also write the manifest here (the committed copy)")
    args = p.parse_args(argv)
    rows = rebuild(args.mirrors, args.pydicom_data, args.external_dev, args.out)
    write_manifest(rows, args.out / "MANIFEST.csv")
    if args.manifest:
        write_manifest(rows, args.manifest)
    counts: dict[tuple[str, str, str], int] = {}
    for row in rows:
        key = (row["kind"], row["source"], row["split"])
        counts[key] = counts.get(key, 0) + 1
    for key, n in sorted(counts.items()):
        print(*key, n, sep="\t")


if __name__ == "__main__":
    main()
