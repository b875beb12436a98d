"""Images that are not frontal chest radiographs, for training and measuring the input gate
(``training.gate``, ``ctai/builtin/gate.py``).

Two sources, both available on a machine without internet:

- **rendered** categories (deterministic for a seed): text pages, charts, UI screenshots,
  shapes and cartoons, gradients and noise, axial CT-like slices, radiographs of other body
  parts (limbs, hands), tight crops of chest films;
- **installed** images: the sample photographs and scans that matplotlib, scikit-learn and
  pydicom ship (photos, MR, CT, ultrasound, nuclear medicine, dose maps, terrain).

Every image is display-ready grayscale (2-D float32 in [0, 1], 0 = black), the input of
``ctai.model.preprocess.to_model_input``. ``corpus(split)`` keeps the two splits apart: the
held-out split uses other seeds and other installed files than training.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ctai.inputs.images import to_gray
from training import shifts

Render = Callable[[np.random.Generator], np.ndarray]
WORDS = ("patient", "report", "the", "and", "lorem", "ipsum", "dolor", "total", "date", "result",
         "2026", "ward", "login", "settings", "chart", "value", "name", "OK", "cancel", "page")


def _canvas(rng: np.random.Generator, value: int | None = None) -> Image.Image:
    width, height = (int(v) for v in rng.integers(160, 420, size=2))
    return Image.new("L", (width, height), int(rng.integers(0, 256)) if value is None else value)


def _font(rng: np.random.Generator, low: int = 8, high: int = 28) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(int(rng.integers(low, high)))


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words))


def _array(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture, dtype=np.float32) / 255.0


def text_page(rng: np.random.Generator) -> np.ndarray:
    """A document or a phone screen of text, light or dark mode."""
    dark = rng.random() < 0.3
    page = _canvas(rng, 20 if dark else int(rng.integers(215, 256)))
    draw, y = ImageDraw.Draw(page), int(rng.integers(4, 30))
    while y < page.height:
        font = _font(rng)
        draw.text((int(rng.integers(4, 30)), y), _sentence(rng, int(rng.integers(2, 12))), font=font,
                  fill=230 if dark else int(rng.integers(0, 90)))
        y += int(font.size * rng.uniform(1.2, 2.5))
    return _array(page)


def chart(rng: np.random.Generator) -> np.ndarray:
    """A line, bar, scatter or pie chart, as a report or a monitor shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(rng.uniform(2.5, 5), rng.uniform(2, 4)), dpi=72)
    kind, x = rng.integers(4), np.arange(int(rng.integers(5, 40)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(x, np.cumsum(rng.standard_normal(len(x))))
    elif kind == 1:
        ax.bar(x[:12], rng.random(min(len(x), 12)))
    elif kind == 2:
        ax.scatter(rng.random(60), rng.random(60), s=8)
    else:
        ax.pie(rng.random(int(rng.integers(2, 7))))
    ax.set_title(_sentence(rng, 3))
    fig.canvas.draw()
    picture = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("L")
    plt.close(fig)
    return _array(picture)


def screenshot(rng: np.random.Generator) -> np.ndarray:
    """Windows, bars, buttons and text: an application or a web page."""
    screen = _canvas(rng, int(rng.integers(180, 256)))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, screen.width, int(rng.integers(14, 40))), fill=int(rng.integers(20, 120)))
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, screen.width - 20)), int(rng.integers(20, screen.height - 10))
        x1, y1 = x0 + int(rng.integers(20, 160)), y0 + int(rng.integers(10, 60))
        draw.rounded_rectangle((x0, y0, x1, y1), radius=int(rng.integers(0, 8)), fill=int(rng.integers(0, 256)),
                               outline=int(rng.integers(0, 256)))
        draw.text((x0 + 3, y0 + 2), _sentence(rng, 2), font=_font(rng, 8, 16), fill=int(rng.integers(0, 256)))
    return _array(screen)


