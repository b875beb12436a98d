"""Built-in image selection: chest images of the configured modalities, never ctai's own outputs."""

from __future__ import annotations

from ctai import hookimpl
from ctai.config import Config
from ctai.types import SourceImage

#: Every series ctai writes has a Series Description starting with this.
OUTPUT_SERIES_PREFIX = "ctai AI result"


@hookimpl
def ctai_skip_reason(image: SourceImage, config: Config) -> str | None:
    ds = image.dataset
    if str(ds.get("SeriesDescription", "")).startswith(OUTPUT_SERIES_PREFIX):
        return "this is one of ctai's own results"
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in config["inputs"]["modalities"]:
        return f"modality {modality} is not a chest radiograph or CT"
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if body_part and body_part not in config["inputs"]["body_parts"]:
        return f"body part {body_part} is not the chest"
    return None
