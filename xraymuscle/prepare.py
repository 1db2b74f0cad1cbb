"""Bringing one radiograph to a model's grid: read, check, resample, normalise.

Needs no PyTorch, so that decoding can run in light worker processes. A radiograph that cannot be
read gets status ``error``; one that is read but cannot be measured (not a plain AP radiograph,
no pixel spacing, too small a field) gets ``rejected``; each with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xraymuscle.calibration_marker import MAGNIFICATION_RANGE, Marker, marker_in, marker_scale, without_marker
from xraymuscle.collimation import fill_collimation
from xraymuscle.errors import InputError
from xraymuscle.model_grid import fit_to_grid, normalise, resample
from xraymuscle.radiograph import Radiograph, is_lateral, read_radiograph
from xraymuscle.spacing_error import PROBE_FACTORS

if TYPE_CHECKING:
    from xraymuscle.model import LoadedModel

MIN_SIDE_PX = 64
MIN_FIELD_MM = 150.0  # a hip radiograph shows at least this much of the pelvis
MAX_FIELD_MM = 2500.0  # taller than any body: a spacing that gives more is wrong
MIN_SOURCE_TO_HIP_MM = 300.0  # a shorter source-to-detector distance is not a hip radiograph's
MARKER_MM_RANGE = (5.0, 100.0)  # calibration markers: balls of 25 mm, most often
HIP_HEIGHT_RANGE_MM = (50.0, 400.0)  # the hip's height above the detector a supine film can have
CROSS_SECTIONAL = ("CT", "MR", "PT", "NM", "US")
# Body Part Examined values (DICOM defined terms) of radiographs that cannot show the hip; values
# near it (PELVIS, HIP, ABDOMEN, LSPINE, THIGH, FEMUR, LEG, EXTREMITY, ...) and none are left to the
# out-of-distribution score, as archives often carry a vague or wrong one.
ELSEWHERE = frozenset(
    "BRAIN CHEST CLAVICLE CSPINE ELBOW FINGER FOOT FOREARM HAND HEAD HEART HUMERUS JAW KNEE "
    "NECK RIB SCAPULA SHOULDER SKULL TSPINE TMJ TOE WRIST BREAST ANKLE HEEL".split()
)


@dataclass
class Prepared:
    """An image read and brought to the model's grid, or the reason it could not be."""

    path: str
    status: str = "ok"
    reason: str = ""
    spacing_mm: float | None = None  # at the isocentre plane; rows' and columns' mean
    spacing_source: str = ""
    image: np.ndarray | None = None  # (S, S) normalised
    notes: list[str] = field(default_factory=list)
    # (2, S, S): the image as if its spacing were PROBE_FACTORS times its own (see spacing_error)
    probes: np.ndarray | None = None
    spacing_sd_percent: float | None = None  # the spacing's relative sd that the volumes' sds carry


