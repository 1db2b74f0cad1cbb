"""3D images with their geometry: the :class:`Volume` container and the CT / label-map readers.

Every volume is held in LPS patient coordinates, as SimpleITK reads it. The array is indexed
``[k, j, i]`` (slice, row, column), the order SimpleITK's ``GetArrayFromImage`` returns; spacing,
origin and the direction cosines are given in ``(i, j, k)`` order, in mm.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xraymuscle.errors import InputError
from xraymuscle.paths import library_path
from xraymuscle.typing import PathLikeStr

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """A 3D array with the geometry that places it in patient (LPS) space.

    Parameters
    ----------
    array
        Voxel values indexed ``[k, j, i]``; HU for a CT, integer labels for a label map.
    spacing
        Voxel size along ``i, j, k`` in mm; all positive.
    origin
        Physical (LPS) position of the centre of voxel ``(0, 0, 0)``, mm.
    direction
        3 × 3 matrix whose columns are the LPS directions of the ``i, j, k`` axes.
    path
        The file or folder it was read from, if any.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise TypeError(f"array must be a numpy array, not {type(self.array).__name__}")
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3D, not {self.array.ndim}D {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        if len(self.spacing) != 3 or min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise ValueError(f"spacing must be three positive numbers, not {self.spacing}")
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nk, nj, ni)``."""
        return self.array.shape  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along ``i, j, k``."""
        nk, nj, ni = self.array.shape
        return ni, nj, nk

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel, mm³."""
        return float(np.prod(self.spacing))

    @property
    def index_to_world(self) -> np.ndarray:
        """4 × 4 affine taking ``(i, j, k, 1)`` to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def world_corners(self) -> np.ndarray:
        """The 8 corners of the voxel grid's outer boundary in LPS mm, shape (8, 3)."""
        ni, nj, nk = self.size_ijk
        lo, hi = -0.5, np.array([ni, nj, nk]) - 0.5
        idx = np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
        return (self.index_to_world @ np.c_[idx, np.ones(8)].T).T[:, :3]

    def same_grid(self, other: Volume, *, tol: float = 1e-3) -> bool:
        """Whether ``other`` has this volume's shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def to_sitk(self) -> sitk.Image:
        """The same volume as a SimpleITK image (geometry included)."""
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, *, path: PathLikeStr | None = None) -> Volume:
        """Wrap a 3D scalar SimpleITK image."""
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            path=None if path is None else str(path),
        )

    def save(self, path: PathLikeStr, *, compress: bool = True) -> None:
        """Write to any format SimpleITK knows from the extension (``.nii.gz``, ``.mha``, ...)."""
        sitk.WriteImage(self.to_sitk(), library_path(path), useCompression=compress)


def _read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise InputError("no such file or folder", path)
    if not (path.is_dir() or path.is_file()):
        raise InputError("not a regular file (a pipe, a device or a socket)", path)
    library_path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        shown_before = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "no series found" is said below, once
        try:
            series = reader.GetGDCMSeriesIDs(str(path))
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown_before)
        if not series:
            raise InputError("folder holds no DICOM series", path)
        files_per_series = [reader.GetGDCMSeriesFileNames(str(path), s) for s in series]
        files = max(files_per_series, key=len)
        if len(series) > 1:
            warnings.warn(
                f"{path}: {len(series)} DICOM series found; reading the largest ({len(files)} files)",
                stacklevel=3,
            )
        for name in files:  # the library lists such names, then cannot take them back
            library_path(name)
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # uneven slices are refused below, in one line
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"cannot read DICOM series: {_first_line(exc)}", path) from None
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown_before)
        _check_slice_geometry(reader, len(files), path)
        return image
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"not a readable image ({_first_line(exc)})", path) from None


AIR_CHECK_HU = -200.0  # a CT of a body holds air (and fat) below this; raw stored values do not
SOFT_TISSUE_HU = (-200.0, 200.0)  # fat, muscle, organs and blood: most of a body
MIN_SOFT_TISSUE = 0.02  # share of the voxels; 0.34-0.60 for the CTs measured, under 0.01 shifted by -1024
SLICE_GAP_TOLERANCE = 0.01  # of the usual gap between slice positions
TILT_TOLERANCE_DEG = 0.5


def _check_slice_geometry(reader: sitk.ImageSeriesReader, count: int, path: Path) -> None:
    """Refuse a DICOM series that a grid of evenly spaced, unsheared slices does not describe.

    The series is read as a regular grid whose slice spacing is the mean distance between slice
    positions, and whose slices stack along their normal. A missing slice, a series of stacks
    with different gaps, or a gantry tilt (each slice shifted sideways) would be read so without
    an error, and every length, volume and projection made from it would be wrong. Each slice's
    Image Position and Orientation (Patient) are checked; a series without them is not.
    """

    def vector(i: int, tag: str, size: int) -> np.ndarray | None:
        if not reader.HasMetaDataKey(i, tag):
            return None
        try:
            values = np.array([float(v) for v in reader.GetMetaData(i, tag).split("\\")])
        except ValueError:
            return None
        return values if values.shape == (size,) and np.all(np.isfinite(values)) else None

    if count < 3:
        return
    read = [(vector(i, "0020|0032", 3), vector(i, "0020|0037", 6)) for i in range(count)]
    positions = [p for p, _ in read if p is not None]
    orientations = [o for _, o in read if o is not None]
    if len(positions) < count or len(orientations) < count:
        return
    first = orientations[0]
    if any(not np.allclose(o, first, atol=1e-3) for o in orientations):
        raise InputError("the slices do not share one orientation (several stacks in one series?)", path)
    normal = np.cross(first[:3], first[3:])
    normal /= max(float(np.linalg.norm(normal)), 1e-12)
    points = np.array(positions)
    along = points @ normal
    gaps = np.abs(np.diff(along))
    usual = float(np.median(gaps))
    if usual <= 1e-3 or gaps.min() <= 1e-3:
        raise InputError("two slices lie at the same position (a duplicated slice or a second stack)", path)
    if float(np.max(np.abs(gaps - usual))) > SLICE_GAP_TOLERANCE * usual:
        raise InputError(
            f"the slices are not evenly spaced (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm, "
            f"usually {usual:.3g}): a missing slice or stacks of different spacing; "
            "give the CT as one resampled volume (NIfTI, NRRD, MHA)",
            path,
        )
    span = points[-1] - points[0]
    sideways = float(np.linalg.norm(span - (span @ normal) * normal))
    tilt = float(np.degrees(np.arctan2(sideways, abs(float(span @ normal)))))
    if tilt > TILT_TOLERANCE_DEG:
        raise InputError(
            f"the slices are sheared by {tilt:.1f} degrees (a gantry tilt): a grid of stacked "
            "slices would misplace them; give the CT as one resampled volume (NIfTI, NRRD, MHA)",
            path,
        )


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # SimpleITK puts the useful sentence last; drop the source-location prefix it adds.
    msg = lines[-1] if lines else type(exc).__name__
    return msg.split(": ", 1)[-1] if msg.startswith("sitk::") else msg


def read_volume(path: PathLikeStr) -> Volume:
    """Read a 3D scalar image (NIfTI, NRRD, MHA/MHD, or a DICOM series folder).

    Raises
    ------
    InputError
        When the path is missing, is not an image, or is not a 3D scalar image.
    """
    path = Path(path)
    image = _read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected a scalar 3D image, got {image.GetNumberOfComponentsPerPixel()} components per voxel",
            path,
        )
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise InputError(f"expected a 3D image, got {dim}D of size {image.GetSize()}", path)
    if min(image.GetSize()) < 2:
        raise InputError(f"expected a 3D image, got a single slice of size {image.GetSize()}", path)
    return Volume.from_sitk(image, path=path)


def read_ct(path: PathLikeStr) -> Volume:
    """Read a CT volume in Hounsfield units, as float32.

    Raises
    ------
    InputError
        As :func:`read_volume`; when the values are not finite, or are not in Hounsfield units:
        no voxel below ``AIR_CHECK_HU`` (no air, no fat), or fewer than ``MIN_SOFT_TISSUE`` of
        them in ``SOFT_TISSUE_HU`` (no soft tissue, as when everything is shifted down by 1024).
    """
    vol = read_volume(path)
    arr = vol.array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError("CT holds NaN or infinite values", path)
    lowest = float(arr.min()) if arr.size else 0.0
    if lowest > AIR_CHECK_HU:
        raise InputError(
            f"values do not look like Hounsfield units: none below {AIR_CHECK_HU:g} (the lowest "
            f"{lowest:g}), where the air around a body reads about -1000 and fat -100; "
            "a rescale slope and intercept lost on the way, or not a CT",
            path,
        )
    low, high = SOFT_TISSUE_HU
    soft = float(np.count_nonzero((arr > low) & (arr < high))) / arr.size
    if soft < MIN_SOFT_TISSUE:
        raise InputError(
            f"values do not look like Hounsfield units: {soft:.1%} of the voxels lie between "
            f"{low:g} and {high:g}, where fat, muscle and organs (most of a body) read; a rescale "
            "intercept applied twice (air at about -2000), or not a CT",
            path,
        )
    vol.array = arr
    return vol


def read_labels(
    path: PathLikeStr, *, reference: Volume | None = None, masks: Mapping[str, int] | None = None
) -> Volume:
    """Read an integer label map; put it on ``reference``'s grid when given.

    A label map on another grid is resampled onto the reference grid (nearest neighbour) with a
    warning. Values must be non-negative integers (floats holding integers are accepted).

    ``masks`` maps structure names to label values. With it, ``path`` may also be a folder of one
    mask per structure, each named after its structure (``gluteus_medius_left.nii.gz``), as
    segmentation tools write them by default: the masks so named (non-zero inside) are read into
    one label map of those values; other files are left alone.

    Raises
    ------
    InputError
        As :func:`read_volume`; for non-integer or negative values; when the map does not
        overlap the reference volume; for a mask folder, when two masks share a voxel.
    """
    path = Path(path)
    if masks is not None and path.is_dir():
        found = _named_masks(path, masks)
        if found:
            return _read_mask_folder(path, found, reference)
    try:
        vol = read_volume(path)
    except InputError as exc:
        if exc.problem != "folder holds no DICOM series":
            raise
        if masks:
            raise InputError(
                "folder holds no DICOM series and no mask named after a muscle of the label source "
                f"(as {next(iter(masks))}.nii.gz)",
                path,
            ) from None
        if masks is None and any(_volume_suffix(f.name) for f in path.iterdir()):
            raise InputError(
                "folder holds no DICOM series; as a folder of masks, it needs a label source to name "
                "its muscles (--label-source)",
                path,
            ) from None
        raise
    arr = vol.array
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError("label map holds non-integer values", path)
    if arr.size and arr.min() < 0:
        raise InputError(f"label map holds negative values (min {arr.min()})", path)
    if arr.size and arr.max() > np.iinfo(np.uint16).max:
        raise InputError(f"label values above {np.iinfo(np.uint16).max} are not supported", path)
    vol.array = arr.astype(np.uint16)
    if reference is None or vol.same_grid(reference):
        return vol
    if not _overlaps(vol, reference):
        raise InputError(f"label map does not overlap its CT ({reference.path or 'reference'})", path)
    warnings.warn(
        f"{path}: label map grid differs from the CT's; resampling it (nearest neighbour)",
        stacklevel=2,
    )
    resampled = sitk.Resample(
        vol.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    out = Volume.from_sitk(resampled, path=path)
    if not out.array.any() and arr.any():
        raise InputError(f"label map's labels fall outside its CT ({reference.path or 'reference'})", path)
    return out


def _named_masks(folder: Path, masks: Mapping[str, int]) -> dict[Path, int]:
    """The files of ``folder`` named after a structure of ``masks`` (any volume suffix), with the
    label value each stands for."""
    found = {}
    for file in sorted(folder.iterdir()):
        suffix = _volume_suffix(file.name)
        if suffix is not None and file.is_file() and file.name[: -len(suffix)] in masks:
            found[file] = masks[file.name[: -len(suffix)]]
    return found


def _volume_suffix(name: str) -> str | None:
    """The volume-file suffix ``name`` ends with (``.nii.gz``, ``.mha``, ...), if any."""
    return next((s for s in _VOLUME_SUFFIXES if name.lower().endswith(s)), None)


def _read_mask_folder(folder: Path, found: dict[Path, int], reference: Volume | None) -> Volume:
    """One label map from the masks ``found`` (file: value), on ``reference``'s grid when given,
    else on the first mask's."""
    combined: Volume | None = None
    owner: dict[int, Path] = {}
    for file, value in found.items():
        mask = read_labels(file, reference=reference)
        if combined is None:
            combined = Volume(
                np.zeros_like(mask.array), mask.spacing, mask.origin, mask.direction, str(folder)
            )
        elif not mask.same_grid(combined):
            raise InputError(f"mask is on another grid than {next(iter(found)).name}", file)
        inside = mask.array != 0
        taken = np.unique(combined.array[inside])
        taken = taken[taken != 0]
        if taken.size:
            raise InputError(f"mask shares voxels with {owner[int(taken[0])].name}", file)
        combined.array[inside] = value
        owner[value] = file
    assert combined is not None
    return combined


