"""Built-in input gate: refuse images that are not frontal chest radiographs, judged from the
pixels (``ctai.model.gate``), after the header rules of ``ctai.builtin.chest``."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from ctai import hookimpl
from ctai.config import Config
from ctai.model.converted import backend_name, cache_dir
from ctai.model.gate import ChestGate, shipped_gate_dir
from ctai.types import SourceImage

log = logging.getLogger(__name__)


@cache
def _gate(folder: str, backend: str, data: str) -> ChestGate:
    """The gate network on the classifier's backend (``[model] backend``), else on Keras."""
    path = Path(folder) if folder else shipped_gate_dir()
    if backend != "keras":
        try:
            return ChestGate(path, backend, cache_dir(data))
        except Exception as error:
            log.warning("the %s backend could not load the gate %s (%s: %s); using Keras", backend, path,
                        type(error).__name__, error)
    return ChestGate(path)


@hookimpl(trylast=True)  # the header rules are cheaper: let them answer first
def ctai_skip_reason(image: SourceImage, config: Config) -> str | None:
    settings = config["inputs"]
    if not settings["gate"] or image.derivation:
        # A derived image (a CT series' frontal projection) was never a picture of anything: its
        # series header says chest CT, and the gate has not learnt what projections look like.
        return None
    backend = backend_name(config["model"]["backend"])
    # Keras needs no cache: one gate serves every data dir (and every test).
    gate = _gate(settings["gate_model"], backend, "" if backend == "keras" else config["data"]["dir"])
    return gate.refusal(image.pixels, float(settings["gate_threshold"]))
