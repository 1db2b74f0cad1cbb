"""Analytic solids drawn on a voxel grid as depth fields.

Each primitive returns, over a bounding box of the grid, an approximate *depth*: the distance in
mm from the surface, positive inside and negative outside. Unions take the maximum depth; a bone's
cortical shell is where ``0 < depth < cortex thickness``. Evaluating only inside each primitive's
bounding box, with broadcasting over separable axes, keeps a 2 mm whole-pelvis phantom fast.

Coordinates are LPS in mm: x to the patient's left, y posterior, z superior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]  # (k, j, i) slices into the grid
Vec = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Grid:
    """A regular grid of voxel centres: ``x`` (i), ``y`` (j), ``z`` (k) coordinates in mm."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def covering(cls, lo: Vec, hi: Vec, spacing: float) -> Grid:
        axes = [
            (np.arange(int(np.ceil((h - lo_) / spacing)) + 1) * spacing + lo_).astype(np.float32)
            for lo_, h in zip(lo, hi, strict=True)
        ]
        return cls(*axes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    @property
    def spacing(self) -> float:
        return float(self.x[1] - self.x[0])

    def box(self, lo: Vec, hi: Vec) -> Box | None:
        """Slices covering the mm box ``[lo, hi]`` (x, y, z), or None when it misses the grid."""
        out = []
        for axis, a, b in zip((self.z, self.y, self.x), lo[::-1], hi[::-1], strict=True):
            i0 = int(np.searchsorted(axis, a, side="left"))
            i1 = int(np.searchsorted(axis, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (Z, Y, X) coordinate arrays for a box."""
        zs, ys, xs = box
        return self.z[zs][:, None, None], self.y[ys][None, :, None], self.x[xs][None, None, :]


@dataclass
class Field:
    """A depth field restricted to a box of the grid."""

    box: Box
    depth: np.ndarray

    def paint(self, target: np.ndarray) -> None:
        """Union into a full-grid depth array (maximum)."""
        np.maximum(target[self.box], self.depth, out=target[self.box])


def ellipsoid(grid: Grid, centre: Vec, radii: Vec) -> Field | None:
    """Axis-aligned ellipsoid; depth ≈ (1 − normalised radius) × smallest radius."""
    c, r = np.asarray(centre, np.float32), np.asarray(radii, np.float32)
    box = grid.box(c - r, c + r)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    rho = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    return Field(box, ((1.0 - rho) * r.min()).astype(np.float32))


def capsule(
    grid: Grid,
    a: Vec,
    b: Vec,
    radius_a: float,
    radius_b: float | None = None,
) -> Field | None:
    """A segment a→b swept by a sphere whose radius goes linearly from ``radius_a`` to ``radius_b``."""
    pa, pb = np.asarray(a, np.float32), np.asarray(b, np.float32)
    rb = radius_a if radius_b is None else radius_b
    rmax = max(radius_a, rb)
    box = grid.box(np.minimum(pa, pb) - rmax, np.maximum(pa, pb) + rmax)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    d = pb - pa
    length2 = float(d @ d) or 1.0
    t = ((x - pa[0]) * d[0] + (y - pa[1]) * d[1] + (z - pa[2]) * d[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    dist = np.sqrt((x - pa[0] - t * d[0]) ** 2 + (y - pa[1] - t * d[1]) ** 2 + (z - pa[2] - t * d[2]) ** 2)
    radius = radius_a + (rb - radius_a) * t
    return Field(box, (radius - dist).astype(np.float32))


def spherical_shell(
    grid: Grid,
    centre: Vec,
    inner: float,
    outer: float,
    axis: Vec,
    min_cos: float,
) -> Field | None:
    """Part of a spherical shell whose direction from the centre is within an angle of ``axis``."""
    c = np.asarray(centre, np.float32)
    n = np.asarray(axis, np.float32)
    n = n / np.linalg.norm(n)
    box = grid.box(c - outer, c + outer)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
    cos = (dx * n[0] + dy * n[1] + dz * n[2]) / dist
    half = (outer - inner) / 2
    depth = half - np.abs(dist - (inner + outer) / 2)
    depth = np.minimum(depth, (cos - min_cos) * outer)
    return Field(box, depth.astype(np.float32))


@dataclass(frozen=True)
class Keyframe:
    """One axial cross-section of a swept ellipse: centre (mm), semi-axes (mm), angle (degrees)."""

    z: float
    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0


def swept_ellipse(
    grid: Grid,
    frames: Sequence[Keyframe],
    *,
    wobble: np.ndarray | None = None,
) -> Field | None:
    """A solid whose axial cross-sections are ellipses interpolated between keyframes.

    Parameters
    ----------
    frames
        At least two keyframes, sorted by ``z`` (either direction); the solid spans their z range.
    wobble
        Optional (K, 3) rows ``(amplitude, phase, twist)``: the boundary radius is multiplied by
        ``1 + Σ amplitude·cos(k·θ + phase + twist·z/100)`` (k = 1..K), giving each solid its own
        irregular outline.
    """
    fr = sorted(frames, key=lambda f: f.z)
    zk = np.array([f.z for f in fr], np.float32)
    params = {
        name: np.array([getattr(f, name) for f in fr], np.float32)
        for name in ("cx", "cy", "ax", "ay", "angle")
    }
    extent = max(float(params["ax"].max()), float(params["ay"].max())) * 1.35
    lo = (float((params["cx"]).min()) - extent, float(params["cy"].min()) - extent, float(zk[0]))
    hi = (float((params["cx"]).max()) + extent, float(params["cy"].max()) + extent, float(zk[-1]))
    box = grid.box(lo, hi)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    zz = z[:, 0, 0]
    cx, cy, ax, ay, ang = (
        np.interp(zz, zk, params[n])[:, None, None] for n in ("cx", "cy", "ax", "ay", "angle")
    )
    theta = np.deg2rad(ang)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    u = ((x - cx) * cos_t + (y - cy) * sin_t) / ax
    v = (-(x - cx) * sin_t + (y - cy) * cos_t) / ay
    rho = np.sqrt(u * u + v * v)
    limit = np.ones_like(rho)
    if wobble is not None and len(wobble):
        phi = np.arctan2(v, u)
        for k, (amp, phase, twist) in enumerate(wobble, start=1):
            limit = limit + amp * np.cos(k * phi + phase + twist * z / 100.0)
    depth = (limit - rho) * np.minimum(ax, ay)
    return Field(box, depth.astype(np.float32))


def arc_plate(
    grid: Grid,
    z_range: tuple[float, float],
    p_start: Sequence[np.ndarray],
    p_end: Sequence[np.ndarray],
    bulge: float,
    thickness: Vec,
) -> Field | None:
    """A curved plate: in each axial slice, a circular arc of given thickness from start to end.

    ``p_start``, ``p_end`` and ``thickness`` are given at the two ends of ``z_range`` and
    interpolated linearly; ``bulge`` is the arc's sagitta in mm (positive: bulges to the right
    of the start→end direction, seen from above).
    """
    z0, z1 = z_range
    ps, pe = np.asarray(p_start, np.float32), np.asarray(p_end, np.float32)
    pad = max(thickness) + abs(bulge)
    lo = (
        float(min(ps[:, 0].min(), pe[:, 0].min())) - pad,
        float(min(ps[:, 1].min(), pe[:, 1].min())) - pad,
        z0,
    )
    hi = (
        float(max(ps[:, 0].max(), pe[:, 0].max())) + pad,
        float(max(ps[:, 1].max(), pe[:, 1].max())) + pad,
        z1,
    )
    box = grid.box(lo, hi)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    f = np.clip((z[:, 0, 0] - z0) / (z1 - z0), 0, 1)[:, None, None]
    sx, sy = ps[0, 0] + f * (ps[1, 0] - ps[0, 0]), ps[0, 1] + f * (ps[1, 1] - ps[0, 1])
    ex, ey = pe[0, 0] + f * (pe[1, 0] - pe[0, 0]), pe[0, 1] + f * (pe[1, 1] - pe[0, 1])
    thick = thickness[0] + f * (thickness[1] - thickness[0])
    # circle through start and end with the given sagitta
    mx, my = (sx + ex) / 2, (sy + ey) / 2
    dx, dy = ex - sx, ey - sy
    chord = np.sqrt(dx * dx + dy * dy)
    nx, ny = dy / chord, -dx / chord  # right-hand normal of the chord
    s = np.float32(bulge) if abs(bulge) > 1e-3 else np.float32(1e-3)
    radius = (chord * chord / 4 + s * s) / (2 * abs(s))
    sign = np.sign(s)
    ccx, ccy = mx - sign * nx * (radius - abs(s)), my - sign * ny * (radius - abs(s))
    dist = np.sqrt((x - ccx) ** 2 + (y - ccy) ** 2)
    depth = thick / 2 - np.abs(dist - radius)
    # keep only the minor arc: the side of the chord line where the bulge lies
    side = ((x - sx) * nx + (y - sy) * ny) * sign
    depth = np.minimum(depth, side + thick / 2)
    # round the two ends of the arc
    along = ((x - mx) * dx + (y - my) * dy) / chord
    depth = np.minimum(depth, chord / 2 + thick / 2 - np.abs(along))
    return Field(box, depth.astype(np.float32))
