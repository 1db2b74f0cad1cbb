"""A slow, exact reference projector (exact ray-voxel intersections) to check the fast one against.

Voxels are taken as constant boxes; each ray's path is cut at every plane between voxels and the
exact length inside every voxel it crosses is summed. Line integrals and the volume-preserving
maps (``∫ M(s) s² ds``, integrated exactly over each segment) come out of the same segments.
Vectorised over rays in batches, but meant for tests and benchmarks, not for production.
"""

from __future__ import annotations

import numpy as np

from drr.geometry import Geometry, pixel_rays, source_position


def exact_projection(
    volume: np.ndarray,
    index_to_world: np.ndarray,
    geometry: Geometry,
    projection: np.ndarray,
    *,
    weighting: str = "line",
    pixels: np.ndarray | None = None,
    batch: int = 1024,
) -> np.ndarray:
    """Exact projection of a voxel volume for one view.

    Parameters
    ----------
    volume
        Values indexed ``[k, j, i]`` (per mm for line integrals; a 0/1 mask for volume maps).
    index_to_world
        4 × 4 affine of the volume's grid.
    geometry, projection
        The detector and the view's 3 × 4 matrix.
    weighting
        ``line``: ``∫ f ds`` in value·mm. ``volume``: the isocentre thickness map
        ``(sid/sod)² · cosθ/D² · ∫ f s² ds`` in value·mm.
    pixels
        Optional ``(n, 2)`` integer (col, row) pixels to compute; default all.

    Returns
    -------
    np.ndarray
        ``(rows, cols)`` image, or ``(n,)`` values for ``pixels``.
    """
    if weighting not in ("line", "volume"):
        raise ValueError(f"weighting must be 'line' or 'volume', not {weighting!r}")
    data = np.asarray(volume, dtype=np.float64)
    shape_ijk = np.array(data.shape[::-1])
    rays = pixel_rays(projection, geometry.rows, geometry.cols)
    if pixels is None:
        v, u = np.mgrid[0 : geometry.rows, 0 : geometry.cols]
        pixels = np.c_[u.ravel(), v.ravel()]
    pixels = np.asarray(pixels, dtype=np.int64)
    directions = rays[pixels[:, 1], pixels[:, 0]]
    source = source_position(projection)
    inverse = np.linalg.inv(index_to_world)
    start = inverse[:3, :3] @ source + inverse[:3, 3]
    steps = directions @ inverse[:3, :3].T  # index units per mm along each ray
    out = np.zeros(len(pixels))
    for s0 in range(0, len(pixels), batch):
        step = steps[s0 : s0 + batch]
        out[s0 : s0 + batch] = _trace(data, shape_ijk, start, step, weighting)
    if weighting == "volume":
        f = geometry.focal_length_px
        du = pixels[:, 0] - (geometry.cols - 1) / 2.0
        dv = pixels[:, 1] - (geometry.rows - 1) / 2.0
        cos_theta = f / np.sqrt(f**2 + du**2 + dv**2)
        distance = geometry.sid / cos_theta
        out *= cos_theta / distance**2 * geometry.magnification**2
    if pixels is None or len(out) == geometry.rows * geometry.cols:
        return out.reshape(geometry.rows, geometry.cols)
    return out


def _trace(
    data: np.ndarray, shape_ijk: np.ndarray, start: np.ndarray, step: np.ndarray, weighting: str
) -> np.ndarray:
    crossings = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):
            planes = np.arange(shape_ijk[axis] + 1) - 0.5
            s = (planes[None, :] - start[axis]) / step[:, axis : axis + 1]
            s[~np.isfinite(s)] = np.nan
            crossings.append(s)
    s = np.sort(np.concatenate(crossings, axis=1), axis=1)  # NaNs sort last
    s = np.where(s > 0, s, np.nan)
    a, b = s[:, :-1], s[:, 1:]
    length = b - a
    mid = (a + b) / 2.0
    valid = np.isfinite(length) & (length > 0)
    position = start[None, None, :] + np.nan_to_num(mid)[..., None] * step[:, None, :]
    idx = np.floor(position + 0.5).astype(np.int64)
    inside = valid & np.all((idx >= 0) & (idx < shape_ijk), axis=-1)
    values = np.zeros(length.shape)
    ii, jj, kk = idx[..., 0][inside], idx[..., 1][inside], idx[..., 2][inside]
    values[inside] = data[kk, jj, ii]
    if weighting == "line":
        seg = np.where(inside, length, 0.0)
    else:
        seg = np.where(inside, (np.nan_to_num(b) ** 3 - np.nan_to_num(a) ** 3) / 3.0, 0.0)
    return (values * seg).sum(axis=1)
