"""The Kermany et al. (2018) folder layout: ``NORMAL/`` and ``PNEUMONIA/``, pneumonia file
names containing ``bacteria`` or ``virus``, ``personN_`` naming the patient.

Used by ``ctai evaluate`` and by ``training/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ctai.types import CLASSES

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into CLASSES
    patient: str


def label_of(path: Path) -> int:
    """Class index from the folder and, for pneumonia, the file name."""
    folder = path.parent.name.upper()
    name = path.name.lower()
    if folder == "NORMAL":
        return CLASSES.index("normal")
    if folder == "PNEUMONIA":
        if "bacteria" in name:
            return CLASSES.index("bacterial")
        if "virus" in name:
            return CLASSES.index("viral")
    raise ValueError(f"{path}: cannot tell the class from folder and name")


def patient_of(path: Path) -> str:
    """Patient key: ``personN`` for pneumonia files, the ``IM-NNNN`` study prefix otherwise."""
    name = path.stem
    if match := re.match(r"(person\d+)_", name):
        return match.group(1)
    if match := re.match(r"(.*IM-\d+)-\d+", name):
        return match.group(1)
    return name


def scan(root: Path) -> list[Sample]:
    """Every labelled image under ``root``, sorted by path."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{root}: no images found (expected NORMAL/ and PNEUMONIA/ folders)")
    return [Sample(p, label_of(p), patient_of(p)) for p in paths]
