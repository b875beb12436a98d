"""Which images and series are for ctai, from their DICOM header alone (no pixels, no I/O):
chest images of the configured modalities and body parts, never ctai's own outputs.
Used by the ``chest`` plugin for every image and by Orthanc's script for each stable series."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

#: Every series ctai writes has a Series Description starting with this (``ctai.outputs``).
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
