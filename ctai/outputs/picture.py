"""The result picture, for the Secondary Capture and for pages outside PACS (the phone).

The source image at reading size beside a panel with the three probabilities as bars, the
predicted class highlighted, the model, the time and the decision-support notice. When the
prediction has a heat map, it is laid translucently over the region of the image the network
saw, and the panel carries its legend. Fonts, rendered texts and the heat-map legend are made
once and reused; each result's picture is drawn once (``picture``).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ctai.model.preprocess import content_box
from ctai.outputs.codes import FINDINGS
from ctai.outputs.common import calibration_name
from ctai.types import Result

NOTICE = "Decision support only - must be reviewed by a physician."
#: Picture height: the source's, within these bounds; the panel is drawn for MIN_HEIGHT.
MIN_HEIGHT, MAX_HEIGHT = 512, 1024
PANEL_WIDTH = 560
BACKGROUND = (0, 0, 0)
PANEL = (24, 28, 34)
TEXT = (232, 234, 237)
MUTED = (150, 158, 168)
TRACK = (52, 58, 66)
BAR = (110, 128, 150)
HIGHLIGHT = (255, 176, 0)
NOTICE_TEXT = (20, 20, 20)
HEATMAP_LEGEND = "Heat map: where the model looked - not a segmentation"
#: Matplotlib's "inferno" at 9 even steps: perceptually ordered, dark (cool) to bright (hot).
HEAT_COLOURS = np.array([(0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84),
                         (228, 90, 49), (249, 142, 9), (249, 203, 53), (252, 255, 164)], dtype=np.float32)
#: Opacity of the hottest colour; cool regions stay clear, so the anatomy shows everywhere.
HEAT_OPACITY = 0.55
#: Colour of heat 0..255 as a palette (R, G, B of each level), and its opacity as a lookup table.
HEAT_PALETTE = np.round(np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(HEAT_COLOURS)), channel)
                                  for channel in HEAT_COLOURS.T], axis=1)).astype(int).ravel().tolist()
HEAT_ALPHA = [round(level * HEAT_OPACITY) for level in range(256)]


def _font(size: float) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (Pillow >= 10.1 with FreeType): no font package needed."""
    return _font_of_size(round(size))


@functools.lru_cache(maxsize=64)
def _font_of_size(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    assert isinstance(font, ImageFont.FreeTypeFont), "Pillow was built without FreeType"
    # The panel draws the same few texts over and over: keep their glyph masks, which depend only
    # on the arguments (text, anchor, stroke, subpixel start).
    font.getmask2 = functools.lru_cache(maxsize=512)(font.getmask2)  # type: ignore[method-assign]
    return font


def _scaled_source(pixels: np.ndarray) -> Image.Image:
    """The display-ready source in 8 bits, resized to 512..1024 px high (and at most 1024 wide).

    A source at least twice too large, such as a 2500 x 2048 radiograph, is first averaged over
    blocks of a whole number of pixels (Pillow's ``reducing_gap``): half the time of Lanczos alone,
    within 2 gray levels of it (0.2 on average) on chest radiographs."""
    image = Image.fromarray(_bytes(pixels), "L")
    height = min(max(image.height, MIN_HEIGHT), MAX_HEIGHT)
    scale = min(height / image.height, MAX_HEIGHT / image.width)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0).convert("RGB")


