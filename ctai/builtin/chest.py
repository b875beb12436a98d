"""Built-in image selection: chest images of the configured modalities, never ctai's own outputs
(the header rules of ``ctai.inputs.selection``)."""

from __future__ import annotations

from ctai import hookimpl
from ctai.config import Config
from ctai.inputs.selection import skip_reason
from ctai.types import SourceImage


@hookimpl(tryfirst=True)  # the cheapest rules answer first: the modality before the age or the pixels
def ctai_skip_reason(image: SourceImage, config: Config) -> str | None:
    settings = config["inputs"]
    return skip_reason(image.dataset, settings["modalities"], settings["body_parts"], modality_required=False)
