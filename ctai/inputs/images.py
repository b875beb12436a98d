"""PNG and JPEG files (and anything else Pillow reads): decoding with EXIF orientation,
a decompression-bomb guard, and conversion to a display-ready grayscale array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ctai.errors import InputError

#: Larger images are refused before decoding; Pillow's own guard refuses twice this at open.
MAX_PIXELS = 50_000_000
#: Smaller than this on either side is not a radiograph.
MIN_SIDE = 32

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file, EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            check_size(*im.size)
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large (decompression bomb guard): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError("neither DICOM nor an image format ctai reads (PNG, JPEG, ...)") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises on damaged files
        raise InputError(f"cannot decode image: {exc}") from exc


def skipped(reason: str) -> InputError:
    """The error for an input that is not for ctai, such as a scan of something else: its job is
    skipped, not failed (``ctai.results.summarize``), and pages nobody."""
    return InputError(f"skipped: {reason}")


def check_size(width: int, height: int) -> None:
    """Refuse images too small to be a radiograph or too large to decode safely."""
    if min(width, height) < MIN_SIDE:
        raise InputError(f"image of {width}x{height} pixels is too small to classify")
    check_not_too_large(width, height)


def check_not_too_large(width: int, height: int) -> None:
    """Refuse images too large to decode safely (``MAX_PIXELS``)."""
    if width * height > MAX_PIXELS:
        raise InputError(f"image of {width}x{height} pixels is too large (limit {MAX_PIXELS:,} pixels)")


def to_gray(image: Image.Image) -> np.ndarray:
    """Grayscale float array in [0, 1] (0 = black) from any Pillow mode."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return np.clip(array / top, 0.0, 1.0)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        return (array - low) / max(high - low, 1e-6)
    if image.mode in ("RGBA", "LA", "PA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_gray(path: Path) -> np.ndarray:
    """Read an image file as a display-ready grayscale array in [0, 1]."""
    return to_gray(open_image(path))
