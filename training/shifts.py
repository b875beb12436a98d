"""Acquisition shifts: the ways a radiograph from another machine, site or export differs from
the training images. Shared by the shift benchmark (``benchmarks/robustness.py``, fixed
strengths) and training's augmentation (``training.augment``, random strengths).

Every transform takes a display-ready grayscale image (2-D, float, [0, 1], 0 = black; the input
of ``ctai.model.preprocess.to_model_input``) and returns one of the same shape and range.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Transform = Callable[[np.ndarray], np.ndarray]


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), mode="L")


def _from_pil(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture, dtype=np.float32) / 255.0


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    picture = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """Exposure / detector response: g < 1 brightens the mid-tones, g > 1 darkens them."""
    return np.clip(image, 0.0, 1.0) ** g


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Contrast about the image mean, clipped to the display range (saturation included)."""
    mean = float(image.mean())
    return np.clip((image - mean) * factor + mean, 0.0, 1.0)


def brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """A constant added to every pixel, clipped: a different window level at export."""
    return np.clip(image + delta, 0.0, 1.0)


def field(image: np.ndarray, gain: float, sigma: float, centre: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """A smooth gain that peaks at ``centre`` (fractions of height and width) and fades with a
    Gaussian of ``sigma`` (a fraction of the side): ``gain`` > 0 brightens the middle of the
    film against its edges, as a thicker patient or more scatter does; < 0 darkens it."""
    height, width = image.shape
    y, x = np.ogrid[:height, :width]
    bump = np.exp(-((y / height - centre[0]) ** 2 + (x / width - centre[1]) ** 2) / (2 * sigma ** 2))
    return np.clip(image * (1.0 + gain * bump), 0.0, 1.0).astype(np.float32)


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of ``radius`` pixels (at the image's own size): a softer detector or film."""
    return _from_pil(_to_pil(image).filter(ImageFilter.GaussianBlur(radius)))


def sharpen(image: np.ndarray, percent: int) -> np.ndarray:
    """Unsharp masking, as many consoles apply before export."""
    return _from_pil(_to_pil(image).filter(ImageFilter.UnsharpMask(radius=2, percent=percent, threshold=0)))


def noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma`` (quantum noise, low dose)."""
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0.0, 1.0).astype(np.float32)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Lossy JPEG round trip at ``quality`` (1-95)."""
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="JPEG", quality=int(quality))
    return _from_pil(Image.open(buffer))


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale by ``factor`` and back to the original size: the resolution of a smaller export."""
    h, w = image.shape
    small = resize(image, max(int(round(w * factor)), 8), max(int(round(h * factor)), 8))
    return np.clip(resize(small, w, h), 0.0, 1.0)


def crop(image: np.ndarray, top: float, left: float, height: float, width: float) -> np.ndarray:
    """The region given in fractions of the image, resized back to the full size."""
    h, w = image.shape
    y0, x0 = int(round(top * h)), int(round(left * w))
    y1, x1 = max(y0 + 2, int(round((top + height) * h))), max(x0 + 2, int(round((left + width) * w)))
    return np.clip(resize(image[y0:y1, x0:x1], w, h), 0.0, 1.0)


def zoom(image: np.ndarray, fraction: float) -> np.ndarray:
    """A centred crop of ``fraction`` of each side: tighter collimation or framing."""
    margin = (1.0 - fraction) / 2
    return crop(image, margin, margin, fraction, fraction)


def stretch(image: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Stretched by ``factor`` along ``axis`` (0: height, 1: width), keeping the centre: an
    original of another aspect ratio resized to a square, as exports and this data set do."""
    margin = (1.0 - 1.0 / factor) / 2
    if axis == 0:
        return crop(image, margin, 0.0, 1.0 / factor, 1.0)
    return crop(image, 0.0, margin, 1.0, 1.0 / factor)


def border(image: np.ndarray, fraction: float, value: float = 0.0) -> np.ndarray:
    """The image shrunk inside a uniform border of ``fraction`` of each side: wider framing,
    a scanned film's frame, or a screenshot's margin."""
    h, w = image.shape
    inner_h, inner_w = max(int(round(h * (1 - 2 * fraction))), 8), max(int(round(w * (1 - 2 * fraction))), 8)
    out = np.full_like(image, value, dtype=np.float32)
    y0, x0 = (h - inner_h) // 2, (w - inner_w) // 2
    out[y0:y0 + inner_h, x0:x0 + inner_w] = np.clip(resize(image, inner_w, inner_h), 0.0, 1.0)
    return out


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """A patient or detector turned by ``degrees``; the corners are filled with black."""
    picture = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.clip(np.asarray(picture.rotate(degrees, Image.Resampling.BILINEAR, fillcolor=0.0),
                              dtype=np.float32), 0.0, 1.0)


def burned_in_text(image: np.ndarray, seed: int = 0, lines: int = 3) -> np.ndarray:
    """White burned-in annotations: a side marker, a ``PORTABLE`` / ``AP SUPINE`` label and a
    date, at random corners, as departments stamp them."""
    rng = np.random.default_rng(seed)
    picture = _to_pil(image)
    draw = ImageDraw.Draw(picture)
    h, w = image.shape
    font = ImageFont.load_default(size=max(int(h * 0.06), 8))
    words = ["R", "L", "PORTABLE", "AP SUPINE", "2018-03-14", "UPRIGHT", "ER"]
    for _ in range(lines):
        text = words[rng.integers(len(words))]
        x = int(rng.uniform(0.02, 0.75) * w) if rng.random() < 0.5 else int(rng.uniform(0.02, 0.15) * w)
        y = int(rng.choice([rng.uniform(0.02, 0.12), rng.uniform(0.85, 0.92)]) * h)
        draw.text((x, y), text, fill=255, font=font)
    return _from_pil(picture)


def photo(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """A phone's photo of the film on a light box or of a screen showing it: the film smaller
    than the frame on a dark or bright surround, seen at a slant, with uneven light, a little
    blur, noise and JPEG compression."""
    rng = np.random.default_rng(seed)
    h, w = image.shape
    scale = rng.uniform(0.7, 0.95)
    surround = float(rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.75, 1.0)]))
    framed = border(image, (1 - scale) / 2, surround)
    slant = rng.uniform(-0.06, 0.06, size=8) * np.array([w, h] * 4)
    corners = np.array([0, 0, 0, h, w, h, w, 0], dtype=np.float64) + slant
    picture = Image.fromarray(framed, mode="F").transform((w, h), Image.Transform.QUAD, tuple(corners),
                                                          Image.Resampling.BILINEAR, fillcolor=surround)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    light = 1 + rng.uniform(-0.25, 0.25) * (x - 0.5) + rng.uniform(-0.25, 0.25) * (y - 0.5)
    out = np.clip(np.asarray(picture, dtype=np.float32) * light, 0.0, 1.0)
    out = blur(out, rng.uniform(0.3, 1.2))
    return jpeg(noise(out, rng.uniform(0.005, 0.03), seed=seed), int(rng.integers(50, 90)))


