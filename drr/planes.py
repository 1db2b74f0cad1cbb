"""The plane factorisation behind the projector.

For a flat detector and a point source, every plane of voxels perpendicular to one volume axis maps
onto the detector by a 2D homography. Sampling each plane where the pixel rays cross it (bilinear
in the plane, exact along the axis) gives a view as a weighted sum of 2D warps.

The depth axis is the volume axis most nearly parallel to the central ray. Planes may be
decimated in-plane first (``factors``, a tent filter), so that a sample is never finer than a
detector pixel's footprint and nothing aliases; the filter keeps every plane's integral. Adjacent planes may
be summed in groups (``group``) when the rays' spread across a group is a small part of a pixel.

Weights (derivation in the DRR dataset contract): a ray through a pixel with solid angle
``Ω = a·cosθ/D²``, crossing plane ``p`` at perpendicular distance ``h_p`` from the source with angle
``φ`` to the plane normal, sweeps the volume ``Ω·h_p²·Δ/cos³φ`` in a slab of thickness ``Δ``. So

* line integral ``= (1/cosφ) · Σ_p f_p · Δ``;
* volume map    ``= cosθ/(D²·cos³φ) · Σ_p f_p · h_p² · Δ``, which times the pixel area ``a`` sums
  to the volume. Scaled by ``(sid/sod)²`` it reads as a thickness at the isocentre, in mm, and goes
  with the isocentre pixel area.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from drr.geometry import Geometry, border_pixels, rays_through, source_position


@dataclass(frozen=True)
class PlaneLayout:
    """How a volume is cut into planes for one set of views.

    Attributes
    ----------
    depth_axis
        Array axis (0, 1 or 2 of an ``[k, j, i]`` array) the planes are stacked along.
    plane_axes
        The other two array axes ``(a, b)``; a plane is an image with rows along ``a``.
    factors
        Decimation factors along ``(a, b)``.
    group
        Number of adjacent planes summed before warping.
    """

    depth_axis: int
    plane_axes: tuple[int, int]
    factors: tuple[int, int]
    group: int


def axis_directions(index_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit LPS directions ``(3, 3)`` and spacings ``(3,)`` of the array axes ``0, 1, 2`` (k, j, i)."""
    columns = np.asarray(index_to_world, dtype=np.float64)[:3, :3][:, ::-1]  # array axis order
    spacing = np.linalg.norm(columns, axis=0)
    return (columns / spacing).T, spacing