@dataclass(frozen=True)
class GridTarget:
    """What bringing an image to a model's grid needs: size, spacing, training magnification.

    Small and picklable, so decoding can run in worker processes without the network.
    """

    size: int
    spacing_mm: float
    magnification: float
    magnification_given: bool = False  # by the user (``--magnification``), not the training's
    hip_to_detector_mm: float | None = None  # the training geometry's (sid - sod), or the user's
    marker_mm: float | None = None  # a calibration marker's diameter (``--marker-mm``): spacing from it
    hip_height_given: bool = False  # ``hip_to_detector_mm`` is the user's (``--hip-height-mm``)
    training_sid_mm: float | None = None  # the training geometry's source-to-detector distance
    spacing_probes: bool = False  # also the images at other spacings that a spacing sd needs

    @classmethod
    def of(
        cls,
        model: LoadedModel,
        *,
        magnification: float | None = None,
        marker_mm: float | None = None,
        hip_height_mm: float | None = None,
        spacing_probes: bool = False,
    ) -> GridTarget:
        """The model's grid; detector spacings are divided by ``magnification`` when given, by
        one from the file's source-to-detector distance and the hip's height above the detector
        (``hip_height_mm``, else the training geometry's) otherwise (see
        :meth:`magnification_for`); with ``marker_mm``, every spacing comes from the calibration
        marker of that diameter in the image instead. ``spacing_probes`` also makes each image's
        :attr:`Prepared.probes`."""
        geometry = (model.meta.get("training") or {}).get("geometry") or {}
        sid, sod = geometry.get("sid"), geometry.get("sod")
        trained, gap = (float(sid) / float(sod), float(sid) - float(sod)) if sid and sod else (1.0, None)
        return cls(
            size=model.input_size,
            spacing_mm=model.pixel_spacing_mm,
            magnification=magnification or trained,
            magnification_given=magnification is not None,
            hip_to_detector_mm=hip_height_mm if hip_height_mm is not None else gap,
            marker_mm=marker_mm,
            hip_height_given=hip_height_mm is not None,
            training_sid_mm=float(sid) if sid else None,
            spacing_probes=spacing_probes,
        )

    def magnification_for(self, source_to_detector_mm: float | None) -> tuple[float, str]:
        """The magnification at the hip for a radiograph, and how it was found.

        A given one wins. Otherwise, with the file's source-to-detector distance, the hip is
        taken as far above the detector as the user gave (``--hip-height-mm``) or as in the
        training geometry (a supine patient's hips lie at much the same height above the
        detector whatever the tube's distance): the magnification is ``sid / (sid - gap)``.
        Without it, the training geometry's; or, with a hip height given, that height at the
        training geometry's distance.
        """
        if self.magnification_given:
            return self.magnification, f"the given magnification {self.magnification:.3f}"
        gap, sid = self.hip_to_detector_mm, source_to_detector_mm
        height = "as given" if self.hip_height_given else "as in training"
        if gap is not None and sid is not None and sid - gap >= MIN_SOURCE_TO_HIP_MM:
            return sid / (sid - gap), (
                f"the magnification {sid / (sid - gap):.3f} of the file's source-to-detector distance "
                f"{sid:.0f} mm, the hip {gap:.0f} mm above the detector {height}"
            )
        trained = self.training_sid_mm
        if self.hip_height_given and gap is not None and trained and trained - gap >= MIN_SOURCE_TO_HIP_MM:
            return trained / (trained - gap), (
                f"the magnification {trained / (trained - gap):.3f} of the hip {gap:.0f} mm above the "
                f"detector as given, at the training's source-to-detector distance {trained:.0f} mm "
                "(the file gives none)"
            )
        return self.magnification, f"the training magnification {self.magnification:.3f}"


def _mm(length: float) -> str:
    """A length in whole mm, or in three digits and an exponent when it has more than six."""
    return f"{length:.0f}" if length < 1e6 else f"{length:.3g}"


def check_magnification(magnification: float | None) -> None:
    """Refuse a ``--magnification`` no radiograph has (an object lies between source and detector)."""
    if magnification is not None and not (math.isfinite(magnification) and 1.0 <= magnification <= 3.0):
        raise InputError(f"--magnification must be between 1 and 3, not {magnification}")


def _check_option(
    option: str,
    value: float | None,
    bounds: tuple[float, float],
    others: Mapping[str, float | None],
    does: str,
) -> None:
    """Refuse ``option`` outside ``bounds`` (mm), or given beside any of ``others`` that is set."""
    if value is None:
        return
    low, high = bounds
    if not (math.isfinite(value) and low <= value <= high):
        raise InputError(f"{option} must be between {low:g} and {high:g} mm, not {value}")
    if any(other is not None for other in others.values()):
        raise InputError(f"{option} {does}: leave out {' and '.join(others)}")


def check_hip_height(
    hip_height_mm: float | None, magnification: float | None, marker_mm: float | None
) -> None:
    """Refuse a ``--hip-height-mm`` no film has, or one given beside ``--magnification`` or
    ``--marker-mm``, which set the magnification themselves."""
    others = {"--magnification": magnification, "--marker-mm": marker_mm}
    _check_option("--hip-height-mm", hip_height_mm, HIP_HEIGHT_RANGE_MM, others, "sets the magnification")


