"""Plain radiographs with their pixel spacing: the :class:`Radiograph` container and its reader.

DICOM CR/DX (uncompressed, JPEG lossless, JPEG-LS, JPEG 2000) and PNG / JPEG / TIFF (8 or 16
bit) are read into one float32 array in which more attenuation is brighter (bone bright), as a
radiograph is displayed: MONOCHROME1 is inverted, greyscale stored as RGB is reduced to one
channel, a PALETTE COLOR image is read through its palette, and the modality and VOI LUTs are
applied.

Pixel spacing is read from the DICOM tags themselves (some libraries report a default 1.0 mm
where the true spacing is in ImagerPixelSpacing). The order of trust follows the DICOM standard:

1. ``PixelSpacing`` that differs from ``ImagerPixelSpacing`` (or comes with a
   ``PixelSpacingCalibrationType``) is already calibrated to the patient: used as it is.
2. ``ImagerPixelSpacing`` divided by ``EstimatedRadiographicMagnificationFactor``, unless that is
   below ``MIN_HIP_MAGNIFICATION`` (a placeholder such as 1.0, or the table's magnification).
3. ``ImagerPixelSpacing`` alone: the spacing at the detector, not at the patient; the file's
   ``DistanceSourceToDetector`` is kept for :mod:`xraymuscle.prepare`, which brings it to the hip.
   ``DistanceSourceToPatient`` is not used: the standard measures it to the table or support
   beside the patient, and systems write the skin's distance there too; neither is the hip's.
4. ``NominalScannedPixelSpacing`` (a digitised film): the spacing on the film, at the detector.
5. ``PixelSpacing`` alone, unless it is exactly 1.0 × 1.0, which converters write as a
   placeholder: then the spacing is unknown. Alone, the standard leaves open whether it was
   corrected for magnification: in a CR file, which defined it at the front of the plate, it is
   taken as at the detector; in others as at the patient, with a note.

A spacing given by the user overrides all of these (source ``user``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from xraymuscle.errors import InputError
from xraymuscle.typing import PathLikeStr

SpacingPlane = Literal["patient", "detector", "unknown"]
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# A hip lies at least some 120 mm above the detector (the table's gap, then half the pelvis), so
# even at 1.5 m from the source its magnification is about 1.09: a file's smaller one is not the hip's.
MIN_HIP_MAGNIFICATION = 1.08
MAX_PIXELS = 12000 * 12000  # refuse decoding beyond this: memory stays bounded


@dataclass
class Radiograph:
    """A 2D radiograph with the geometry needed to turn pixels into millimetres.

    Parameters
    ----------
    pixels
        float32 array (H, W); larger values mean more attenuation (bone bright).
    pixel_spacing
        ``(row, column)`` spacing in mm, or ``None`` when unknown.
    spacing_source
        Where the spacing came from: ``dicom:PixelSpacing``, ``dicom:ImagerPixelSpacing``,
        ``dicom:ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor``,
        ``dicom:NominalScannedPixelSpacing``, ``user`` or ``unknown``.
    spacing_plane
        ``patient`` when the spacing is corrected for magnification (or calibrated),
        ``detector`` when it is the spacing on the detector, ``unknown`` without a spacing.
    bits_stored
        Bit depth of the stored pixels (8 or 16 for raster files).
    is_colour
        True when the file held real colour (not greyscale stored as RGB): not a radiograph.
    metadata
        Study metadata read from DICOM (age, sex, dates, view, ...); empty for raster files.
    notes
        Human-readable remarks made while reading (ignored placeholder spacing, ...).
    spacing_problem
        Without a spacing, why: ``none in the file``, or the file's tags that could not be used.
    source_to_detector_mm
        The file's source-to-detector distance (``DistanceSourceToDetector``), when it gives a
        usable one: with it, a spacing at the detector is brought to the hip (see
        :mod:`xraymuscle.prepare`).
    """

    pixels: np.ndarray
    pixel_spacing: tuple[float, float] | None
    spacing_source: str
    spacing_plane: SpacingPlane
    bits_stored: int
    path: str | None = None
    is_colour: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    spacing_problem: str = ""
    source_to_detector_mm: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]

    @property
    def pixel_area_mm2(self) -> float | None:
        """Area of one pixel in mm², or ``None`` when the spacing is unknown."""
        if self.pixel_spacing is None:
            return None
        return self.pixel_spacing[0] * self.pixel_spacing[1]


def _positive_pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, int | float):  # one value where two belong (square pixels)
        value = [value]
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
        return None
    return vals[0], vals[1]


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _shown(value: Any) -> str:
    """A tag's value as a short text: ``-1 x -1``."""
    try:
        return " x ".join(str(v) for v in value) if not isinstance(value, str) else repr(value)
    except TypeError:
        return repr(value)


