"""Built-in image selection: chest images of the configured modalities, never ctai's own outputs."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ctai import hookimpl
from ctai.config import Config
from ctai.types import SourceImage

#: Every series ctai writes has a Series Description starting with this.
OUTPUT_SERIES_PREFIX = "ctai AI result"
OWN_OUTPUT = "this is one of ctai's own results"


def skip_reason(tags: Any, modalities: Collection[str], body_parts: Collection[str],
                modality_required: bool = True) -> str | None:
    """Why an image or series with these DICOM attributes (a pydicom Dataset, or Orthanc's
    MainDicomTags) is not for ctai, or None. Fast: no I/O."""
    if str(tags.get("SeriesDescription", "")).startswith(OUTPUT_SERIES_PREFIX):
        return OWN_OUTPUT
    modality = str(tags.get("Modality", "")).upper()
    if (modality or modality_required) and modality not in modalities:
        return f"modality {modality or '(none)'} is not a chest radiograph or CT"
    body_part = str(tags.get("BodyPartExamined", "")).upper()
    if body_part and body_part not in body_parts:
        return f"body part {body_part} is not the chest"
    return None


@hookimpl
def ctai_skip_reason(image: SourceImage, config: Config) -> str | None:
    settings = config["inputs"]
    return skip_reason(image.dataset, settings["modalities"], settings["body_parts"], modality_required=False)
