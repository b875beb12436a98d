"""Deterministic UIDs for ctai's outputs.

Re-processing an image with the same model yields the same UIDs (PS3.5 9: one UID, one
object), so a PACS that receives an output again replaces it instead of keeping both.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from ctai.types import ModelInfo

#: pydicom's registered root, which pydicom offers to any application generating UIDs.
ROOT = PYDICOM_ROOT_UID


def derived_uid(*parts: str) -> str:
    """A UID that depends only on ``parts`` (a hash of them under :data:`ROOT`)."""
    return str(generate_uid(prefix=ROOT, entropy_srcs=["ctai", *parts]))


def instance_uid(source: Dataset, model: ModelInfo, kind: str) -> str:
    """SOP Instance UID of the ``kind`` output ("sr", "sc") made from one source image."""
    return derived_uid(source.SOPInstanceUID, model.name, model.version, kind)


def series_uid(source: Dataset, model: ModelInfo, kind: str) -> str:
    """Series Instance UID of the ``kind`` outputs of one model in the source's study."""
    return derived_uid(source.StudyInstanceUID, model.name, model.version, kind)


def device_uid(model: ModelInfo) -> str:
    """Device UID of the algorithm: one per model name and version, so it changes with the model."""
    return derived_uid(model.manufacturer, model.name, model.version)