def dicom_spacing(
    ds: pydicom.Dataset,
) -> tuple[tuple[float, float] | None, str, SpacingPlane, list[str]]:
    """Pixel spacing of a projection radiograph from its DICOM tags (see the module notes).

    Returns
    -------
    spacing, source, plane, notes
    """
    notes: list[str] = []
    ps = _positive_pair(ds.get("PixelSpacing"))
    ips = _positive_pair(ds.get("ImagerPixelSpacing"))
    scanned = _positive_pair(ds.get("NominalScannedPixelSpacing"))
    for tag, pair in (
        ("PixelSpacing", ps),
        ("ImagerPixelSpacing", ips),
        ("NominalScannedPixelSpacing", scanned),
    ):
        if pair is None and ds.get(tag) is not None:
            notes.append(f"{tag} {_shown(ds.get(tag))} is not a positive spacing; ignored")
    calibrated = "PixelSpacingCalibrationType" in ds
    at_receptor = ips if ips is not None else scanned  # at the detector, or on the film digitised
    if (
        ps is not None
        and at_receptor is not None
        and (calibrated or not np.allclose(ps, at_receptor, rtol=1e-4))
    ):
        return ps, "dicom:PixelSpacing", "patient", notes
    if ips is None and scanned is not None:
        return scanned, "dicom:NominalScannedPixelSpacing", "detector", notes
    if ips is not None:
        emf = _positive(ds.get("EstimatedRadiographicMagnificationFactor"))
        if emf is not None and emf < MIN_HIP_MAGNIFICATION:
            notes.append(
                f"EstimatedRadiographicMagnificationFactor {emf:g} not used: too small for a hip, which "
                "lies well above the table (a placeholder, or the magnification at the table)"
            )
        elif emf is not None:
            spacing = (ips[0] / emf, ips[1] / emf)
            return (
                spacing,
                "dicom:ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
                "patient",
                notes,
            )
        if _positive(ds.get("DistanceSourceToPatient")) is not None:
            notes.append(
                "DistanceSourceToPatient not used: it measures to the table or the skin, not to the hip"
            )
        return ips, "dicom:ImagerPixelSpacing", "detector", notes
    if ps is not None:
        if ps == (1.0, 1.0) and not calibrated:
            notes.append("PixelSpacing 1.0 x 1.0 without ImagerPixelSpacing ignored as a placeholder")
            return None, "unknown", "unknown", notes
        if calibrated:
            return ps, "dicom:PixelSpacing", "patient", notes
        # Alone, it cannot say whether it was corrected for magnification. Computed radiography
        # defined it at the front of the plate, and such files carry it so: at the detector.
        if str(ds.get("Modality", "")).upper() == "CR":
            notes.append("PixelSpacing of a CR file without ImagerPixelSpacing taken as at the plate")
            return ps, "dicom:PixelSpacing", "detector", notes
        notes.append(
            "PixelSpacing without ImagerPixelSpacing or a calibration type taken as at the patient "
            "(were it the detector's, lengths would read too long by the magnification)"
        )
        return ps, "dicom:PixelSpacing", "patient", notes
    return None, "unknown", "unknown", notes