def check_source_outside(projection: np.ndarray, index_to_world: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` when the source lies inside the volume's grid."""
    source = source_position(projection)
    index = np.linalg.solve(index_to_world, np.r_[source, 1.0])[:3][::-1]  # array order
    if np.all(index > -0.5) and np.all(index < np.asarray(shape) - 0.5):
        raise ValueError(
            f"the source at {np.round(source, 1).tolist()} mm lies inside the volume; "
            "move the isocentre or increase sod"
        )


def depth_axis_for(projection: np.ndarray, geometry: Geometry, index_to_world: np.ndarray) -> int:
    """The array axis most nearly parallel to the ray through the detector centre."""
    central = rays_through(projection, np.array([geometry.cols // 2, geometry.rows // 2]))
    directions, _ = axis_directions(index_to_world)
    return int(np.argmax(np.abs(directions @ central)))


def plan_layout(
    projections: np.ndarray,
    geometry: Geometry,
    index_to_world: np.ndarray,
    shape: tuple[int, int, int],
    depth_axis: int,
    *,
    max_shift_px: float,
    prefilter: bool = True,
) -> PlaneLayout:
    """Choose decimation factors and plane grouping for views sharing ``depth_axis``.

    ``max_shift_px`` bounds, in detector pixels, how far a grouped plane's samples may lie from
    where its own rays cross it; 0 disables grouping.
    """
    directions, spacing = axis_directions(index_to_world)
    plane_axes = tuple(ax for ax in range(3) if ax != depth_axis)
    corners = _grid_corners(index_to_world, shape)
    nearest = np.inf
    steepest = 0.0
    edge = border_pixels(geometry.rows, geometry.cols)  # the steepest ray is on the edge
    for projection in projections:
        source = source_position(projection)
        h = np.abs((corners - source) @ directions[depth_axis])
        nearest = min(nearest, float(h.min()))
        cos_phi = np.abs(rays_through(projection, edge) @ directions[depth_axis])
        steepest = max(steepest, float(np.sqrt(1.0 - cos_phi**2).max() / cos_phi.min()))
    # A detector pixel's footprint on the plane nearest the source (the smallest one), mm.
    footprint = geometry.pixel_spacing * nearest / geometry.sid
    factors = (1, 1)
    if prefilter:
        # Samples no finer than the smallest footprint (a little slack so 1.02 stays 1).
        factors = tuple(max(1, math.ceil(footprint / spacing[ax] - 0.05)) for ax in plane_axes)  # type: ignore[assignment]
    group = 1
    if max_shift_px > 0 and steepest > 0:
        limit = 2.0 * max_shift_px * footprint / (steepest * spacing[depth_axis])
        group = max(1, int(math.floor(1.0 + limit)))
    return PlaneLayout(depth_axis, plane_axes, factors, group)  # type: ignore[arg-type]


def _grid_corners(index_to_world: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    nk, nj, ni = shape
    idx = np.array([[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)])
    return (np.c_[idx, np.ones(8)] @ np.asarray(index_to_world).T)[:, :3]


def plane_homographies(
    projection: np.ndarray,
    index_to_world: np.ndarray,
    layout: PlaneLayout,
    depths: np.ndarray,
    origin_ab: tuple[float, float],
    pixel_offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Homographies ``(n, 3, 3)`` from plane sample coordinates to detector pixels.

    A plane's sample ``(x, y)`` (column ``x`` along axis ``b``, row ``y`` along axis ``a``, after
    decimation) is the array index ``a = origin_a + fa·y + (fa−1)/2`` and
    ``b = origin_b + fb·x + (fb−1)/2`` at depth index ``depths[n]`` (fractional for a group's
    centre). ``pixel_offset`` (col, row) is subtracted from the detector coordinates, for warps
    into a sub-window of the detector.
    """
    m = np.asarray(projection, dtype=np.float64) @ np.asarray(index_to_world, dtype=np.float64)
    a, b = layout.plane_axes
    fa, fb = layout.factors
    ca, cb, cd = 2 - a, 2 - b, 2 - layout.depth_axis  # index components (i, j, k) of array axes
    lift = np.zeros((len(depths), 4, 3))
    lift[:, cb, 0] = fb
    lift[:, ca, 1] = fa
    lift[:, cb, 2] = origin_ab[1] + (fb - 1) / 2.0
    lift[:, ca, 2] = origin_ab[0] + (fa - 1) / 2.0
    lift[:, cd, 2] = depths
    lift[:, 3, 2] = 1.0
    shift = np.array([[1.0, 0.0, -pixel_offset[0]], [0.0, 1.0, -pixel_offset[1]], [0.0, 0.0, 1.0]])
    return shift @ m @ lift


def plane_distances(
    projection: np.ndarray, index_to_world: np.ndarray, depth_axis: int, depths: np.ndarray
) -> np.ndarray:
    """Perpendicular distance (mm) from the source to the planes at ``depths`` (array indices)."""
    directions, spacing = axis_directions(index_to_world)
    source = source_position(projection)
    origin = np.asarray(index_to_world)[:3, 3]
    h0 = float((origin - source) @ directions[depth_axis])
    return np.abs(h0 + np.asarray(depths, dtype=np.float64) * spacing[depth_axis])


def pixel_factors(
    projection: np.ndarray, geometry: Geometry, index_to_world: np.ndarray, depth_axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel factors ``(rows, cols)``: ``1/cosφ`` for line integrals and the map factor.

    The map factor is ``cosθ / (D² cos³φ) · (sid/sod)²`` (1/mm²), giving isocentre thickness.
    ``cosφ`` (the ray's angle to the planes' normal) is worked out without the rays themselves:
    with ``r = M⁻¹·(u, v, 1)`` the ray through pixel ``(u, v)``, ``r·n`` is linear in the pixel
    and ``|r|²`` quadratic, so a few passes over the detector give it.
    """
    directions, _ = axis_directions(index_to_world)
    inverse = np.linalg.inv(np.asarray(projection, dtype=np.float64)[:, :3])
    u, v, detector = _detector_terms(geometry)
    linear = directions[depth_axis] @ inverse  # r·n = linear · (u, v, 1)
    gram = inverse.T @ inverse  # |r|² = (u, v, 1) gram (u, v, 1)ᵀ
    dot = linear[0] * u + linear[1] * v + linear[2]
    norm2 = (
        gram[0, 0] * u * u
        + gram[1, 1] * v * v
        + 2.0 * gram[0, 1] * u * v
        + 2.0 * gram[0, 2] * u
        + 2.0 * gram[1, 2] * v
        + gram[2, 2]
    )
    cos_phi = np.abs(dot) / np.sqrt(norm2)
    map_factor = detector / cos_phi**3
    return (1.0 / cos_phi).astype(np.float32), map_factor.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _detector_terms(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel columns, rows and the view-independent part ``cosθ/D² · (sid/sod)²`` of the map factor."""
    v, u = np.mgrid[0 : geometry.rows, 0 : geometry.cols].astype(np.float64)
    f = geometry.focal_length_px
    r2 = (u - (geometry.cols - 1) / 2.0) ** 2 + (v - (geometry.rows - 1) / 2.0) ** 2
    cos_theta = f / np.sqrt(f**2 + r2)
    distance = geometry.sid / cos_theta
    detector = cos_theta / distance**2 * geometry.magnification**2
    for array in (u, v, detector):
        array.setflags(write=False)
    return u, v, detector
