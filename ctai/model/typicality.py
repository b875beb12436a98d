"""How far an image lies from the population the classifier was trained on.

The classifier answers for any chest film, also for those unlike its training films (adults,
another hospital's processing, a photo of a screen), and then its probabilities mean little.
This module measures that distance in the classifier's own feature space: the Mahalanobis
distance (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks") of the pooled features before the logits, in the leading
principal components of the training films' features, where their covariance is well
estimated. ``training.typicality`` fits the reference on the training split and sets its limit
on the validation split. The score is the distance in units of that limit: above 1, an image is
farther from the training films than all but a chosen few of the validation films.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The start of the reason of every flag or refusal for atypicality (``ctai.builtin.typicality``).
ATYPICAL = "atypical image"
#: The reference population's file in a model folder.
REFERENCE_FILE = "typicality.npz"


@dataclass(frozen=True)
class Reference:
    """The training population's features: their ``mean`` (d,), leading principal ``components``
    (k, d) with the standard deviation along each (``scales``, k), and the ``limit``: the distance
    that ``flag_rate`` of the validation films exceed."""

    mean: np.ndarray
    components: np.ndarray
    scales: np.ndarray
    limit: float
    flag_rate: float

    def __post_init__(self) -> None:
        k, d = self.components.shape
        if self.mean.shape != (d,) or self.scales.shape != (k,) or not (self.scales > 0).all() or self.limit <= 0:
            raise ValueError("a typicality reference needs mean (d,), components (k, d), scales (k,) > 0, limit > 0")

    @classmethod
    def load(cls, folder: Path) -> Reference | None:
        """The reference stored in a model folder, or None if it has none."""
        path = folder / REFERENCE_FILE
        if not path.exists():
            return None
        with np.load(path) as stored:
            return cls(stored["mean"].astype(np.float32), stored["components"].astype(np.float32),
                       stored["scales"].astype(np.float32), float(stored["limit"]), float(stored["flag_rate"]))

    def save(self, folder: Path) -> Path:
        path = folder / REFERENCE_FILE
        np.savez_compressed(path, mean=self.mean.astype(np.float32), components=self.components.astype(np.float32),
                            scales=self.scales.astype(np.float32), limit=self.limit, flag_rate=self.flag_rate)
        return path

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance of each row of ``features`` (n, d), root mean square over the
        components; not finite features give an infinite distance."""
        whitened = ((features.astype(np.float32) - self.mean) @ self.components.T) / self.scales
        with np.errstate(invalid="ignore", over="ignore"):
            distance = np.sqrt(np.mean(np.square(whitened, dtype=np.float64), axis=1))
        return np.where(np.isfinite(distance), distance, np.inf)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The distances in units of the limit: above 1 is atypical."""
        return self.distances(features) / self.limit


def fit(train: np.ndarray, validation: np.ndarray, components: int, flag_rate: float) -> Reference:
    """The reference of ``train`` features (n, d) in its ``components`` leading principal
    components, with the limit that ``flag_rate`` of the ``validation`` features exceed."""
    mean = train.mean(axis=0)
    _, singular, vt = np.linalg.svd(train - mean, full_matrices=False)
    k = min(components, len(singular))
    scales = np.maximum(singular[:k] / np.sqrt(len(train) - 1), 1e-6)
    reference = Reference(mean.astype(np.float32), vt[:k].astype(np.float32), scales.astype(np.float32), 1.0, flag_rate)
    limit = float(np.quantile(reference.distances(validation), 1 - flag_rate))
    return Reference(reference.mean, reference.components, reference.scales, limit, flag_rate)
