"""Loading the Kermany-layout data set, the patient-level split, and augmentation."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ctai.inputs.images import read_gray
from ctai.labelled_folder import Sample, scan
from ctai.model.preprocess import to_model_input
from training import shifts


def split_by_patient(samples: Sequence[Sample], val_fraction: float, seed: int
                     ) -> tuple[list[Sample], list[Sample]]:
    """Put each patient wholly in train or in validation; the same seed gives the same split."""
    patients = sorted({s.patient for s in samples})
    random.Random(seed).shuffle(patients)
    val_patients = set(patients[: round(len(patients) * val_fraction)])
    train = [s for s in samples if s.patient not in val_patients]
    val = [s for s in samples if s.patient in val_patients]
    return train, val


def load_arrays(samples: Sequence[Sample], size: int, transform: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and labels, through the same preprocessing the service uses (after
    ``transform`` of the display-ready image, if given)."""
    transform = transform or (lambda image: image)
    x = np.stack([to_model_input(transform(read_gray(s.path)), size) for s in samples])
    y = np.array([s.label for s in samples], dtype=np.int64)
    return x, y


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define the validation split, shared by every training command."""
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=20180222, help="which patients go to validation")


def load(root: Path, val_fraction: float, seed: int, held_out_source: str | None = None
         ) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Training and validation samples split by patient, and the held-out source: the samples
    whose path under ``root`` matches the glob ``held_out_source`` (for example
    ``NORMAL/IM-*``), kept out of both for a leave-source-out check."""
    samples = scan(root)
    held_out = [s for s in samples if held_out_source and s.path.relative_to(root).match(held_out_source)]
    held_paths = {s.path for s in held_out}
    rest = [s for s in samples if s.path not in held_paths]
    train, val = split_by_patient(rest, val_fraction, seed)
    return train, val, held_out


def load_raw(samples: Sequence[Sample], side: int = 224) -> np.ndarray:
    """The display-ready images as ``side`` x ``side`` uint8, for augmentation before
    preprocessing (the data set's images are all 224 x 224 already)."""
    out = np.empty((len(samples), side, side), dtype=np.uint8)
    for i, s in enumerate(samples):
        image = read_gray(s.path)
        if image.shape != (side, side):
            image = shifts.resize(image, side, side)
        out[i] = np.round(np.clip(image, 0.0, 1.0) * 255)
    return out
