"""Imaging geometry: a point source and a flat detector, and the 3 × 4 projection matrix of a view.

Conventions (all distances in mm, patient coordinates LPS: +x to the patient's left, +y posterior,
+z superior):

* The nominal view is an AP radiograph of a supine patient: the source is anterior, on the
  ``-y`` side of the isocentre at the source-to-object distance ``sod``; the detector plane is
  posterior, perpendicular to ``+y``, at the source-to-image distance ``sid`` from the source.
* The image is oriented as radiographs are read, facing the patient: columns run towards the
  patient's left (``+x``), so the patient's right is on the image's left; rows run towards the
  feet (``-z``). Pixel ``(col, row) = (0, 0)`` is the top-left corner pixel; pixel centres sit at
  integer coordinates.
* A projection matrix ``P`` (3 × 4) takes a homogeneous patient point ``(x, y, z, 1)`` to
  ``w · (col, row, 1)``; ``w`` is the point's depth from the source along the detector normal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

# The nominal view's camera axes in LPS: detector columns, detector rows, and the beam direction.
AP_COLUMN_AXIS = np.array([1.0, 0.0, 0.0])
AP_ROW_AXIS = np.array([0.0, 0.0, -1.0])
AP_BEAM_AXIS = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class Geometry:
    """A point source and a flat detector.

    Parameters
    ----------
    sid
        Source-to-image distance (source to detector plane), mm.
    sod
        Source-to-object distance (source to the isocentre, where the muscles' centroid is put), mm.
    rows, cols
        Detector size in pixels.
    pixel_spacing
        Detector pixel pitch at the detector plane, mm (square pixels).
    name
        The preset it came from, for records.
    """

    sid: float
    sod: float
    rows: int
    cols: int
    pixel_spacing: float
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("sid", "sod", "pixel_spacing"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive number of mm, not {value!r}")
        for key in ("rows", "cols"):
            value = getattr(self, key)
            if not (isinstance(value, (int, np.integer)) and value > 0):
                raise ValueError(f"{key} must be a positive number of pixels, not {value!r}")
        if self.sod >= self.sid:
            raise ValueError(
                f"the isocentre must lie between source and detector: sod {self.sod} mm "
                f"is not less than sid {self.sid} mm"
            )

    @property
    def magnification(self) -> float:
        """Magnification at the isocentre, ``sid / sod``."""
        return self.sid / self.sod

    @property
    def iso_pixel_spacing(self) -> float:
        """Pixel pitch scaled to the isocentre plane, mm: ``pixel_spacing · sod / sid``."""
        return self.pixel_spacing / self.magnification

    @property
    def iso_pixel_area_mm2(self) -> float:
        """Area of one pixel at the isocentre plane, mm²: the area that goes with the muscle maps."""
        return self.iso_pixel_spacing**2

    @property
    def focal_length_px(self) -> float:
        """``sid`` in pixels: the intrinsic matrix's focal length."""
        return self.sid / self.pixel_spacing

    def with_overrides(self, **changes: Any) -> Geometry:
        """A copy with some fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    def intrinsics(self) -> np.ndarray:
        """3 × 3 intrinsic matrix (focal length in pixels, principal point at the detector centre)."""
        f = self.focal_length_px
        return np.array([[f, 0.0, (self.cols - 1) / 2.0], [0.0, f, (self.rows - 1) / 2.0], [0, 0, 1.0]])

    def nominal_camera(self, isocentre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rotation (rows: column, row and beam axes) and source position of the nominal AP view."""
        rotation = np.stack([AP_COLUMN_AXIS, AP_ROW_AXIS, AP_BEAM_AXIS])
        source = np.asarray(isocentre, dtype=np.float64) - self.sod * AP_BEAM_AXIS
        return rotation, source

    def projection_matrix(
        self, isocentre: np.ndarray, patient_to_view: np.ndarray | None = None
    ) -> np.ndarray:
        """The 3 × 4 matrix taking patient points (LPS mm, as the CT gives them) to pixels.

        Parameters
        ----------
        isocentre
            The point (LPS mm) the nominal view is centred on.
        patient_to_view
            4 × 4 rigid transform applied to the patient before the nominal view is taken (a
            :class:`drr.poses.Pose` matrix); identity when omitted.
        """
        rotation, source = self.nominal_camera(isocentre)
        extrinsic = np.c_[rotation, -rotation @ source]
        matrix = self.intrinsics() @ extrinsic
        if patient_to_view is not None:
            matrix = matrix @ np.asarray(patient_to_view, dtype=np.float64)
        return matrix


def source_position(projection: np.ndarray) -> np.ndarray:
    """The source (camera centre) of a projection matrix: the point it maps to zero, LPS mm."""
    _, _, vt = np.linalg.svd(np.asarray(projection, dtype=np.float64))
    centre = vt[-1]
    return centre[:3] / centre[3]


def pixel_rays(projection: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Unit direction (LPS) of the ray through every pixel centre, shape ``(rows, cols, 3)``."""
    v, u = np.mgrid[0:rows, 0:cols].astype(np.float64)
    return rays_through(projection, np.stack([u, v], axis=-1))


def rays_through(projection: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Unit directions (LPS) of the rays through detector points ``(..., 2)`` (col, row)."""
    m = np.asarray(projection, dtype=np.float64)[:, :3]
    inverse = np.linalg.inv(m)
    directions = np.asarray(pixels, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]
    # Orient every ray from the source towards the detector (positive depth).
    directions *= np.sign(np.linalg.det(m))
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def border_pixels(rows: int, cols: int) -> np.ndarray:
    """Centres ``(n, 2)`` (col, row) of the pixels on the detector's edge.

    The angle between the rays and a fixed direction has no maximum inside the detector (its
    level sets on the detector plane are conics around one minimum), so its largest value over
    all pixels is found on these.
    """
    u, v = np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64)
    top = np.stack([u, np.zeros(cols)], axis=-1)
    bottom = np.stack([u, np.full(cols, rows - 1.0)], axis=-1)
    left = np.stack([np.zeros(rows), v], axis=-1)
    right = np.stack([np.full(rows, cols - 1.0), v], axis=-1)
    return np.concatenate([top, bottom, left, right])


def project_points(projection: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(n, 2)`` (col, row) and depths ``(n,)`` of LPS points ``(n, 3)``."""
    points = np.asarray(points, dtype=np.float64)
    h = np.c_[points, np.ones(len(points))] @ np.asarray(projection, dtype=np.float64).T
    return h[:, :2] / h[:, 2:3], h[:, 2]
