"""The classification as a picture: an RGB Secondary Capture (PS3.3 A.8.1) for any viewer.

The picture is the result picture (``ctai.outputs.picture``). As for the SR
(``ctai.outputs.sr``), highdicom builds the first SC of each kind and the others are copies of
it with what differs filled in, byte for byte what highdicom would build.
"""

from __future__ import annotations

import functools
from datetime import datetime

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from ctai.outputs.dicom import TYPE_2_TAGS, common_attributes, copy_of, fill_common, source_kind
from ctai.outputs.picture import picture
from ctai.types import Result

SERIES_DESCRIPTION = "ctai AI result (picture)"


def _source_reference(source: Dataset) -> Dataset:
    """Source Image Sequence item (PS3.3 C.7.6.1), purpose DCM 121322 (CID 7202)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    return item


def build_sc(result: Result, series_number: int) -> Dataset:
    """``reference_sc`` of the result picture, with the InstanceCreation, DateOfSecondaryCapture
    and highdicom's ContributionDateTime of now: a copy of the one highdicom built for the first
    source of its kind (``ctai.outputs.dicom.copy_of``), with what differs filled in."""
    source, prediction = result.source.dataset, result.prediction
    drawn = picture(result)
    if len(result.source.cited) > 1:  # a CT projection cites every slice: rare, built in full
        return reference_sc(result, series_number, drawn)
    sc = copy_of(("sc", series_number, *source_kind(source, prediction)),
                 lambda: reference_sc(result, series_number, drawn),
                 functools.partial(_fill_sc, result=result, size=drawn.size), drop=("PixelData",))
    sc.add_new("PixelData", "OB", drawn.tobytes())  # 8-bit RGB, interleaved: what highdicom encodes
    return sc


def _fill_sc(sc: Dataset, result: Result, size: tuple[int, int]) -> None:
    """Set what differs between the SCs of one kind, but the pixels, to ``result``'s."""
    source = result.source.dataset
    fill_common(sc, source, result.prediction, "sc", TYPE_2_TAGS)
    now = datetime.now()
    sc.DateOfSecondaryCapture, sc.TimeOfSecondaryCapture = DA(now.date()), TM(now.time())
    sc.Columns, sc.Rows = size
    sc.PatientOrientation = source.get("PatientOrientation", "")
    (reference,) = sc.SourceImageSequence
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID


def reference_sc(result: Result, series_number: int, picture: Image.Image) -> hd.sc.SCImage:
    """``picture`` as an RGB Secondary Capture Image (PS3.3 A.8.1) in the source's study, built and
    validated by highdicom: ``build_sc`` makes the same object faster from a copy of one."""
    source = result.source.dataset
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.asarray(picture),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        # highdicom needs a value here; replaced below by the source's own (maybe empty).
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **common_attributes(source, result.prediction, "sc", series_number, SERIES_DESCRIPTION),
    )
    # The picture keeps the source's orientation; Type 2C, empty when unknown (PS3.3 C.7.6.1).
    capture.PatientOrientation = source.get("PatientOrientation", "")
    capture.BodyPartExamined = "CHEST"
    capture.SourceImageSequence = [_source_reference(ds) for ds in result.source.cited]
    return capture
