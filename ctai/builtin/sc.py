"""Built-in output: the result picture as a Secondary Capture of each classified image (``ctai.outputs.sc``)."""

from __future__ import annotations

from ctai import hookimpl
from ctai.config import Config
from ctai.types import Output, Result


@hookimpl
def ctai_make_outputs(result: Result, config: Config) -> list[Output]:
    """The picture of one classified image, in a new series of the source's study."""
    from ctai.outputs.sc import build_sc  # highdicom: only commands that make outputs pay its import

    return [Output("sc", build_sc(result, config["outputs"]["sc_series_number"]))]