def shapes(rng: np.random.Generator) -> np.ndarray:
    """Filled shapes, or a cartoon face."""
    picture = _canvas(rng)
    draw = ImageDraw.Draw(picture)
    w, h = picture.size
    if rng.random() < 0.4:
        r = min(w, h) * rng.uniform(0.3, 0.48)
        cx, cy = w / 2, h / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(100, 256)), outline=0, width=3)
        for side in (-1, 1):
            draw.ellipse((cx + side * r * 0.4 - r * 0.1, cy - r * 0.35, cx + side * r * 0.4 + r * 0.1, cy - r * 0.15),
                         fill=0)
        draw.arc((cx - r * 0.5, cy - r * 0.2, cx + r * 0.5, cy + r * 0.6), 20, 160, fill=0, width=4)
    else:
        for _ in range(int(rng.integers(2, 15))):
            box = sorted(rng.integers(0, w, size=2)), sorted(rng.integers(0, h, size=2))
            xy = (int(box[0][0]), int(box[1][0]), int(box[0][1]), int(box[1][1]))
            getattr(draw, str(rng.choice(["ellipse", "rectangle"])))(xy, fill=int(rng.integers(0, 256)))
    return _array(picture)


def gradient_or_noise(rng: np.random.Generator) -> np.ndarray:
    """Smooth gradients, vignettes, white or smooth noise: blank exposures and sensor junk."""
    h, w = (int(v) for v in rng.integers(160, 420, size=2))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        a = rng.uniform(0, 2 * math.pi)
        image = (x * math.cos(a) + y * math.sin(a)) / max(h, w)
    elif kind == 1:
        image = -np.hypot(x - w * rng.random(), y - h * rng.random()) / max(h, w)
    elif kind == 2:
        image = rng.random((h, w)).astype(np.float32)
    else:
        coarse = rng.random((int(rng.integers(3, 12)), int(rng.integers(3, 12)))).astype(np.float32)
        image = shifts.resize(coarse, w, h)
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    return np.clip(image * rng.uniform(0.05, 1.0) + rng.uniform(0, 0.5), 0, 1).astype(np.float32)


def axial_slice(rng: np.random.Generator) -> np.ndarray:
    """An axial CT-like slice: a round body outline on black, organs and bones inside."""
    size = int(rng.integers(160, 400))
    picture = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(picture)
    rx, ry = size * rng.uniform(0.35, 0.48), size * rng.uniform(0.25, 0.42)
    c = size / 2
    draw.ellipse((c - rx, c - ry, c + rx, c + ry), fill=int(rng.integers(90, 140)))
    for _ in range(int(rng.integers(3, 9))):
        ex, ey = c + rng.uniform(-0.6, 0.6) * rx, c + rng.uniform(-0.6, 0.6) * ry
        a, b = rx * rng.uniform(0.05, 0.35), ry * rng.uniform(0.05, 0.35)
        draw.ellipse((ex - a, ey - b, ex + a, ey + b), fill=int(rng.integers(0, 256)))
    draw.ellipse((c - rx * 0.12, c + ry * 0.55, c + rx * 0.12, c + ry * 0.8), fill=245)  # a vertebra
    return _array(picture.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5))))


def other_radiograph(rng: np.random.Generator) -> np.ndarray:
    """A radiograph of another body part: a limb's long bones (cortex brighter than marrow) or
    a hand's rays, on black, often inside white collimator shutters, tall or wide."""
    h, w = (int(v) for v in rng.integers(200, 420, size=2))
    if rng.random() < 0.5:
        h = int(w * rng.uniform(1.3, 2.5))  # a long-bone cassette
    picture = Image.new("L", (w, h), int(rng.integers(0, 40)))
    draw = ImageDraw.Draw(picture)
    bones = int(rng.integers(1, 3)) if rng.random() < 0.5 else int(rng.integers(4, 6))
    tissue = int(rng.integers(60, 120))
    draw.rounded_rectangle((w * rng.uniform(0.1, 0.3), -10, w * rng.uniform(0.7, 0.9), h + 10), radius=int(w * 0.2),
                           fill=tissue)
    for i in range(bones):
        x = w * (0.3 + 0.4 * (i + 0.5) / bones)
        half = w * rng.uniform(0.02, 0.12) / max(bones / 2, 1)
        top, bottom = h * rng.uniform(-0.1, 0.3), h * rng.uniform(0.7, 1.1)
        cortex = int(rng.integers(170, 250))
        draw.rounded_rectangle((x - half, top, x + half, bottom), radius=int(half), fill=cortex)
        draw.rounded_rectangle((x - half * 0.55, top + half, x + half * 0.55, bottom - half), radius=int(half * 0.5),
                               fill=int(cortex * rng.uniform(0.6, 0.9)))
        draw.ellipse((x - half * 1.6, top - half, x + half * 1.6, top + half * 1.5), fill=int(rng.integers(170, 250)))
    picture = picture.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BILINEAR)
    if rng.random() < 0.5:  # collimator shutters: the unexposed border is white
        left, right = int(w * rng.uniform(0, 0.25)), int(w * rng.uniform(0.75, 1))
        top, bottom = int(h * rng.uniform(0, 0.1)), int(h * rng.uniform(0.9, 1))
        shutters = Image.new("L", (w, h), int(rng.integers(200, 256)))
        shutters.paste(picture.crop((left, top, right, bottom)), (left, top))
        picture = shutters
    return _array(picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3))))


