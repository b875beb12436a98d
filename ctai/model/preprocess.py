"""The one preprocessing function shared by training and inference (no train/serve skew)."""

from __future__ import annotations

import numpy as np
from PIL import Image

#: The name, in ``model.json`` ("preprocessing"), of what ``to_model_input`` does: trim blank
#: margins, resize, standardise. A model trained on anything else cannot run here.
PREPROCESSING = "trim-resize-standardise"
# A margin row or column whose values span at most this much of the display range is blank.
BLANK_RANGE = 0.02
# Never trim more than this fraction of a side: a chest radiograph is not mostly margin.
MAX_TRIM = 0.25
#: Rows or columns at an edge looked at before the rest of the quarter that could be trimmed.
PEEK = 8


def _blank_run(lines: np.ndarray, limit: int) -> int:
    """How many of the first ``limit`` rows of ``lines`` are blank before the first that is not
    (``limit`` if all are). Most images have no margin at an edge: its first ``PEEK`` rows are
    read first, and the rest only if they are all blank: ``content_box`` of a 2500 x 2048
    radiograph without a frame took 0.35 ms so, 1.85 ms reading a quarter of each side."""
    peek = min(PEEK, limit)
    for start, stop in ((0, peek), (peek, limit)):
        rows = lines[start:stop]
        content = np.flatnonzero(np.ptp(rows, axis=1) > BLANK_RANGE)
        if content.size:
            return start + int(content[0])
    return limit


def content_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of ``image`` without its blank margins: the region the
    network sees (``to_model_input``), where heat maps are drawn. A row or column is blank when
    its values span at most ``BLANK_RANGE``; at most ``MAX_TRIM`` of each side is trimmed."""
    h, w = image.shape
    rows, cols = int(h * MAX_TRIM), int(w * MAX_TRIM)
    top, bottom = _blank_run(image, rows), _blank_run(image[::-1], rows)
    left, right = _blank_run(image.T, cols), _blank_run(image.T[::-1], cols)
    return top, left, h - bottom, w - right


def trim_blank_margins(image: np.ndarray) -> np.ndarray:
    """Cut uniform rows and columns off the edges: black or white frames, collimation and
    padding. In the training data they are a shortcut (normal films carry black frames two
    to three times as often as pneumonia films), so the network must never see them."""
    top, left, bottom, right = content_box(image)
    return image[top:bottom, left:right]


def to_model_input(image: np.ndarray, size: int) -> np.ndarray:
    """Turn a display-ready grayscale image into the network's input.

    ``image`` is a 2-D array scaled to [0, 1] where 0 is black, as a viewer shows it
    (MONOCHROME2 sense, LUTs already applied). Blank margins are trimmed; the result is
    ``size`` x ``size`` x 1, float32, standardised per image so that window/level and gain
    differences between sources (DICOM, JPEG, phone photos) do not shift the input distribution.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    resized = Image.fromarray(np.asarray(trim_blank_margins(image), dtype=np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    x = np.asarray(resized, dtype=np.float32)
    x = (x - x.mean()) / max(float(x.std()), 1e-3)
    return x[..., np.newaxis]


def check_preprocessing(meta: dict, folder: object) -> None:
    """Refuse a model (its ``model.json`` as ``meta``) trained with a preprocessing other than
    ``to_model_input``'s: it would run, and silently give wrong answers. A model.json without the
    key predates it and was trained with ``PREPROCESSING``."""
    wanted = meta.get("preprocessing", PREPROCESSING)
    if wanted != PREPROCESSING:
        raise ValueError(f"{folder}: the model was trained with preprocessing {wanted!r}, but ctai implements "
                         f"only {PREPROCESSING!r} (ctai.model.preprocess.to_model_input)")
