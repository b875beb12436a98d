"""Test inputs made on the fly: a synthetic chest CT series, and radiographs wrapped from the
committed JPEGs (tests/data/images, CC BY 4.0) with fresh UIDs."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctai.inputs.images import open_image
from ctai.inputs.wrap import PatientInfo, wrap_image
from tests.conftest import IMAGES


def chest_hu(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Hounsfield units of a crude chest (LPS millimetres): body, two lungs, spine, and a dense
    marker high in the patient's left lung, to check orientation."""
    hu = np.full(np.broadcast(x, y, z).shape, -1000.0)
    hu[(x / 150) ** 2 + (y / 100) ** 2 <= 1] = 40
    hu[(((np.abs(x) - 70) / 55) ** 2 + (y / 70) ** 2 <= 1) & (z > -180)] = -850
    hu[x ** 2 + (y - 70) ** 2 <= 20 ** 2] = 700
    hu[(x > 60) & (x < 100) & (np.abs(y) < 30) & (z > -40)] = 1000
    return hu


def _slice(hu: np.ndarray, position: tuple[float, float, float], orientation: list[float], spacing: float,
           series: dict[str, object], number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in series.items():
        setattr(ds, keyword, value)
    ds.Modality, ds.BodyPartExamined, ds.InstanceNumber = "CT", "CHEST", number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [round(float(v), 3) for v in position]
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = spacing
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    return ds


def _series(patient_id: str) -> dict[str, object]:
    return {"PatientID": patient_id, "PatientName": f"Phantom^{patient_id}", "PatientBirthDate": "",
            "PatientSex": "", "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "FrameOfReferenceUID": generate_uid(), "StudyDate": "20260101", "StudyTime": "120000",
            "SeriesNumber": 3, "AccessionNumber": "", "StudyID": "1", "ReferringPhysicianName": "",
            "Manufacturer": "ctai-tests"}


def ct_series(slices: int = 40, size: int = 64, spacing: float = 320 / 64, step: float = 5.0,
              patient_id: str = "CT1") -> list[Dataset]:
    """Axial slices from the feet up, ``step`` mm apart, ``size`` pixels of ``spacing`` mm across."""
    series = _series(patient_id)
    centres = -160 + (np.arange(size) + 0.5) * (320 / size)
    y, x = np.meshgrid(centres, centres, indexing="ij")
    out = []
    for k in range(slices):
        z = -200 + k * step
        hu = chest_hu(x, y, np.full_like(x, z))
        out.append(_slice(hu, (centres[0], centres[0], z), [1, 0, 0, 0, 1, 0], spacing, series, k + 1))
    return out


def coronal_series(slices: int = 64, size: int = 64, patient_id: str = "CT2") -> list[Dataset]:
    """The same chest cut in coronal slices, front to back; rows run from head to feet."""
    series = _series(patient_id)
    pixel = 320 / size
    xs = -160 + (np.arange(size) + 0.5) * pixel
    zs = -200 + np.arange(size) * pixel  # rows, head first
    z, x = np.meshgrid(zs[::-1], xs, indexing="ij")
    out = []
    for k in range(slices):
        y = -160 + (k + 0.5) * (320 / slices)
        hu = chest_hu(x, np.full_like(x, y), z)
        out.append(_slice(hu, (xs[0], y, zs[-1]), [1, 0, 0, 0, 0, -1], pixel, series, k + 1))
    return out


def radiograph(name: str, patient_id: str = "P1", modality: str = "DX", body_part: str = "CHEST") -> Dataset:
    """A committed JPEG wrapped as DICOM, with new study, series and instance UIDs."""
    ds = wrap_image(open_image(IMAGES / name), PatientInfo(id=patient_id, name=f"Test^{patient_id}"), name)
    ds.Modality, ds.BodyPartExamined = modality, body_part
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def image_names() -> list[str]:
    return sorted(p.name for p in IMAGES.glob("*.jpeg"))