def check_spacing_options(
    pixel_spacing: float | None,
    magnification: float | None,
    hip_height_mm: float | None,
    marker_mm: float | None,
) -> None:
    """Refuse spacing options (``--pixel-spacing``, ``--magnification``, ``--hip-height-mm``,
    ``--marker-mm``) that are out of range or that cannot be given together."""
    if pixel_spacing is not None and not (math.isfinite(pixel_spacing) and pixel_spacing > 0):
        raise InputError(f"--pixel-spacing must be a positive number of mm, not {pixel_spacing}")
    check_magnification(magnification)
    check_marker(marker_mm, pixel_spacing, magnification)
    check_hip_height(hip_height_mm, magnification, marker_mm)


def check_marker(marker_mm: float | None, pixel_spacing: float | None, magnification: float | None) -> None:
    """Refuse a ``--marker-mm`` of no calibration marker's size, or one given beside another way
    to the spacing (``--pixel-spacing``, ``--magnification``), which it would overrule."""
    others = {"--pixel-spacing": pixel_spacing, "--magnification": magnification}
    _check_option("--marker-mm", marker_mm, MARKER_MM_RANGE, others, "gives the spacing from the image")


def prepare(
    path: str | Path, model: LoadedModel | GridTarget, *, pixel_spacing: float | None = None
) -> Prepared:
    """Read one radiograph and map it onto the model's grid; problems become a status and reason."""
    prepared, _ = read_and_prepare(path, model, pixel_spacing=pixel_spacing)
    return prepared


def read_and_prepare(
    path: str | Path, model: LoadedModel | GridTarget, *, pixel_spacing: float | None = None
) -> tuple[Prepared, Radiograph | None]:
    """:func:`prepare`, also returning the radiograph read (``None`` when it could not be)."""
    target = model if isinstance(model, GridTarget) else GridTarget.of(model)
    prepared = Prepared(str(path))
    try:
        radiograph = read_radiograph(path, pixel_spacing=pixel_spacing)
    except InputError as exc:
        prepared.status, prepared.reason = "error", exc.problem
        return prepared, None
    except Exception as exc:  # a reader's failure on one odd file costs its row, not the run
        prepared.status, prepared.reason = "error", f"cannot be read ({type(exc).__name__}: {exc})"
        return prepared, None
    try:
        return _to_grid(radiograph, target, prepared), radiograph
    except Exception as exc:
        prepared.image = None
        prepared.status = "error"
        prepared.reason = f"cannot be brought to the model's grid ({type(exc).__name__}: {exc})"
        return prepared, radiograph


