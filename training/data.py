"""Loading the Kermany-layout data set, the patient-level split, and augmentation."""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctai.dataset import Sample, scan
from ctai.inputs.images import read_gray
from ctai.model.preprocess import to_model_input


def split_by_patient(samples: Sequence[Sample], val_fraction: float, seed: int
                     ) -> tuple[list[Sample], list[Sample]]:
    """Put each patient wholly in train or in validation; the same seed gives the same split."""
    patients = sorted({s.patient for s in samples})
    random.Random(seed).shuffle(patients)
    val_patients = set(patients[: round(len(patients) * val_fraction)])
    train = [s for s in samples if s.patient not in val_patients]
    val = [s for s in samples if s.patient in val_patients]
    return train, val


def load_arrays(samples: Sequence[Sample], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and labels, through the same preprocessing the service uses."""
    x = np.stack([to_model_input(read_gray(s.path), size) for s in samples])
    y = np.array([s.label for s in samples], dtype=np.int64)
    return x, y


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define the validation split, shared by every training command."""
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=20180222, help="which patients go to validation")


def load(root: Path, val_fraction: float, seed: int):
    samples = scan(root)
    return split_by_patient(samples, val_fraction, seed)


def augmenter(seed: int):
    """Small rotations, shifts, zoom, brightness and contrast, applied to a training batch."""
    import keras
    import tensorflow as tf

    geometric = keras.Sequential([
        keras.layers.RandomRotation(0.03, fill_mode="reflect", seed=seed),
        keras.layers.RandomTranslation(0.06, 0.06, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(0.12, fill_mode="reflect", seed=seed + 2),
    ])

    def augment(x, y):
        x = geometric(x, training=True)
        batch = tf.shape(x)[0]
        contrast = tf.random.uniform((batch, 1, 1, 1), 0.8, 1.2)
        brightness = tf.random.uniform((batch, 1, 1, 1), -0.2, 0.2)
        return x * contrast + brightness, y

    return augment