def _overlaps(a: Volume, b: Volume) -> bool:
    """Whether the axis-aligned LPS bounding boxes of two grids intersect."""
    ca, cb = a.world_corners(), b.world_corners()
    lo = np.maximum(ca.min(0), cb.min(0))
    hi = np.minimum(ca.max(0), cb.max(0))
    return bool(np.all(hi > lo))


BODY_HU = -500.0  # above this, a voxel is taken as part of the body (or of the table)
CUT_SIDE_MM = 40.0  # a side of the body cut off by the border is at least this deep front to back


def sides_cut_off(ct: Volume) -> float:
    """The share of the CT's axial slices in which the body reaches its left or right border, as
    when a large patient does not fit the field of view: tissue beyond it is missing, and a
    projection of the CT then lacks it. A slice counts when the tissue on a side border runs at
    least ``CUT_SIDE_MM`` front to back without a gap: the table under the patient, a few
    millimetres thick, does not count."""
    axes = np.abs(ct.direction)  # columns: the LPS directions of the i, j, k axes
    across = int(np.argmax(axes[0]))  # the axis (i, j or k) nearest the patient's left-right
    along = int(np.argmax(axes[2]))  # and the one nearest head-feet
    if across == along:
        return 0.0
    depth = ({0, 1, 2} - {across, along}).pop()  # the third: front to back
    # the array is indexed [k, j, i]: axis a of (i, j, k) is array axis 2 - a
    sides = np.take(ct.array, [0, -1], axis=2 - across) > BODY_HU  # the two side faces only
    faces = np.moveaxis(sides, (2 - along, 2 - across), (0, 1))  # [slice, side, depth]
    # the longest run of tissue along the depth, per slice and side: each run's length is read at
    # its last voxel as the distance back to the gap before it
    index = np.arange(faces.shape[2])
    last_gap = np.maximum.accumulate(np.where(faces, -1, index), axis=2)
    longest = (index - last_gap).max(axis=(1, 2)) * ct.spacing[depth]
    return float(np.mean(longest >= CUT_SIDE_MM))


def labels_at_scan_ends(labels: Volume) -> set[int]:
    """The label values found in the first or last axial slice (along the axis nearest
    head-feet): structures that the scan range cuts, of which it holds only a part."""
    along = int(np.argmax(np.abs(labels.direction)[2]))  # the axis (i, j or k) nearest head-feet
    ends = np.take(labels.array, [0, -1], axis=2 - along)  # the array is indexed [k, j, i]
    return {int(v) for v in np.unique(ends)} - {0}


def read_ct_and_labels(
    ct_path: PathLikeStr, labels_path: PathLikeStr, *, masks: Mapping[str, int] | None = None
) -> tuple[Volume, Volume]:
    """Read a CT and its label map (or folder of masks, see :func:`read_labels`), the labels on
    the CT's grid."""
    ct = read_ct(ct_path)
    return ct, read_labels(labels_path, reference=ct, masks=masks)


def is_volume_path(path: PathLikeStr) -> bool:
    """Whether a path looks like a volume file by its extension (or is a folder)."""
    p = Path(path)
    return p.is_dir() or _volume_suffix(p.name) is not None