def _to_grid(radiograph: Radiograph, target: GridTarget, prepared: Prepared) -> Prepared:
    prepared.spacing_source = radiograph.spacing_source
    prepared.notes = list(radiograph.notes)
    h, w = radiograph.shape
    modality = (radiograph.metadata.get("modality") or "").upper()
    if modality in CROSS_SECTIONAL:
        return _reject(prepared, f"a {modality} image (modality {modality}), not a radiograph")
    part = (radiograph.metadata.get("body_part") or "").strip().upper()
    if part in ELSEWHERE:
        return _reject(
            prepared, f"a radiograph of the {part.lower()} (BodyPartExamined {part}), not of the hip"
        )
    side = (radiograph.metadata.get("laterality") or "").strip().upper()
    if side in ("L", "R"):
        return _reject(
            prepared,
            f"a radiograph of one side (laterality {side}); the model reads AP radiographs of both hips",
        )
    view = (radiograph.metadata.get("view_position") or "").upper()
    if view in ("LAT", "LL", "RL", "LATERAL"):
        return _reject(prepared, f"a lateral view ({view}); the model reads AP radiographs")
    orientation = radiograph.metadata.get("patient_orientation") or ""
    if orientation and is_lateral(tuple(orientation.split("\\"))):
        return _reject(
            prepared, f"a lateral view (PatientOrientation {orientation}); the model reads AP radiographs"
        )
    if radiograph.is_colour:
        return _reject(prepared, "a colour image, not a radiograph")
    if min(h, w) < MIN_SIDE_PX:
        return _reject(prepared, f"image of {w} x {h} pixels is too small for a hip radiograph")
    if max(h, w) > 8 * min(h, w):
        return _reject(prepared, f"image of {w} x {h} pixels is too narrow for a hip radiograph")
    pixels = radiograph.pixels
    if target.marker_mm is not None:
        marker = marker_in(radiograph, target.marker_mm)
        if marker is None:
            return _reject(
                prepared,
                f"no calibration marker of {target.marker_mm:g} mm found (a bright round disc that "
                "the file's spacing allows); leave out --marker-mm to use the file's spacing",
            )
        row_mm, column_mm = _marker_spacing(radiograph, marker, target.marker_mm, prepared)
        pixels = without_marker(pixels, marker)
    elif radiograph.pixel_spacing is None:
        problem = radiograph.spacing_problem or "none in the file"
        return _reject(prepared, f"pixel spacing unknown ({problem}); give --pixel-spacing MM")
    else:
        row_mm, column_mm = (float(v) for v in radiograph.pixel_spacing)
        if radiograph.spacing_plane == "detector":
            magnification, how = target.magnification_for(radiograph.source_to_detector_mm)
            row_mm, column_mm = row_mm / magnification, column_mm / magnification
            prepared.notes.append(f"detector spacing divided by {how}")
    prepared.spacing_mm = (row_mm + column_mm) / 2
    field_mm = min(h * row_mm, w * column_mm)
    if field_mm < MIN_FIELD_MM:
        return _reject(prepared, f"field of view {_mm(field_mm)} mm is too small for a hip radiograph")
    if max(h * row_mm, w * column_mm) > MAX_FIELD_MM:
        return _reject(
            prepared,
            f"field of view {_mm(w * column_mm)} x {_mm(h * row_mm)} mm is larger than a body; "
            f"check the pixel spacing ({radiograph.spacing_source})",
        )
    scale = (row_mm / target.spacing_mm, column_mm / target.spacing_mm)  # pixels need not be square
    prepared.image = _on_grid(pixels, scale, target.size)
    if target.spacing_probes:
        prepared.probes = np.stack(
            [_on_grid(pixels, (scale[0] * f, scale[1] * f), target.size) for f in PROBE_FACTORS]
        )
    return prepared


def _on_grid(pixels: np.ndarray, scale: tuple[float, float], size: int) -> np.ndarray:
    """The radiograph's pixels resampled by ``scale`` (rows, columns), its collimation filled,
    fitted to the ``size`` × ``size`` grid and normalised."""
    # collimation bands are filled before a field smaller than the grid is padded (and hides them)
    image = fill_collimation(resample(pixels[None].astype(np.float32), scale)[0])
    return normalise(fit_to_grid(image[None], 1.0, size)[0])


def _marker_spacing(
    radiograph: Radiograph, marker: Marker, marker_mm: float, prepared: Prepared
) -> tuple[float, float]:
    """Row and column spacing at the marker's plane (the file's, or square pixels, scaled by
    :func:`marker_scale`), with the spacing source and a note on ``prepared``."""
    scale = marker_scale(radiograph, marker, marker_mm)
    rows, cols = (1.0, 1.0) if radiograph.pixel_spacing is None else radiograph.pixel_spacing
    row_mm, column_mm = float(rows) * scale, float(cols) * scale
    prepared.spacing_source = f"marker:{marker_mm:g}mm"
    note = (
        f"spacing {row_mm:.4f} x {column_mm:.4f} mm from the {marker_mm:g} mm calibration marker "
        f"(its shadow {marker.diameter_px:.1f} px across, at row {marker.row:.0f}, "
        f"column {marker.column:.0f})"
    )
    if radiograph.pixel_spacing is not None and radiograph.spacing_plane == "detector":
        note += f": a magnification of {1 / scale:.3f} on the file's detector spacing"
        low, high = MAGNIFICATION_RANGE
        if not low <= 1 / scale <= high:
            note += (
                f", which no ball beside a hip has ({low:g}-{high:g}): is the marker "
                f"{marker_mm:g} mm, and the file's spacing at the detector?"
            )
    elif radiograph.pixel_spacing is not None:
        note += f": {scale:.3f} times the file's spacing ({radiograph.spacing_source})"
    prepared.notes.append(note)
    return row_mm, column_mm


def _reject(prepared: Prepared, reason: str) -> Prepared:
    prepared.status, prepared.reason = "rejected", reason
    return prepared