def _dicom_metadata(ds: pydicom.Dataset) -> dict[str, Any]:
    def get(tag: str) -> Any:
        v = ds.get(tag)
        return None if v in (None, "") else str(v)

    return {
        "modality": get("Modality"),
        "patient_id": get("PatientID"),
        "patient_age": get("PatientAge"),
        "patient_sex": get("PatientSex"),
        "study_date": get("StudyDate"),
        "view_position": get("ViewPosition"),
        "laterality": get("ImageLaterality") or get("Laterality"),
        "patient_orientation": "\\".join(patient_orientation(ds) or ()) or None,
        "manufacturer": get("Manufacturer"),
        "body_part": get("BodyPartExamined"),
    }


def _padding_mask(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """The pixels whose stored value is the file's Pixel Padding Value (or lies between it and the
    Pixel Padding Range Limit): not part of the image, such as the unexposed area around a
    shuttered field. ``None`` when the file names no padding or no pixel has it."""
    value = ds.get("PixelPaddingValue")
    if not isinstance(value, int | np.integer):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    low, high = (value, value) if not isinstance(limit, int | np.integer) else sorted((value, limit))
    mask = (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _as_list(value: Any) -> list[Any]:
    """A data element's values as a list (one value, several, or none)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue) else [value]


def _numbers(ds: pydicom.Dataset, keyword: str) -> list[float] | None:
    """A numeric attribute's values as floats; ``None`` when absent or not finite numbers."""
    try:
        values = [float(v) for v in _as_list(ds.get(keyword))]
    except (TypeError, ValueError):
        return None
    return values if values and all(math.isfinite(v) for v in values) else None


def _shutter_mask(shape: tuple[int, int], ds: pydicom.Dataset) -> np.ndarray | None:
    """The pixels the file's display shutter hides (outside its rectangle, circle or polygon,
    where several are given outside any of them): outside the exposed field. ``None`` when the
    file has no usable shutter or it hides nothing. Shutter coordinates are 1-based (row, column)."""
    shapes = {str(v).strip().upper() for v in _as_list(ds.get("ShutterShape"))}
    if not shapes & {"RECTANGULAR", "CIRCULAR", "POLYGONAL"}:
        return None
    rows, cols = np.ogrid[1 : shape[0] + 1, 1 : shape[1] + 1]
    shown = np.ones(shape, bool)
    used = False
    if "RECTANGULAR" in shapes:
        edges = [_numbers(ds, k) for k in (
            "ShutterLeftVerticalEdge", "ShutterRightVerticalEdge",
            "ShutterUpperHorizontalEdge", "ShutterLowerHorizontalEdge",
        )]  # fmt: skip
        if all(e is not None and len(e) == 1 for e in edges):
            left, right, upper, lower = (e[0] for e in edges if e is not None)
            shown &= (cols >= left) & (cols <= right) & (rows >= upper) & (rows <= lower)
            used = True
    if "CIRCULAR" in shapes:
        centre, radius = _numbers(ds, "CenterOfCircularShutter"), _numbers(ds, "RadiusOfCircularShutter")
        if centre is not None and len(centre) == 2 and radius is not None and len(radius) == 1:
            shown &= (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius[0] ** 2
            used = True
    if "POLYGONAL" in shapes:
        vertices = _numbers(ds, "VerticesOfThePolygonalShutter")
        if vertices is not None and len(vertices) >= 6 and len(vertices) % 2 == 0:
            corners = np.clip(np.array(vertices).reshape(-1, 2)[:, ::-1] - 1, -1e6, 1e6)  # (x, y)
            points = np.round(corners).astype(np.int32)
            polygon = np.zeros(shape, np.uint8)
            cv2.fillPoly(polygon, [points], 1)
            shown &= polygon.astype(bool)
            used = True
    if not used or shown.all():
        return None
    return ~shown


_DIRECTIONS = frozenset("LRAPHF")


def patient_orientation(ds: pydicom.Dataset) -> tuple[str, str] | None:
    """The file's Patient Orientation: the patient directions along a row (left to right) and
    down a column, as ``("L", "F")`` for an AP radiograph displayed as radiographs are read;
    ``None`` when absent or not two codes of the letters L, R, A, P, H, F."""
    codes = [str(v).strip().upper() for v in _as_list(ds.get("PatientOrientation"))]
    if len(codes) != 2 or not all(c and set(c) <= _DIRECTIONS for c in codes):
        return None
    return codes[0], codes[1]


def _to_reading_orientation(
    pixels: np.ndarray, spacing: tuple[float, float] | None, orientation: tuple[str, str] | None
) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
    """Turn and mirror a frontal image so that its columns run to the patient's left and its rows
    to the feet, as the model's training images do; return it, its ``(row, column)`` spacing and
    a note of what was done (``None``: nothing). A lateral image (rows or columns running front to
    back) and one without a usable orientation are left as stored."""
    if orientation is None:
        return pixels, spacing, None
    across, down = orientation[0][0], orientation[1][0]
    if not ({across, down} & {"L", "R"} and {across, down} & {"H", "F"}):  # lateral, or nonsense
        return pixels, spacing, None
    done = []
    if across in "HF":  # stored turned a quarter: rows run along the body
        pixels, across, down = pixels.T, down, across
        spacing = None if spacing is None else (spacing[1], spacing[0])
        done.append("transposed")
    if across == "R":
        pixels = pixels[:, ::-1]
        done.append("mirrored left-right")
    if down == "H":
        pixels = pixels[::-1, :]
        done.append("turned upside down")
    if not done:
        return pixels, spacing, None
    shown = "\\".join(orientation)
    note = f"{' and '.join(done)} to the reading orientation (PatientOrientation {shown})"
    return np.ascontiguousarray(pixels), spacing, note


def is_lateral(orientation: tuple[str, ...]) -> bool:
    """Whether a Patient Orientation (as :func:`patient_orientation` gives it) puts the
    front-to-back axis in the image plane, as a lateral view does."""
    return any(code[:1] in ("A", "P") for code in orientation)


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _grey_from_colour(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Reduce (H, W, C) to (H, W); report whether the channels really differed (colour)."""
    rgb = arr[..., :3]
    spread = np.ptp(rgb.astype(np.int32), axis=-1) if rgb.shape[-1] > 1 else np.zeros(1)
    # JPEG chroma noise makes grey-as-RGB differ by a few levels; real colour differs a lot.
    full = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    is_colour = float(np.mean(spread)) > 0.02 * full
    grey = rgb.astype(np.float32).mean(axis=-1)
    return grey, is_colour


def _monochrome_pixels(stored: np.ndarray, ds: pydicom.Dataset, path: Path, notes: list[str]) -> np.ndarray:
    """A greyscale DICOM image's pixels, bone bright: the modality LUT, then for an image processed
    for presentation its display window and photometric interpretation, for a raw detector image
    (``FOR PROCESSING``) the attenuation its pixel intensity relationship gives; padding pixels
    get the level of air."""
    padding = _padding_mask(stored, ds)
    if padding is not None and padding.all():
        raise InputError("every pixel is padding (PixelPaddingValue): no image", path)
    shutter = _shutter_mask(stored.shape[:2], ds)
    if shutter is not None and shutter.all():
        raise InputError("the display shutter hides every pixel: no image", path)
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING":
        pixels = _attenuation_from_raw(values, ds, path, padding)
        relationship = ds.get("PixelIntensityRelationship")
        notes.append(f"a raw detector image (FOR PROCESSING, {relationship}) read as attenuation")
    else:
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            try:
                values = apply_voi_lut(values, ds, prefer_lut=True)
            except (ValueError, TypeError, IndexError) as exc:  # a window of width 0, a broken table
                notes.append(f"display window not applied ({exc})")
        pixels = np.asarray(values, dtype=np.float32)
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
    outside = _either(padding, shutter)
    if outside is not None:
        if outside.all():
            raise InputError("padding and the display shutter leave no pixel: no image", path)
        pixels[outside] = np.percentile(pixels[~outside], 0.5)
    if padding is not None:
        notes.append(f"{padding.mean():.0%} of the pixels are padding (PixelPaddingValue), set to air")
    if shutter is not None:
        notes.append(f"{shutter.mean():.0%} of the pixels lie behind the display shutter, set to air")
    return pixels


def _either(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return a | b


def _attenuation_from_raw(
    values: np.ndarray, ds: pydicom.Dataset, path: Path, padding: np.ndarray | None
) -> np.ndarray:
    """The attenuation (up to an offset and a scale, which the normalisation removes) of a raw
    detector image, as a DRR shows it: ``-log`` of the beam's intensity. The Pixel Intensity
    Relationship says how values follow the intensity (``LIN``: in proportion; ``LOG``: as its
    logarithm), and its sign which way (+1: higher values, more intensity)."""
    relationship = str(ds.get("PixelIntensityRelationship", "")).upper()
    sign = ds.get("PixelIntensityRelationshipSign")
    sign = 1 if sign is None else int(sign)
    if sign not in (1, -1):
        raise InputError(f"PixelIntensityRelationshipSign must be +1 or -1, not {sign}", path)
    inside = values if padding is None else values[~padding]
    if relationship == "LOG":
        return np.asarray(-sign * values, dtype=np.float32)
    if relationship == "LIN" and sign == 1:
        positive = inside[inside > 0]
        if positive.size == 0:
            raise InputError("a raw detector image (FOR PROCESSING, LIN) with no positive pixel value", path)
        return np.asarray(-np.log(np.maximum(values, positive.min())), dtype=np.float32)
    shown = f"{relationship or 'no'} PixelIntensityRelationship, sign {sign:+d}"
    raise InputError(
        f"a raw detector image (FOR PROCESSING) with {shown}: cannot be read as attenuation", path
    )


def _read_dicom(path: Path) -> Radiograph:
    # pydicom reports truncation as a warning, not an error: catch it and refuse the file.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds, arr = _decode_dicom(path)
            failure = None
        except InputError as exc:
            failure = exc
    for w in caught:
        text = str(w.message)
        if "End of file" in text or "truncat" in text.lower():
            raise InputError(f"file is truncated ({text.split(' in file ')[0]})", path)
    if failure is not None:
        raise failure
    notes = [str(w.message) for w in caught]
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    if frames > 1:
        raise InputError(f"multi-frame DICOM ({frames} frames) is not a plain radiograph", path)
    is_colour = False
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        # the stored values are indices into a palette: its colours are the picture (a grey
        # palette may run the other way, or bend the scale, so the indices alone would mislead)
        try:
            arr = apply_color_lut(arr, ds)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise InputError(f"PALETTE COLOR image whose palette cannot be applied ({exc})", path) from None
        notes.append("PALETTE COLOR: read through its palette")
    if spp > 1 or arr.ndim == 3:
        # (the decoder gives RGB for YBR data already: converting again made grey look coloured)
        grey, is_colour = _grey_from_colour(arr)
        pixels = grey
        bits = int(ds.get("BitsStored", 8))
    else:
        bits = int(ds.get("BitsStored", 16))
        pixels = _monochrome_pixels(arr, ds, path, notes)
    spacing, source, plane, spacing_notes = dicom_spacing(ds)
    notes += spacing_notes
    # a file stored mirrored or turned says so here; read as stored, the sides would be exchanged
    pixels, spacing, turned = _to_reading_orientation(pixels, spacing, patient_orientation(ds))
    if turned:
        notes.append(turned)
    problem = "" if spacing is not None else "; ".join(spacing_notes) or "none in the file"
    sid = _positive(ds.get("DistanceSourceToDetector"))
    return Radiograph(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        pixel_spacing=spacing,
        spacing_source=source,
        spacing_plane=plane,
        bits_stored=bits,
        path=str(path),
        is_colour=is_colour,
        metadata=_dicom_metadata(ds),
        notes=notes,
        spacing_problem=problem,
        source_to_detector_mm=sid,
    )


def _decode_dicom(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    try:
        # large elements (the pixel data) are read only when used: a huge image is refused from
        # its header before its pixels come into memory
        ds = pydicom.dcmread(str(path), defer_size="1 MB")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a readable DICOM file ({exc})", path) from None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise InputError(f"image of {cols} x {rows} pixels is too large (limit {MAX_PIXELS} pixels)", path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError("DICOM file has no pixel data", path)
    try:
        return ds, ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        raise InputError(f"cannot decode pixel data ({type(exc).__name__}: {exc})", path) from None


def _raster_header(path: Path) -> tuple[tuple[int, int], int] | None:
    """Width and height, and the number of pages (frames), from the file's header, without
    decoding it (``None``: not known)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    return im.size, int(getattr(im, "n_frames", 1))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (OSError, ValueError, SyntaxError):
        return None


def _read_raster(path: Path) -> Radiograph:
    header = _raster_header(path)  # refuse huge images before decoding them: memory stays bounded
    if header is not None:
        (width, height), pages = header
        if width * height > MAX_PIXELS:
            raise InputError(
                f"image of {width} x {height} pixels is too large (limit {MAX_PIXELS} pixels)", path
            )
        if pages > 1:  # a stack (a series, or slices), of which the decoder would read only the first
            raise InputError(f"multi-page image ({pages} pages) is not a plain radiograph", path)
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise InputError("empty file", path)
    # Any depth and any colour, but not "unchanged": that flag would also ignore the EXIF
    # orientation, and a file tagged as mirrored would be read with the patient's sides exchanged.
    arr = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if arr is None:
        raise InputError("not a readable PNG, JPEG or TIFF image", path)
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise InputError(f"image of {arr.shape[1]} x {arr.shape[0]} pixels is too large", path)
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        raise InputError(f"unsupported pixel type {arr.dtype}", path)
    bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(np.dtype(arr.dtype), 32)
    is_colour = False
    if arr.ndim == 3:  # (a fourth, alpha channel is ignored)
        arr, is_colour = _grey_from_colour(arr)
    return Radiograph(
        pixels=np.ascontiguousarray(arr, dtype=np.float32),
        pixel_spacing=None,
        spacing_source="unknown",
        spacing_plane="unknown",
        bits_stored=bits,
        path=str(path),
        is_colour=is_colour,
        spacing_problem="none in the file",
    )


def read_radiograph(
    path: PathLikeStr, *, pixel_spacing: float | tuple[float, float] | None = None
) -> Radiograph:
    """Read a radiograph (DICOM CR/DX, PNG, JPEG, TIFF) with its pixel spacing.

    Parameters
    ----------
    path
        The image file. DICOM is recognised by content (the ``DICM`` preamble) or a ``.dcm``
        suffix; anything else is decoded as a raster image.
    pixel_spacing
        Spacing in mm at the patient (isotropic, or ``(row, column)``); overrides the file's.

    Raises
    ------
    InputError
        Missing or empty file, not an image, no pixel data, undecodable (truncated) data,
        pixels that are not finite numbers, an invalid ``pixel_spacing``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    if path.is_dir():
        raise InputError("a folder, not a file", path)
    if not path.is_file():
        raise InputError("not a regular file (a pipe, a device or a socket)", path)
    try:
        if path.stat().st_size == 0:
            raise InputError("empty file", path)
        is_dicom = _is_dicom_file(path) or path.suffix.lower() in (".dcm", ".dicom")
    except PermissionError:
        raise InputError("permission denied", path) from None
    radiograph = _read_dicom(path) if is_dicom else _read_raster(path)
    if radiograph.pixels.ndim != 2 or min(radiograph.pixels.shape) < 8:
        raise InputError(f"not a 2D image of useful size (shape {radiograph.pixels.shape})", path)
    bad = int(np.count_nonzero(~np.isfinite(radiograph.pixels)))
    if bad:
        # float TIFF or DICOM float pixel data may hold NaN or infinity: no intensity to read
        raise InputError(f"{bad} of {radiograph.pixels.size} pixels are not finite (NaN or infinity)", path)
    if pixel_spacing is not None:
        pair = _positive_pair([pixel_spacing] if np.isscalar(pixel_spacing) else pixel_spacing)
        if pair is None:
            raise InputError(f"pixel spacing must be positive, not {pixel_spacing}")
        radiograph.pixel_spacing = pair
        radiograph.spacing_source = "user"
        radiograph.spacing_plane = "patient"
        radiograph.spacing_problem = ""
    return radiograph
