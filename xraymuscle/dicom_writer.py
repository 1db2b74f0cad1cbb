"""Write a radiograph as a DICOM DX file (for exporting synthetic radiographs to other tools).

The image is windowed to 12 bits (bone bright, MONOCHROME2) and marked as shown as radiographs are
read (``PatientOrientation`` L\\F). ``pixel_spacing_mm`` goes into
``PixelSpacing`` (calibrated, at the patient plane); the detector pitch, when given, into
``ImagerPixelSpacing`` with the magnification.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from xraymuscle.atomic import atomic_path
from xraymuscle.typing import PathLikeStr

DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage


def write_dx(
    path: PathLikeStr,
    image: np.ndarray,
    *,
    pixel_spacing_mm: float,
    detector_spacing_mm: float | None = None,
    magnification: float | None = None,
    description: str = "synthetic radiograph",
    tags: Mapping[str, object] | None = None,
) -> Path:
    """Write ``image`` (any float range) as an uncompressed 12-bit DX DICOM, atomically.

    ``tags`` adds data elements by keyword (``PatientID``, ``PatientAge``, ``StudyDate`` …).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be 2D, not {image.shape}")
    lo, hi = np.percentile(image, [0.1, 99.9])
    pixels = np.clip((image - lo) / max(hi - lo, 1e-9) * 4095.0, 0, 4095).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.ViewPosition = "AP"
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    ds.BodyPartExamined = "PELVIS"
    ds.SeriesDescription = description
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [f"{pixel_spacing_mm:.6g}", f"{pixel_spacing_mm:.6g}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"  # at the isocentre plane, by the known geometry
    if detector_spacing_mm is not None:
        ds.ImagerPixelSpacing = [f"{detector_spacing_mm:.6g}", f"{detector_spacing_mm:.6g}"]
    if magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = f"{magnification:.6g}"
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