@dataclass(frozen=True)
class Shift:
    """One entry of the benchmark suite: a named transform at one strength."""

    name: str
    strength: str
    apply: Transform


def _shift(name: str, strength: object, fn: Callable[..., np.ndarray], *args) -> Shift:
    return Shift(name, str(strength), lambda image: fn(image, *args))


def suite() -> list[Shift]:
    """The benchmark's shifts, each at two or three strengths (documented in the model card)."""
    return [
        _shift("none", "-", lambda image: image),
        *(_shift("gamma", g, gamma, g) for g in (0.6, 0.8, 1.3, 1.7)),
        *(_shift("contrast", f, contrast, f) for f in (0.7, 1.3)),
        *(_shift("brightness", d, brightness, d) for d in (-0.15, 0.15)),
        *(_shift("blur", f"{r} px", blur, r) for r in (1.0, 2.0)),
        *(_shift("sharpen", f"{p} %", sharpen, p) for p in (100, 250)),
        *(_shift("noise", f"sd {s}", noise, s) for s in (0.03, 0.06)),
        *(_shift("jpeg", f"q{q}", jpeg, q) for q in (30, 60)),
        *(_shift("downscale", f"x{f}", rescale, f) for f in (0.5, 0.3)),
        *(_shift("zoom-in", f"{f:.0%}", zoom, f) for f in (0.9, 0.8)),
        *(_shift("stretch", f"{name} x1.25", stretch, 1.25, axis) for axis, name in enumerate(("height", "width"))),
        *(_shift("border", f"{f:.0%} black", border, f) for f in (0.05, 0.1)),
        _shift("border", "8% white", border, 0.08, 1.0),
        *(_shift("rotate", f"{d} deg", rotate, d) for d in (-7, 7)),
        _shift("text", "3 labels", burned_in_text),
    ]
