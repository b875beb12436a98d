"""How far an image lies from the population the classifier was trained on.

The classifier answers for any chest film, also for those unlike its training films (adults,
another hospital's processing, a photo of a screen), and then its probabilities mean little.
This module measures that distance in the classifier's own feature space: the Mahalanobis
distance (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks") of the pooled features before the logits, with each ensemble
member's features as one block of a block-diagonal covariance (members' features are not
aligned with each other), shrunk towards a multiple of the identity where the training films do
not estimate it well (Ledoit and Wolf 2004). ``training.typicality`` fits the reference on the
training split and sets its limit on the validation split. The score is the distance in units
of that limit: above 1, an image is farther from the training films than all but a chosen
share of the validation films.
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
    """The training population's features: their ``mean`` (d,) and, per block of the features
    (one ensemble member's), the ``whitening`` matrix W with W C W^T = I for the block's
    covariance C (blocks, w, w; blocks x w = d); the ``limit``: the distance that ``flag_rate``
    of the validation films exceed."""

    mean: np.ndarray
    whitening: np.ndarray
    limit: float
    flag_rate: float

    def __post_init__(self) -> None:
        blocks, w, w2 = self.whitening.shape
        if w != w2 or self.mean.shape != (blocks * w,) or not self.limit > 0:
            raise ValueError("a typicality reference needs mean (d,), whitening (blocks, w, w) with blocks x w = d, "
                             "and a limit > 0")

    @classmethod
    def load(cls, folder: Path) -> Reference | None:
        """The reference stored in a model folder, or None if it has none."""
        path = folder / REFERENCE_FILE
        if not path.exists():
            return None
        with np.load(path) as stored:
            return cls(stored["mean"].astype(np.float32), stored["whitening"].astype(np.float32),
                       float(stored["limit"]), float(stored["flag_rate"]))

    def save(self, folder: Path) -> Path:
        """Stored in ``folder`` (the whitening in float16: 1 MB for the shipped ensemble)."""
        path = folder / REFERENCE_FILE
        np.savez_compressed(path, mean=self.mean.astype(np.float32), whitening=self.whitening.astype(np.float16),
                            limit=self.limit, flag_rate=self.flag_rate)
        return path

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance of each row of ``features`` (n, d), root mean square over the
        whitened features; not finite features give an infinite distance."""
        blocks, w, _ = self.whitening.shape
        centred = (features.astype(np.float32) - self.mean).reshape(len(features), blocks, w)
        with np.errstate(invalid="ignore", over="ignore"):
            whitened = np.einsum("nbi,bji->nbj", centred, self.whitening)
            distance = np.sqrt(np.mean(np.square(whitened, dtype=np.float64), axis=(1, 2)))
        return np.where(np.isfinite(distance), distance, np.inf)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The distances in units of the limit: above 1 is atypical."""
        return self.distances(features) / self.limit


def whitening(block: np.ndarray, shrinkage: float) -> np.ndarray:
    """W with W C W^T = I for the covariance C of ``block`` (n, w), shrunk by ``shrinkage``
    towards the identity times its mean variance."""
    covariance = np.cov(block, rowvar=False)
    target = np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    lower = np.linalg.cholesky((1 - shrinkage) * covariance + shrinkage * target)
    return np.linalg.inv(lower)


def fit(train: np.ndarray, validation: np.ndarray, blocks: int, shrinkage: float, flag_rate: float) -> Reference:
    """The reference of ``train`` features (n, d) in ``blocks`` equal blocks, with the limit that
    ``flag_rate`` of the ``validation`` features exceed."""
    n, d = train.shape
    if d % blocks:
        raise ValueError(f"{d} features do not split into {blocks} equal blocks")
    w = d // blocks
    parts = train.astype(np.float64).reshape(n, blocks, w)
    mean = parts.mean(axis=0)
    matrices = np.stack([whitening(parts[:, b] - mean[b], shrinkage) for b in range(blocks)])
    reference = Reference(mean.ravel().astype(np.float32), matrices.astype(np.float16).astype(np.float32),
                          1.0, flag_rate)
    limit = float(np.quantile(reference.distances(validation), 1 - flag_rate))
    return Reference(reference.mean, reference.whitening, limit, flag_rate)