def _bytes(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` in [0, 1] as 0..255, rounded half to even (``np.round``): one scratch array."""
    scaled = np.multiply(pixels, 255, dtype=np.result_type(pixels, np.float32))
    np.clip(scaled, 0, 255, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _paint_heat(image: Image.Image, heat: Image.Image, corner: tuple[int, int]) -> None:
    """Lay the colours of ``heat`` (L) over ``image`` (RGB) from ``corner``, more opaque where hotter."""
    colours = heat.copy()
    colours.putpalette(HEAT_PALETTE)
    image.paste(colours.convert("RGB"), corner, heat.point(HEAT_ALPHA))


def _draw_heatmap(source: Image.Image, pixels: np.ndarray, heatmap: np.ndarray) -> None:
    """Lay ``heatmap`` (coarse, covering the model input) over the displayed ``source`` of
    ``pixels``: on the region the network saw, its blank margins trimmed, smoothly enlarged."""
    top, left, bottom, right = content_box(pixels)
    y_scale, x_scale = source.height / pixels.shape[0], source.width / pixels.shape[1]
    box = (round(left * x_scale), round(top * y_scale), round(right * x_scale), round(bottom * y_scale))
    heat = Image.fromarray(np.round(heatmap * 255).astype(np.uint8)).resize(
        (box[2] - box[0], box[3] - box[1]), Image.Resampling.BICUBIC)
    _paint_heat(source, heat, box[:2])


@functools.lru_cache(maxsize=16)
def _legend_strip(width: int, height: int) -> Image.Image:
    """The heat colours, cool (left) to hot, over mid-gray: the legend of the heat map."""
    strip = Image.new("RGB", (width, height), (128, 128, 128))
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))
    _paint_heat(strip, Image.fromarray(ramp), (0, 0))
    return strip


@functools.lru_cache(maxsize=256)
def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> tuple[str, ...]:
    """``text`` broken into lines no wider than ``width`` (a longer single word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return tuple(lines)


class _Panel:
    """Draws the result panel top to bottom at ``scale`` x the 512 px design."""

    def __init__(self, image: Image.Image, left: int, scale: float) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.scale = scale
        self.left = left + round(28 * scale)
        self.width = round((PANEL_WIDTH - 56) * scale)
        self.y = round(26 * scale)

    def px(self, value: float) -> int:
        return round(value * self.scale)

    def text(self, text: str, size: float, fill: tuple[int, int, int], bold: bool = False) -> None:
        font = _font(size * self.scale)
        for line in _wrap(text, font, self.width):
            self.draw.text((self.left, self.y), line, font=font, fill=fill,
                           stroke_width=self.px(0.6) if bold else 0, stroke_fill=fill)
            self.y += self.px(size * 1.25)

    def gap(self, value: float) -> None:
        self.y += self.px(value)

    def rule(self) -> None:
        self.draw.line((self.left, self.y, self.left + self.width, self.y), fill=TRACK, width=self.px(2))

    def bar(self, label: str, probability: float, predicted: bool) -> None:
        """Label, then a bar as long as the probability with its percentage at the right."""
        self.text(label, 21, HIGHLIGHT if predicted else MUTED)
        font = _font(24 * self.scale)
        track = self.width - self.px(84)
        top, bottom = self.y, self.y + self.px(26)
        self.draw.rectangle((self.left, top, self.left + track, bottom), fill=TRACK)
        fill_to = self.left + round(track * min(max(probability, 0.0), 1.0))
        if fill_to > self.left:
            self.draw.rectangle((self.left, top, fill_to, bottom), fill=HIGHLIGHT if predicted else BAR)
        colour = HIGHLIGHT if predicted else TEXT
        self.draw.text((self.left + self.width, (top + bottom) / 2), _percent(probability), font=font,
                       anchor="rm", fill=colour, stroke_width=self.px(0.6) if predicted else 0,
                       stroke_fill=colour)
        self.y = bottom + self.px(12)

    def heat_legend(self, text: str) -> None:
        """A strip of the heat colours, cool to hot, as they look over a mid-gray image; then ``text``."""
        height = self.px(12)
        self.image.paste(_legend_strip(self.width, height), (self.left, self.y))
        self.y += height + self.px(6)
        self.text(text, 16, MUTED)

    def notice(self, text: str, bottom: int) -> int:
        """``text`` in a highlighted box whose lower edge is at ``bottom``; returns its top."""
        font = _font(18 * self.scale)
        lines = _wrap(text, font, self.width - self.px(24))
        line_height = self.px(18 * 1.3)
        top = bottom - len(lines) * line_height - self.px(16)
        self.draw.rectangle((self.left, top, self.left + self.width, bottom), fill=HIGHLIGHT)
        for index, line in enumerate(lines):
            self.draw.text((self.left + self.px(12), top + self.px(8) + index * line_height), line,
                           font=font, fill=NOTICE_TEXT)
        return top

    def footnotes(self, texts: list[str], bottom: int) -> None:
        """Small lines of ``texts`` ending at ``bottom``."""
        font = _font(16 * self.scale)
        lines = [line for text in texts for line in _wrap(text, font, self.width)]
        line_height = self.px(16 * 1.35)
        for index, line in enumerate(lines):
            y = bottom - (len(lines) - index) * line_height
            self.draw.text((self.left, y), line, font=font, fill=MUTED)


def _percent(probability: float) -> str:
    """A whole percentage that never shows 0 % or 100 % for a value that is neither."""
    if 0 < probability < 0.005:
        return "<1%"
    if 0.995 <= probability < 1:
        return ">99%"
    return f"{probability:.0%}"


def picture(result: Result) -> Image.Image:
    """The result picture of ``result``, drawn once: the Secondary Capture and the phone's page share it."""
    if result.picture is None:
        result.picture = render_picture(result)
    return result.picture


def render_picture(result: Result) -> Image.Image:
    """The result picture: source image left (under the heat map if there is one), probabilities
    panel right (RGB)."""
    prediction = result.prediction
    source = _scaled_source(result.source.pixels)
    if prediction.heatmap is not None:
        _draw_heatmap(source, result.source.pixels, prediction.heatmap)
    height = max(source.height, MIN_HEIGHT)
    scale = height / MIN_HEIGHT
    picture = Image.new("RGB", (source.width + round(PANEL_WIDTH * scale), height), BACKGROUND)
    picture.paste(source, (0, (height - source.height) // 2))
    ImageDraw.Draw(picture).rectangle((source.width, 0, picture.width, height), fill=PANEL)

    panel = _Panel(picture, source.width, scale)
    panel.text("AI chest image classification", 26, TEXT, bold=True)
    panel.gap(8)
    panel.rule()
    panel.gap(14)
    panel.text("Most likely", 17, MUTED)
    label = prediction.label
    panel.text(f"{FINDINGS[label].meaning}  {_percent(prediction.probabilities[label])}", 32, HIGHLIGHT,
               bold=True)
    panel.gap(14)
    for name, code in FINDINGS.items():
        panel.bar(code.meaning, prediction.probabilities[name], name == label)
    if prediction.heatmap is not None:
        panel.gap(10)
        panel.heat_legend(HEATMAP_LEGEND)
    top = panel.notice(notice(result), height - panel.px(22))
    panel.footnotes(footnotes(result), top - panel.px(12))
    return picture


def notice(result: Result) -> str:
    """The highlighted box's text: each flag's caution (``ctai_flags``), then ``NOTICE``."""
    return " ".join([*(f"Caution: {flag.reason}." for flag in result.flags), NOTICE])


def footnotes(result: Result) -> list[str]:
    """The picture's small print: the model, when, the calibration, how the image was made."""
    prediction = result.prediction
    model = prediction.model
    notes = [f"Model {model.name} {model.version} ({model.manufacturer}), "
             f"{prediction.started.strftime('%Y-%m-%d %H:%M')}", f"Calibration: {calibration_name(prediction)}"]
    if result.source.derivation:
        notes.append(f"Image: {result.source.derivation}")
    return notes
