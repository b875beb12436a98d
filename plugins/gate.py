"""Built-in input gate: refuse images that are not frontal chest radiographs, judged from the
pixels (``ctai.model.gate``), after the header rules of ``plugins/chest.py``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ctai import hookimpl
from ctai.config import Config
from ctai.model.gate import ChestGate, shipped_gate_dir
from ctai.types import SourceImage


@cache
def _gate(folder: str) -> ChestGate:
    return ChestGate(Path(folder) if folder else shipped_gate_dir())


@hookimpl(trylast=True)  # the header rules are cheaper: let them answer first
def ctai_skip_reason(image: SourceImage, config: Config) -> str | None:
    settings = config["inputs"]
    if not settings["gate"] or image.derivation:
        # A derived image (a CT series' frontal projection) was never a picture of anything: its
        # series header says chest CT, and the gate has not learnt what projections look like.
        return None
    return _gate(settings["gate_model"]).refusal(image.pixels, float(settings["gate_threshold"]))