def chest_crop(chest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tight crop (4-20 % of the area) of a chest radiograph: too little of it to read."""
    side = math.sqrt(rng.uniform(0.04, 0.2))
    top, left = rng.uniform(0, 1 - side, size=2)
    return shifts.crop(chest, top, left, side, side)


RENDERED: dict[str, Render] = {
    "text page": text_page, "chart": chart, "screenshot": screenshot, "shapes": shapes,
    "gradient or noise": gradient_or_noise, "axial slice": axial_slice, "other radiograph": other_radiograph,
}


def _installed_files() -> list[tuple[str, Path]]:
    """(category, path) of the images that installed packages ship."""
    import matplotlib
    import pydicom.data
    import sklearn.datasets

    files = [("photo", p) for p in sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))]
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    files += [("photo", sample / n) for n in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")]
    files += [("scan", sample / "s1045.ima.gz")]
    files += [("scan", p) for p in sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))]
    return [(c, p) for c, p in files if p.exists()]


def _read_installed(path: Path) -> Iterator[np.ndarray]:
    """The frames of an installed file as display-ready images; nothing if unreadable."""
    if path.name == "s1045.ima.gz":  # a raw 256 x 256 16-bit MR slice
        yield _normalise(np.frombuffer(gzip.open(path).read(), np.uint16).reshape(256, 256).astype(np.float32))
        return
    if path.suffix != ".dcm":
        yield to_gray(Image.open(path))
        return
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            return  # some compressed test files are deliberately broken: keep C decoders out of it
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception:  # test files include deliberately broken ones
        return
    frames = pixels.reshape(-1, *pixels.shape[-2:]) if pixels.ndim >= 3 and pixels.shape[-1] not in (3, 4) \
        else pixels[np.newaxis, ..., 0] if pixels.ndim == 3 else pixels[np.newaxis]
    for frame in frames[:4]:
        if min(frame.shape) >= 32:
            yield _normalise(frame)


def _normalise(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


def variants(image: np.ndarray, rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    """Crops, flips and rotations of an installed image, to stretch the few there are."""
    yield image
    for _ in range(count - 1):
        side = math.sqrt(rng.uniform(0.3, 1.0))
        top, left = rng.uniform(0, 1 - side, size=2)
        variant = shifts.crop(image, top, left, side, side)
        yield np.fliplr(variant) if rng.random() < 0.5 else shifts.rotate(variant, rng.uniform(-20, 20))


def corpus(split: str, per_category: int, chests: list[np.ndarray] | None = None
           ) -> Iterator[tuple[str, np.ndarray]]:
    """(category, image) pairs of the ``"train"`` or ``"held-out"`` split.

    Rendered categories give ``per_category`` images each from split-specific seeds; installed
    files alternate between the splits (every third one is held out); ``chests`` (display-ready
    chest radiographs of the same split) give tight crops.
    """
    if split not in ("train", "held-out"):
        raise ValueError(f"split must be 'train' or 'held-out', not {split!r}")
    offset = 0 if split == "train" else 1_000_000
    for index, (category, render) in enumerate(RENDERED.items()):
        for i in range(per_category):
            yield category, render(np.random.default_rng([offset + i, index]))
    rng = np.random.default_rng([offset, 99])
    for i, (category, path) in enumerate(_installed_files()):
        if (i % 3 == 2) == (split == "held-out"):
            for image in _read_installed(path):
                yield from ((category, v) for v in variants(image, rng, 8 if category == "photo" else 2))
    for i, chest in enumerate((chests or [])[:per_category]):
        yield "chest crop", chest_crop(chest, np.random.default_rng([offset + i, 77]))
