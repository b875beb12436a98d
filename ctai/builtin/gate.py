"""Built-in input gate: refuse images that are not frontal chest radiographs, judged from the
pixels (``ctai.model.gate``) a batch at a time, once the header rules of ``ctai.builtin.chest``
have kept them."""

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


@hookimpl
def ctai_skip_reasons(images: list[SourceImage], config: Config) -> list[str | None] | None:
    """The gate's refusals of a batch, one network call for all (``ChestGate.refusals``)."""
    settings = config["inputs"]
    # A derived image (a CT series' frontal projection) was never a picture of anything: its
    # series header says chest CT, and the gate has not learnt what projections look like.
    judged = [i for i, image in enumerate(images) if not image.derivation]
    if not settings["gate"] or not judged:
        return None
    backend = backend_name(config["model"]["backend"])
    # Keras needs no cache: one gate serves every data dir (and every test).
    gate = _gate(settings["gate_model"], backend, "" if backend == "keras" else config["data"]["dir"])
    refusals = gate.refusals([images[i].pixels for i in judged], float(settings["gate_threshold"]))
    reasons: list[str | None] = [None] * len(images)
    for i, reason in zip(judged, refusals, strict=True):
        reasons[i] = reason
    return reasons
