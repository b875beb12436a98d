"""Built-in output: the DICOM SR (TID 1500) of each classified image (``ctai.outputs.sr``)."""

from __future__ import annotations

from ctai import hookimpl
from ctai.config import Config
from ctai.types import Output, Result


@hookimpl
def ctai_make_outputs(result: Result, config: Config) -> list[Output]:
    """The SR of one classified image, in a new series of the source's study."""
    from ctai.outputs.sr import build_sr  # highdicom: only commands that make outputs pay its import

    picture = "sc" not in config["plugins"]["disabled"]
    return [Output("sr", build_sr(result, config["outputs"]["sr_series_number"], picture))]
