"""Training augmentation, in NumPy on the display-ready image, so that it runs the same under
every Keras backend and composes with the shift benchmark's transforms (``training.shifts``).

A :class:`Recipe` names what is on; :class:`Batches` feeds ``model.fit`` with augmented,
preprocessed batches, reproducibly for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from ctai.model.preprocess import to_model_input
from training import shifts


@dataclass(frozen=True)
class Recipe:
    """``crop_scale``: area range of random resized crops (Szegedy et al. 2015), or None for
    the small shift and zoom of models up to 1.3.0; ``aspect``: their range of width / height.
    ``intensity``: random gamma, contrast, brightness, blur or sharpening, noise and JPEG
    compression before preprocessing. ``mixup``: the alpha of mixup (Zhang et al. 2018,
    "mixup: Beyond Empirical Risk Minimization"), 0 for none. ``equalize``: histogram
    equalisation (``equalize``) after augmentation; a model trained so needs it at inference.
    ``corners``: rotate after the crop, not before, so that every tilted variant keeps the black
    corners a turned detector leaves (the crop would otherwise cut most of them away).
    ``field``: a random smooth gain (``shifts.field``) on half the images, a candidate against
    reading a middle brighter than the edges (a bigger child, more scatter) as disease; not
    shipped (docs/model-experiments.md, "Leave-source-out")."""

    crop_scale: tuple[float, float] | None = None
    intensity: bool = False
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    mixup: float = 0.0
    equalize: bool = False
    corners: bool = False
    field: bool = False


def _geometry(image: np.ndarray, rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    degrees = rng.uniform(-10, 10)
    if recipe.corners:
        return shifts.rotate(_crop(image, rng, recipe), degrees)
    return _crop(shifts.rotate(image, degrees), rng, recipe)


def _crop(image: np.ndarray, rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    if recipe.crop_scale is None:
        side = rng.uniform(0.88, 1.0)
        top, left = rng.uniform(0, 1 - side, size=2)
        return shifts.crop(image, top, left, side, side)
    area = rng.uniform(*recipe.crop_scale)
    ratio = math.exp(rng.uniform(*np.log(recipe.aspect)))
    height, width = min(math.sqrt(area / ratio), 1.0), min(math.sqrt(area * ratio), 1.0)
    return shifts.crop(image, rng.uniform(0, 1 - height), rng.uniform(0, 1 - width), height, width)


def _intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = shifts.gamma(image, math.exp(rng.uniform(math.log(0.6), math.log(1.7))))
    image = shifts.contrast(image, rng.uniform(0.7, 1.3))
    image = shifts.brightness(image, rng.uniform(-0.1, 0.1))
    if (r := rng.random()) < 0.25:
        image = shifts.blur(image, rng.uniform(0.5, 2.0))
    elif r < 0.45:
        image = shifts.sharpen(image, int(rng.uniform(50, 250)))
    if rng.random() < 0.3:
        image = shifts.noise(image, rng.uniform(0.01, 0.05), seed=int(rng.integers(2**31)))
    if rng.random() < 0.3:
        image = shifts.jpeg(image, int(rng.integers(30, 96)))
    return image


def _field(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        return image
    return shifts.field(image, rng.uniform(-0.3, 0.3), rng.uniform(0.25, 0.5), tuple(rng.uniform(0.35, 0.65, 2)))


def equalize(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation of a display-ready image: every exposure and contrast maps to the
    same flat histogram (a candidate preprocessing against exposure shortcuts; not shipped)."""
    levels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    cdf = np.cumsum(np.bincount(levels.ravel(), minlength=256)).astype(np.float32)
    return cdf[levels] / cdf[-1]


def augment(image: np.ndarray, rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    """One random variant of a display-ready image, same shape, values in [0, 1]."""
    image = _geometry(image, rng, recipe)
    image = _intensity(image, rng) if recipe.intensity else image
    image = _field(image, rng) if recipe.field else image
    return equalize(image) if recipe.equalize else image


class Batches(keras.utils.PyDataset):
    """Shuffled, augmented, preprocessed training batches ``(x, one-hot targets, sample
    weights)``, the weights from ``class_weight`` (equal if None); batch ``i`` of epoch ``e``
    depends only on ``(seed, e, i)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, size: int,
                 recipe: Recipe, seed: int, workers: int = 1, class_weight: np.ndarray | None = None) -> None:
        # Threads: NumPy and Pillow release the GIL for the heavy work, and no process forks
        # under a backend (JAX) that is multithreaded itself.
        super().__init__(workers=workers, use_multiprocessing=False)
        self.images, self.labels = images, labels
        weights = np.ones(int(labels.max()) + 1) if class_weight is None else np.asarray(class_weight)
        self.targets = np.eye(len(weights), dtype=np.float32)[labels]
        self.weights = weights[labels].astype(np.float32)
        self.batch_size, self.size, self.recipe, self.seed = batch_size, size, recipe, seed
        self.epoch = 0
        self.order = np.random.default_rng([seed, 0]).permutation(len(labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x = np.stack([to_model_input(augment(self.images[i].astype(np.float32) / 255.0, rng, self.recipe),
                                     self.size) for i in rows])
        # After standardisation: a little gain and offset, as up to 1.3.0.
        x = x * rng.uniform(0.8, 1.2, (len(rows), 1, 1, 1)) + rng.uniform(-0.2, 0.2, (len(rows), 1, 1, 1))
        targets, weights = self.targets[rows], self.weights[rows]
        if self.recipe.mixup:
            lam = rng.beta(self.recipe.mixup, self.recipe.mixup, (len(rows), 1)).astype(np.float32)
            pair = rng.permutation(len(rows))
            x = lam[:, :, None, None] * x + (1 - lam[:, :, None, None]) * x[pair]
            targets = lam * targets + (1 - lam) * targets[pair]
            weights = lam[:, 0] * weights + (1 - lam[:, 0]) * weights[pair]
        return x.astype(np.float32), targets, weights

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))
