"""Radiograph reader: DICOM variants built with pydicom, raster files, spacing tags, bad input."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)

from xraymuscle.errors import InputError
from xraymuscle.prepare import GridTarget, prepare
from xraymuscle.radiograph import read_radiograph

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def ramp(h: int = 32, w: int = 40, bits: int = 12) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 2**bits, size=(h, w)).astype(np.uint16)


def write_dx(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    **tags: object,
) -> Path:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientSex = "F"
    ds.PatientAge = "067Y"
    ds.Rows, ds.Columns = pixels.shape[:2]
    rgb = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = 8 if pixels.dtype == np.uint8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.tobytes()
    else:
        ds.compress(syntax, pixels)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_uncompressed_monochrome2_with_imager_spacing(tmp_path: Path) -> None:
    px = ramp()
    rad = read_radiograph(write_dx(tmp_path / "a.dcm", px, ImagerPixelSpacing=[0.15, 0.16]))
    np.testing.assert_array_equal(rad.pixels, px.astype(np.float32))
    assert rad.pixel_spacing == (0.15, 0.16)
    assert rad.spacing_source == "dicom:ImagerPixelSpacing"
    assert rad.spacing_plane == "detector"
    assert rad.metadata["patient_sex"] == "F" and rad.metadata["patient_age"] == "067Y"


def test_monochrome1_inverted(tmp_path: Path) -> None:
    px = ramp()
    rad = read_radiograph(write_dx(tmp_path / "m1.dcm", px, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(rad.pixels, (px.max() + px.min() - px).astype(np.float32))


@pytest.mark.parametrize(
    ("tags", "source"),
    [
        (
            {"EstimatedRadiographicMagnificationFactor": 1.25},
            "dicom:ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
        ),
    ],
)
def test_magnification_corrects_spacing(tmp_path: Path, tags: dict[str, float], source: str) -> None:
    """0.2 mm at the detector with a magnification of 1.25 is 0.16 mm at the patient (rows and
    columns each: 0.25 mm becomes 0.2 mm)."""
    rad = read_radiograph(write_dx(tmp_path / "mag.dcm", ramp(), ImagerPixelSpacing=[0.2, 0.25], **tags))
    assert rad.pixel_spacing == pytest.approx((0.16, 0.2))
    assert rad.spacing_source == source
    assert rad.spacing_plane == "patient"


@pytest.mark.parametrize(
    ("tags", "given", "magnification", "how"),
    [
        # the file's source-to-detector distance, the hip 150 mm above the detector as in training
        ({"DistanceSourceToDetector": 1150}, None, 1150 / 1000, "source-to-detector distance 1150 mm"),
        ({"DistanceSourceToDetector": 1800}, None, 1800 / 1650, "source-to-detector distance 1800 mm"),
        # the distance to the table (or the skin) is not the hip's: not used
        ({"DistanceSourceToDetector": 1100, "DistanceSourceToPatient": 1050}, None, 1100 / 950, "1100 mm"),
        ({}, None, 1050 / 900, "the training magnification 1.167"),
        ({"DistanceSourceToDetector": 200}, None, 1050 / 900, "the training magnification"),  # no such film
        # a magnification no hip has: a placeholder, or the table's
        (
            {"EstimatedRadiographicMagnificationFactor": 1.0, "DistanceSourceToDetector": 1150},
            None,
            1.15,
            "1150",
        ),
        ({"EstimatedRadiographicMagnificationFactor": 1.04}, None, 1050 / 900, "the training magnification"),
        ({"DistanceSourceToDetector": 1150}, 1.3, 1.3, "the given magnification 1.300"),
    ],
)
def test_a_detector_spacing_is_brought_to_the_hip(
    tmp_path: Path, tags: dict[str, float], given: float | None, magnification: float, how: str
) -> None:
    px = (ramp(h=256, w=256) // 16).astype(np.uint16)
    path = write_dx(tmp_path / "d.dcm", px, ImagerPixelSpacing=[0.7, 0.7], **tags)
    rad = read_radiograph(path)
    assert rad.spacing_plane == "detector" and rad.pixel_spacing == (0.7, 0.7)
    unused = {"DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor"} & set(tags)
    assert {n.split()[0] for n in rad.notes if "not used" in n} == unused  # each said so
    target = GridTarget(64, 4.0, given or 1050 / 900, given is not None, hip_to_detector_mm=150.0)
    prepared = prepare(path, target)
    assert prepared.spacing_mm == pytest.approx(0.7 / magnification)
    assert any(how in note for note in prepared.notes), prepared.notes


def test_calibrated_pixel_spacing_wins(tmp_path: Path) -> None:
    path = write_dx(tmp_path / "cal.dcm", ramp(), ImagerPixelSpacing=[0.2, 0.2], PixelSpacing=[0.17, 0.17])
    rad = read_radiograph(path)
    assert rad.pixel_spacing == (0.17, 0.17)
    assert rad.spacing_source == "dicom:PixelSpacing"


@pytest.mark.parametrize(
    ("tags", "spacing", "source", "plane", "note"),
    [
        # alone, the standard cannot say whether it was corrected; CR defined it at the plate
        ({"Modality": "CR", "PixelSpacing": [0.2, 0.2]},
         0.2, "dicom:PixelSpacing", "detector", "at the plate"),
        ({"Modality": "DX", "PixelSpacing": [0.2, 0.2]},
         0.2, "dicom:PixelSpacing", "patient", "at the patient"),
        ({"Modality": "CR", "PixelSpacing": [0.2, 0.2], "PixelSpacingCalibrationType": "GEOMETRY"},
         0.2, "dicom:PixelSpacing", "patient", None),
        # a digitised film: the spacing on the film, which lay at the detector
        ({"Modality": "OT", "NominalScannedPixelSpacing": [0.3, 0.3]},
         0.3, "dicom:NominalScannedPixelSpacing", "detector", None),
        ({"Modality": "OT", "NominalScannedPixelSpacing": [0.3, 0.3], "PixelSpacing": [0.26, 0.26]},
         0.26, "dicom:PixelSpacing", "patient", None),
    ],
)  # fmt: skip
def test_pixel_spacing_alone_and_scanned_film_spacing(
    tmp_path: Path, tags: dict[str, object], spacing: float, source: str, plane: str, note: str | None
) -> None:
    rad = read_radiograph(write_dx(tmp_path / "s.dcm", ramp(), **tags))
    assert rad.pixel_spacing == pytest.approx((spacing, spacing))
    assert (rad.spacing_source, rad.spacing_plane) == (source, plane)
    assert any(note in n for n in rad.notes) if note else not any("PixelSpacing" in n for n in rad.notes)


def test_placeholder_pixel_spacing_is_unknown(tmp_path: Path) -> None:
    rad = read_radiograph(write_dx(tmp_path / "ph.dcm", ramp(), PixelSpacing=[1.0, 1.0]))
    assert rad.pixel_spacing is None and rad.spacing_source == "unknown"
    assert any("placeholder" in n for n in rad.notes)
    user = read_radiograph(tmp_path / "ph.dcm", pixel_spacing=0.14)
    assert user.pixel_spacing == (0.14, 0.14) and user.spacing_source == "user"
    with pytest.raises(InputError, match="pixel spacing must be positive"):
        read_radiograph(tmp_path / "ph.dcm", pixel_spacing=-1)


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ({}, "none in the file"),
        ({"PixelSpacing": [-1.0, -1.0]}, r"PixelSpacing -1\.0 x -1\.0 is not a positive spacing"),
        ({"ImagerPixelSpacing": [0.0, 0.2]}, r"ImagerPixelSpacing 0\.0 x 0\.2 is not a positive spacing"),
    ],
)
def test_unusable_spacing_says_why(tmp_path: Path, tags: dict[str, list[float]], problem: str) -> None:
    rad = read_radiograph(write_dx(tmp_path / "bad.dcm", ramp(), **tags))
    assert rad.pixel_spacing is None and rad.spacing_source == "unknown"
    assert re.fullmatch(problem + ".*", rad.spacing_problem)
    assert read_radiograph(tmp_path / "bad.dcm", pixel_spacing=0.14).spacing_problem == ""
    # one good tag is enough; the bad one is noted
    good = read_radiograph(write_dx(tmp_path / "good.dcm", ramp(), ImagerPixelSpacing=[0.2, 0.2],
                                    PixelSpacing=[-1.0, -1.0]))  # fmt: skip
    assert good.pixel_spacing == (0.2, 0.2) and good.spacing_problem == ""
    assert any("PixelSpacing -1.0 x -1.0 is not a positive spacing" in n for n in good.notes)


def test_one_spacing_value_where_two_belong_is_read_as_square(tmp_path: Path) -> None:
    rad = read_radiograph(write_dx(tmp_path / "one.dcm", ramp(), PixelSpacing=0.7))
    assert rad.pixel_spacing == (0.7, 0.7) and rad.spacing_source == "dicom:PixelSpacing"


@pytest.mark.parametrize(("spacing", "status", "reason"), [
    (1e9, "rejected", "larger than a body; check the pixel spacing (dicom:PixelSpacing)"),
    (1e300, "rejected", "field of view 1.28e+302 x 1.28e+302 mm is larger than a body"),  # not 300 digits
    (1e-9, "rejected", "too small for a hip radiograph"),
    (3.0, "ok", ""),
])  # fmt: skip
def test_a_spacing_no_body_can_have_is_rejected_not_a_crash(
    tmp_path: Path, spacing: float, status: str, reason: str
) -> None:
    path = write_dx(tmp_path / "a.dcm", ramp(128, 128), PixelSpacing=[spacing, spacing])
    prepared = prepare(path, GridTarget(size=64, spacing_mm=4.0, magnification=1.15))
    assert prepared.status == status and reason in prepared.reason
    assert (prepared.image is not None) == (status == "ok")


def test_a_failure_on_the_way_to_the_grid_costs_one_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(array: np.ndarray, scale: object) -> np.ndarray:
        raise ValueError("out of memory for this size")

    monkeypatch.setattr("xraymuscle.prepare.resample", broken)
    path = write_dx(tmp_path / "a.dcm", ramp(128, 128), PixelSpacing=[3.0, 3.0])
    prepared = prepare(path, GridTarget(size=64, spacing_mm=4.0, magnification=1.15))
    assert prepared.status == "error" and prepared.image is None
    assert (
        prepared.reason == "cannot be brought to the model's grid (ValueError: out of memory for this size)"
    )


def test_multi_page_tiff_refused(tmp_path: Path) -> None:
    """A stack of pages is not one radiograph; the decoder would quietly read only the first."""
    pages = [Image.fromarray(ramp(bits=16)) for _ in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match=r"stack.tif: multi-page image \(3 pages\)"):
        read_radiograph(tmp_path / "stack.tif")
    pages[0].save(tmp_path / "one.tif")
    assert read_radiograph(tmp_path / "one.tif").pixels.shape == (32, 40)


def test_rescale_and_window_applied(tmp_path: Path) -> None:
    px = ramp(bits=10)
    path = write_dx(
        tmp_path / "lut.dcm",
        px,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=900,
        WindowWidth=1000,
    )
    rad = read_radiograph(path)
    values = px.astype(np.float64) * 2 - 100
    # linear VOI: values below centre - width/2 clip to the minimum output, above to the maximum
    assert rad.pixels[values < 400].max() == rad.pixels.min()
    assert rad.pixels[values > 1400].min() == rad.pixels.max()
    inside = (values > 450) & (values < 1350)
    assert np.corrcoef(rad.pixels[inside], values[inside])[0, 1] > 0.999


def test_a_broken_display_window_is_left_out_not_the_image(tmp_path: Path) -> None:
    """A window of width 0 cannot be applied; the window is for display and the image is read
    without it (with a note) rather than lost as an error row."""
    px = ramp(bits=10)
    path = write_dx(
        tmp_path / "w0.dcm", px, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=900, WindowWidth=0
    )
    rad = read_radiograph(path)
    np.testing.assert_allclose(rad.pixels, px.astype(np.float64) * 2 - 100)
    assert any("display window not applied" in note for note in rad.notes)


def test_grey_stored_as_rgb(tmp_path: Path) -> None:
    grey = ramp(bits=8).astype(np.uint8)
    rad = read_radiograph(write_dx(tmp_path / "rgb.dcm", np.repeat(grey[..., None], 3, axis=-1)))
    np.testing.assert_allclose(rad.pixels, grey.astype(np.float32))
    assert not rad.is_colour


@pytest.mark.parametrize(
    ("orientation", "shown", "spacing"),
    [
        (["L", "F"], lambda p: p, (0.2, 0.3)),  # as radiographs are read: unchanged
        (["R", "F"], lambda p: p[:, ::-1], (0.2, 0.3)),  # stored mirrored
        (["LP", "FL"], lambda p: p, (0.2, 0.3)),  # oblique codes: the first letter leads
        (["L", "H"], lambda p: p[::-1], (0.2, 0.3)),  # upside down
        (["R", "H"], lambda p: p[::-1, ::-1], (0.2, 0.3)),  # turned half way
        (["F", "R"], lambda p: p.T[:, ::-1], (0.3, 0.2)),  # turned a quarter: spacing follows
        (["H", "L"], lambda p: p.T[::-1], (0.3, 0.2)),
        (["A", "F"], lambda p: p, (0.2, 0.3)),  # lateral: left as stored (and rejected, below)
        (["X", "F"], lambda p: p, (0.2, 0.3)),  # not an orientation: left as stored
        (None, lambda p: p, (0.2, 0.3)),
    ],
)
def test_dicom_patient_orientation_brings_the_image_to_the_reading_orientation(
    tmp_path: Path,
    orientation: list[str] | None,
    shown: Callable[[np.ndarray], np.ndarray],
    spacing: tuple[float, float],
) -> None:
    """Read as stored, a DICOM radiograph stored mirrored would exchange the patient's left and
    right muscles; its Patient Orientation says how it is stored."""
    px = ramp(h=32, w=40)
    tags = {} if orientation is None else {"PatientOrientation": orientation}
    path = write_dx(tmp_path / "x.dcm", px, PixelSpacing=[0.2, 0.3], **tags)
    rad = read_radiograph(path)
    np.testing.assert_array_equal(rad.pixels, shown(px).astype(np.float32))
    assert rad.pixel_spacing == pytest.approx(spacing)
    changed = shown(px).shape != px.shape or not np.array_equal(shown(px), px)
    assert any("PatientOrientation" in note for note in rad.notes) == changed


@pytest.mark.parametrize(
    ("part", "rejected"), [("CHEST", True), ("HAND", True), ("PELVIS", False), ("", False)]
)
def test_a_radiograph_of_another_body_part_is_rejected(tmp_path: Path, part: str, rejected: bool) -> None:
    px = (ramp(h=256, w=256) // 16).astype(np.uint16)
    path = write_dx(tmp_path / "x.dcm", px, PixelSpacing=[1.4, 1.4], BodyPartExamined=part)
    prepared = prepare(path, GridTarget(size=64, spacing_mm=4.0, magnification=1.15))
    assert (prepared.status == "rejected") == rejected
    if rejected:
        assert (
            f"BodyPartExamined {part.strip().upper()}" in prepared.reason
            and "not of the hip" in prepared.reason
        )


@pytest.mark.parametrize(
    ("tag", "side", "rejected"),
    [("ImageLaterality", "L", True), ("Laterality", "R", True), ("ImageLaterality", "B", False)],
)
def test_a_radiograph_of_one_hip_is_rejected(tmp_path: Path, tag: str, side: str, rejected: bool) -> None:
    """A hip film of one side shows half the muscles the model measures."""
    px = (ramp(h=256, w=256) // 16).astype(np.uint16)
    path = write_dx(tmp_path / "x.dcm", px, PixelSpacing=[1.4, 1.4], BodyPartExamined="HIP", **{tag: side})
    prepared = prepare(path, GridTarget(size=64, spacing_mm=4.0, magnification=1.15))
    assert (prepared.status == "rejected") == rejected
    assert not rejected or f"one side (laterality {side})" in prepared.reason


def test_a_lateral_by_its_patient_orientation_is_rejected(tmp_path: Path) -> None:
    px = (ramp(h=256, w=256) // 16).astype(np.uint16)
    path = write_dx(tmp_path / "lat.dcm", px, PixelSpacing=[1.4, 1.4], PatientOrientation=["P", "F"])
    prepared = prepare(path, GridTarget(size=64, spacing_mm=4.0, magnification=1.15))
    assert prepared.status == "rejected" and "PatientOrientation P\\F" in prepared.reason


@pytest.mark.parametrize("limit", [None, 4000])
def test_pixel_padding_is_taken_as_unexposed(tmp_path: Path, limit: int | None) -> None:
    """Pixels the file marks as padding (a shuttered field's corner, stored bright) are not
    anatomy: they get the level of air, so they neither pass for bone nor set the percentiles."""
    px = (ramp(h=32, w=40) % 3000).astype(np.uint16) + 500  # anatomy: 500..3499
    corner = np.add.outer(np.arange(32), np.arange(40)) < 20  # a triangle, not an edge band
    px[corner] = 4095 if limit is None else np.linspace(4000, 4095, corner.sum()).astype(np.uint16)
    tags = {"PixelPaddingValue": 4095} | ({} if limit is None else {"PixelPaddingRangeLimit": limit})
    rad = read_radiograph(write_dx(tmp_path / "padded.dcm", px, **tags))
    air = np.percentile(px[~corner].astype(np.float32), 0.5)
    np.testing.assert_allclose(rad.pixels[corner], air)
    np.testing.assert_array_equal(rad.pixels[~corner], px[~corner].astype(np.float32))
    assert any("padding" in note for note in rad.notes)
    px[:] = 4095
    with pytest.raises(InputError, match=r"all_padding.dcm: every pixel is padding"):
        read_radiograph(write_dx(tmp_path / "all_padding.dcm", px, **tags))


@pytest.mark.parametrize(
    ("relationship", "sign", "stored"),
    [
        ("LIN", 1, lambda a: 60000 * np.exp(-a)),  # counts: fewer behind bone
        ("LOG", 1, lambda a: 1000 * (8 - a)),  # log counts
        ("LOG", -1, lambda a: 1000 * (a + 2)),  # log counts, negated
    ],
)
def test_raw_detector_images_are_read_as_attenuation(
    tmp_path: Path, relationship: str, sign: int, stored: Callable[[np.ndarray], np.ndarray]
) -> None:
    """A FOR PROCESSING image holds the detector's signal, not a picture made for display: its
    pixel intensity relationship says how to get the attenuation a DRR shows (the line integral,
    up to an offset and a scale), whatever its photometric interpretation."""
    attenuation = np.linspace(0.0, 4.0, 32 * 40).reshape(32, 40)  # line integrals (mu x length)
    px = np.round(stored(attenuation)).astype(np.uint16)
    tags = {
        "PresentationIntentType": "FOR PROCESSING",
        "PixelIntensityRelationship": relationship,
        "PixelIntensityRelationshipSign": sign,
    }
    rad = read_radiograph(write_dx(tmp_path / "raw.dcm", px, BitsStored=16, HighBit=15, **tags))
    # an increasing affine function of the attenuation, to the stored values' rounding
    slope, offset = np.polyfit(attenuation.ravel(), rad.pixels.ravel(), 1)
    assert slope > 0
    residual = rad.pixels - (slope * attenuation + offset)
    assert np.abs(residual).max() <= (2e-3 if relationship == "LIN" else 1.0) * slope
    assert any("FOR PROCESSING" in note for note in rad.notes)
    # one whose values fall as the intensity rises in proportion has no zero to take a log from
    path = write_dx(tmp_path / "lin_neg.dcm", px, **{**tags, "PixelIntensityRelationshipSign": -1})
    if relationship == "LIN":
        with pytest.raises(InputError, match=r"lin_neg.dcm: a raw detector image .* LIN Pixel"):
            read_radiograph(path)


@pytest.mark.parametrize(
    ("tags", "shown"),
    [
        (  # a rectangle: columns 6..35, rows 4..28 (1-based, inclusive)
            {"ShutterShape": "RECTANGULAR", "ShutterLeftVerticalEdge": 6, "ShutterRightVerticalEdge": 35,
             "ShutterUpperHorizontalEdge": 4, "ShutterLowerHorizontalEdge": 28},
            lambda r, c: (c >= 6) & (c <= 35) & (r >= 4) & (r <= 28),
        ),
        (
            {"ShutterShape": "CIRCULAR", "CenterOfCircularShutter": [16, 20], "RadiusOfCircularShutter": 12},
            lambda r, c: (r - 16) ** 2 + (c - 20) ** 2 <= 144,
        ),
        (  # a triangle with its right angle at the top left
            {"ShutterShape": "POLYGONAL", "VerticesOfThePolygonalShutter": [1, 1, 1, 40, 32, 1]},
            lambda r, c: (r - 1) * 39 + (c - 1) * 31 <= 31 * 39,
        ),
        (  # both: what lies inside the two
            {"ShutterShape": ["RECTANGULAR", "CIRCULAR"], "ShutterLeftVerticalEdge": 6,
             "ShutterRightVerticalEdge": 35, "ShutterUpperHorizontalEdge": 4,
             "ShutterLowerHorizontalEdge": 28, "CenterOfCircularShutter": [16, 20],
             "RadiusOfCircularShutter": 12},
            lambda r, c: (c >= 6) & (c <= 35) & (r >= 4) & (r <= 28) & ((r - 16) ** 2 + (c - 20) ** 2 <= 144),
        ),
    ],
)  # fmt: skip
def test_the_display_shutter_hides_what_lies_outside_the_field(
    tmp_path: Path, tags: dict[str, object], shown: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> None:
    """Behind a DX file's display shutter lies no anatomy (unexposed, or scatter): like padding,
    it gets the level of air, whatever its stored values."""
    px = (ramp(h=32, w=40) % 3000).astype(np.uint16) + 500
    rows, cols = np.mgrid[1:33, 1:41]
    inside = shown(rows, cols)
    px[~inside] = 4095  # bright, as unexposed areas of a processed film are
    rad = read_radiograph(write_dx(tmp_path / "shuttered.dcm", px, **tags))
    # (the pixels the outline crosses may fall either way)
    cross = np.ones((3, 3), np.uint8)
    far_in = cv2.erode(inside.astype(np.uint8), cross).astype(bool)
    far_out = ~cv2.dilate(inside.astype(np.uint8), cross).astype(bool)
    hidden = rad.pixels[far_out]  # one value, that of the darkest of the field: air, not bright
    assert np.ptp(hidden) == 0 and hidden[0] <= np.percentile(px[far_in], 2)
    np.testing.assert_array_equal(rad.pixels[far_in], px[far_in].astype(np.float32))
    assert any("display shutter" in note for note in rad.notes)


@pytest.mark.parametrize("stored", ["native", "jpeg"])
def test_grey_stored_as_ybr_is_grey(tmp_path: Path, stored: str) -> None:
    """Grey radiographs stored in a luminance-chrominance colour space (uncompressed YBR_FULL, or
    a JPEG baseline file's YBR_FULL_422, as secondary captures often are) read as grey, not as a
    colour photograph: the decoder gives RGB for them already."""
    grey = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    grey[10:20, 10:30] = 200
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if stored == "native":
        ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
        path = write_dx(tmp_path / "ybr.dcm", ybr, PhotometricInterpretation="YBR_FULL")
    else:
        jpeg = io.BytesIO()
        Image.fromarray(rgb).save(jpeg, format="JPEG", quality=95, subsampling=2)  # YCbCr, 4:2:0
        ds = pydicom.dcmread(write_dx(tmp_path / "ybr.dcm", rgb))
        ds.PixelData = encapsulate([jpeg.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.PhotometricInterpretation, ds.file_meta.TransferSyntaxUID = "YBR_FULL_422", JPEGBaseline8Bit
        ds.save_as(tmp_path / "ybr.dcm", enforce_file_format=True)
        path = tmp_path / "ybr.dcm"
    rad = read_radiograph(path)
    assert not rad.is_colour
    assert np.abs(rad.pixels - grey).max() <= (1 if stored == "native" else 8)  # (JPEG: ringing)


def _with_palette(path: Path, red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> Path:
    """Make the 8-bit file at ``path`` a PALETTE COLOR image with these 16-bit tables."""
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for i, table in enumerate((red, green, blue)):
        ds.add_new(0x00281101 + i, "US", [len(table), 0, 16])  # descriptor: entries, first index, bits
        ds.add_new(0x00281201 + i, "OW", table.astype("<u2").tobytes())
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_palette_colour_image_is_read_through_its_palette(tmp_path: Path) -> None:
    """The stored values of a PALETTE COLOR image are indices into its palette; a grey palette
    may run the other way (bone stored dark) or bend the scale: read as they were, the indices
    gave a film the wrong way round."""
    index = (ramp(h=32, w=40) % 256).astype(np.uint8)
    levels = np.arange(256)
    grey = np.round(65535 * ((255 - levels) / 255) ** 0.5)  # reversed and bent
    path = _with_palette(write_dx(tmp_path / "palette.dcm", index), grey, grey, grey)
    rad = read_radiograph(path)
    assert not rad.is_colour
    np.testing.assert_allclose(rad.pixels, grey[index].astype(np.float32))
    assert any("palette" in note for note in rad.notes)
    # a palette of real colours makes a colour image, not a radiograph
    hot = _with_palette(
        write_dx(tmp_path / "hot.dcm", index), levels * 257, levels * 128, 65535 - levels * 257
    )
    assert read_radiograph(hot).is_colour
    # a palette that cannot be applied is one line naming the file
    broken = pydicom.dcmread(path)
    del broken[0x00281202]  # no green table
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="PALETTE COLOR image whose palette cannot be applied"):
        read_radiograph(tmp_path / "broken.dcm")


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_compressed_dicom(tmp_path: Path, syntax: str) -> None:
    px = ramp()
    rad = read_radiograph(write_dx(tmp_path / "c.dcm", px, syntax=syntax, ImagerPixelSpacing=[0.1, 0.1]))
    np.testing.assert_array_equal(rad.pixels, px.astype(np.float32))


def test_jpeg_lossless_dicom(tmp_path: Path) -> None:
    px = ramp()
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.SetFileName(str(tmp_path / "jl.dcm"))
    writer.Execute(sitk.GetImageFromArray(px))
    assert pydicom.dcmread(tmp_path / "jl.dcm").file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(read_radiograph(tmp_path / "jl.dcm").pixels, px.astype(np.float32))


def test_truncated_compressed_dicom(tmp_path: Path) -> None:
    path = write_dx(tmp_path / "t.dcm", ramp(64, 64), syntax=JPEG2000Lossless)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 600])
    with pytest.raises(InputError, match=r"t\.dcm: (file is truncated|cannot decode pixel data)"):
        read_radiograph(path)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dx(tmp_path / "np.dcm", ramp())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(InputError, match="np.dcm: DICOM file has no pixel data"):
        read_radiograph(path)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("notes.dcm", b"this is text, not DICOM" * 20, "not a readable DICOM"),
        ("empty.png", b"", "empty file"),
        ("junk.png", b"\x89PNG but not really" * 10, "not a readable PNG"),
    ],
)
def test_not_an_image(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=f"{name}: {problem}"):
        read_radiograph(tmp_path / name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.dcm: no such file"):
        read_radiograph(tmp_path / "missing.dcm")


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint16), (".tif", np.uint8)],
)
def test_raster_bit_depths(tmp_path: Path, suffix: str, dtype: type) -> None:
    px = (ramp(bits=8 if dtype == np.uint8 else 16)).astype(dtype)
    cv2.imwrite(str(tmp_path / f"x{suffix}"), px)
    rad = read_radiograph(tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(rad.pixels, px.astype(np.float32))
    assert rad.bits_stored == (8 if dtype == np.uint8 else 16)
    assert rad.spacing_source == "unknown" and rad.pixel_spacing is None


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
@pytest.mark.parametrize("orientation", [2, 6, 8])  # mirrored; turned a quarter either way
def test_raster_orientation_tag_is_applied(tmp_path: Path, suffix: str, orientation: int) -> None:
    """A file tagged as mirrored or turned is read as a viewer shows it: read as stored, a mirrored
    radiograph would exchange the patient's left and right muscles."""
    px = np.zeros((48, 64), np.uint8)
    px[4:16, 6:22] = 250  # one bright block, near the stored image's top left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"tagged{suffix}"
    Image.fromarray(px).save(path, exif=exif.tobytes(), quality=95)  # (quality: for the JPEG)
    # what the tag means (EXIF 2.3, 0x0112): 2 mirrors left-right, 6 turns clockwise, 8 anticlockwise
    shown = {2: px[:, ::-1], 6: np.rot90(px, -1), 8: np.rot90(px, 1)}[orientation].astype(np.float32)
    pixels = read_radiograph(path).pixels
    assert pixels.shape == shown.shape
    assert np.abs(pixels - shown).max() <= (0 if suffix != ".jpg" else 8)  # (JPEG's ringing)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_refused(tmp_path: Path, bad: float) -> None:
    px = ramp(bits=8).astype(np.float32) / 255
    cv2.imwrite(str(tmp_path / "float.tif"), px)
    np.testing.assert_array_equal(read_radiograph(tmp_path / "float.tif").pixels, px)
    px[3, 5] = bad
    cv2.imwrite(str(tmp_path / "float.tif"), px)
    with pytest.raises(InputError, match=r"float.tif: 1 of 1280 pixels are not finite"):
        read_radiograph(tmp_path / "float.tif")


def test_colour_photograph_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, size=(40, 40, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), img)
    assert read_radiograph(tmp_path / "photo.png").is_colour


@pytest.mark.realdata
def test_real_radiographs_dicom_and_jpeg(real_xray_dir: Path) -> None:
    dicoms = sorted((real_xray_dir / "dicom").glob("*.dcm"))
    assert len(dicoms) == 10
    for path in dicoms:
        rad = read_radiograph(path)
        assert rad.shape == (331, 331)
        assert not rad.is_colour  # greyscale stored as RGB
        assert rad.pixels.std() > 10  # real content decoded from JPEG 2000
        assert rad.pixel_spacing is None  # the 1.0 placeholder is not trusted
        jpg = read_radiograph(real_xray_dir / "jpg" / path.with_suffix(".jpg").name)
        assert jpg.shape == (331, 331) and not jpg.is_colour


def test_huge_dicom_refused_from_its_header(tmp_path: Path) -> None:
    """A DICOM that says it holds 20000 × 20000 pixels is refused before its pixel data is read."""
    import tracemalloc

    path = write_dx(tmp_path / "huge.dcm", ramp(1024, 1024))  # 2 MB of pixel data on disk
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000
    ds.save_as(path)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="20000 x 20000 pixels is too large"):
            read_radiograph(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # the pixel data stayed on disk
