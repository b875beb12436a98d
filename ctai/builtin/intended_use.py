"""Built-in intended-use rules (``ctai.inputs.intended_use``): an image whose header puts it
outside what the model was made for (a patient's age, a view that is not frontal) is withheld
before the gate and the classifier see it, or, when ``[inputs] intended_use = "flag"``,
classified and delivered with a flag saying why."""

from __future__ import annotations

from functools import cache

from ctai import hookimpl
from ctai.config import Config
from ctai.inputs.intended_use import IntendedUse, reasons
from ctai.model.backend import model_meta
from ctai.types import Flag, Result, SourceImage


@cache  # read once per model, not per image
def _model_ages(path: str) -> tuple[float, float] | None:
    ages = model_meta(path).get("intended_use", {}).get("ages")
    return (float(ages[0]), float(ages[1])) if ages else None


def _intended(config: Config) -> IntendedUse | None:
    """``[inputs] intended_ages`` when set, else the model's (``model.json`` "intended_use")."""
    ages = config["inputs"]["intended_ages"] or _model_ages(config["model"]["path"])
    return IntendedUse(float(ages[0]), float(ages[1])) if ages else None


def _reasons(image: SourceImage, config: Config) -> list[str]:
    intended = _intended(config)
    return reasons(image.dataset, intended) if intended else []


@hookimpl  # per image, so before the gate (per batch): an adult's film is withheld for its age, not its looks
def ctai_skip_reason(image: SourceImage, config: Config) -> str | None:
    if config["inputs"]["intended_use"] != "withhold":
        return None
    return "; ".join(_reasons(image, config)) or None


@hookimpl
def ctai_flags(result: Result, config: Config) -> list[Flag] | None:
    if config["inputs"]["intended_use"] != "flag":
        return None
    return [Flag("intended-use", reason) for reason in _reasons(result.source, config)] or None
