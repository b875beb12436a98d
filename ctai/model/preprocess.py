"""The one preprocessing function shared by training and inference (no train/serve skew)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_model_input(image: np.ndarray, size: int) -> np.ndarray:
    """Turn a display-ready grayscale image into the network's input.

    ``image`` is a 2-D array scaled to [0, 1] where 0 is black, as a viewer shows it
    (MONOCHROME2 sense, LUTs already applied). The result is ``size`` x ``size`` x 1,
    float32, standardised per image so that window/level and gain differences between
    sources (DICOM, JPEG, phone photos) do not shift the input distribution.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    resized = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    x = np.asarray(resized, dtype=np.float32)
    x = (x - x.mean()) / max(float(x.std()), 1e-3)
    return x[..., np.newaxis]
