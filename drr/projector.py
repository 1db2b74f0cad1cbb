"""The projector: material line integrals and per-label volume and mass maps, in one pass.

:class:`Scene` holds a CT (HU), an optional label map and the label groups to map (one per muscle);
:func:`render` projects it for a batch of views given by their 3 × 4 projection matrices. The work
is a weighted sum of plane-to-detector warps (see :mod:`drr.planes`), done by one of two kernels:

* ``opencv``: 4-channel bilinear warps on the CPU (fast, the default on CPU);
* ``torch``: batched ``grid_sample`` over views and planes, on CPU or CUDA.

Channels are packed four at a time (air, soft tissue, bone; or mask and mass of two labels) and
each pack is only warped over its labels' bounding box and that box's shadow on the detector.
Planes are streamed in chunks, so memory stays bounded for large CTs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drr.geometry import Geometry, project_points
from drr.materials import LOWEST_HU, MATERIALS, METAL_HU, material_lut
from drr.planes import (
    PlaneLayout,
    check_source_outside,
    depth_axis_for,
    pixel_factors,
    plan_layout,
    plane_distances,
    plane_homographies,
)

KERNELS = ("auto", "opencv", "torch")


@dataclass(frozen=True)
class LabelGroup:
    """A named set of label values projected as one channel (a muscle)."""

    name: str
    labels: tuple[int, ...]


@dataclass
class Projections:
    """What :func:`render` returns for ``B`` views of ``H × W`` pixels.

    Attributes
    ----------
    materials
        ``(B, 3, H, W)`` line integrals of density per material (air, soft tissue, bone), g/cm².
    adipose
        ``(B, H, W)`` the line integral of the adipose part of soft tissue
        (:data:`drr.materials.ADIPOSE_MAX_HU`), g/cm²; included in ``materials[:, 1]``.
    maps
        ``(B, K, H, W)`` per-group volume-preserving thickness at the isocentre, mm:
        ``maps[b, k].sum() * pixel_area_mm2`` is the group's volume in mm³.
    mass_maps
        ``(B, K, H, W)`` the same weighted by density, mm·g/cm³: the sum times ``pixel_area_mm2``
        divided by 1000 is the mass in g.
    pixel_area_mm2
        Area of a pixel at the isocentre plane, mm².
    """

    materials: np.ndarray
    maps: np.ndarray
    mass_maps: np.ndarray
    pixel_area_mm2: float
    names: tuple[str, ...] = field(default_factory=tuple)
    adipose: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))


@dataclass(frozen=True)
class _Pack:
    """Up to four channels warped together over one box of the volume."""

    groups: tuple[int, ...]  # group indices (empty for the materials pack)
    box: tuple[slice, slice, slice]


class Scene:
    """A CT prepared for rendering, with its labels grouped into channels.

    Parameters
    ----------
    hu
        CT in Hounsfield units, indexed ``[k, j, i]``. Rounded to integers; values above
        3000 HU (metal) are clipped with a warning, values below −1024 HU count as −1024.
    index_to_world
        4 × 4 affine taking ``(i, j, k, 1)`` to LPS mm.
    labels
        Integer label map on the same grid, or ``None`` for an image only.
    groups
        The label groups to map, in output channel order.
    cache_mb
        Memory for keeping prepared planes between renders (many views of one CT then cost only
        their warps); beyond it planes are recomputed in chunks for every render.
    """

    def __init__(
        self,
        hu: np.ndarray,
        index_to_world: np.ndarray,
        labels: np.ndarray | None = None,
        groups: Sequence[LabelGroup] = (),
        *,
        cache_mb: float = 1024.0,
    ) -> None:
        hu = np.asarray(hu)
        if hu.ndim != 3 or min(hu.shape) < 1:
            raise ValueError(f"hu must be a non-empty 3D array, not shape {hu.shape}")
        affine = np.asarray(index_to_world, dtype=np.float64)
        if (
            affine.shape != (4, 4)
            or not np.all(np.isfinite(affine))
            or abs(np.linalg.det(affine[:3, :3])) < 1e-12
        ):
            raise ValueError("index_to_world must be a finite, invertible 4 × 4 affine")
        if labels is not None and np.asarray(labels).shape != hu.shape:
            raise ValueError(f"labels shape {np.asarray(labels).shape} differs from the CT's {hu.shape}")
        if len(groups) > 254:
            raise ValueError(f"at most 254 label groups, not {len(groups)}")
        self.index_to_world = affine
        self.groups = tuple(groups)
        self.shape: tuple[int, int, int] = hu.shape  # type: ignore[assignment]
        # Row of every voxel in the material table, and its group number (0: none), made slab by
        # slab so that a large CT needs no full-size temporaries.
        self.hu_index = np.empty(self.shape, np.uint16)
        self.channel = np.zeros(self.shape, np.uint8)
        lut = None
        if labels is not None and self.groups:
            labels = np.asarray(labels)
            top = max(int(labels.max()), max(max(g.labels) for g in self.groups))
            lut = np.zeros(top + 1, np.uint8)
            for number, group in enumerate(self.groups):
                for value in group.labels:
                    if value > 0:
                        lut[value] = number + 1
        n_metal = 0
        step = max(1, int(2**24 // max(1, hu.shape[1] * hu.shape[2])))
        for k0 in range(0, self.shape[0], step):
            slab = hu[k0 : k0 + step]
            if slab.dtype not in (np.int16, np.int32, np.int64, np.float32, np.float64):
                slab = slab.astype(np.float32)  # e.g. unsigned stored values
            n_metal += int(np.count_nonzero(slab > METAL_HU))
            work = np.clip(slab, LOWEST_HU, METAL_HU)
            if not np.issubdtype(work.dtype, np.integer):
                np.rint(work, out=work)
            work -= LOWEST_HU
            self.hu_index[k0 : k0 + step] = work
            if lut is not None:
                assert labels is not None
                self.channel[k0 : k0 + step] = lut[np.clip(labels[k0 : k0 + step], 0, None)]
        if n_metal:
            warnings.warn(
                f"{n_metal} voxels above {METAL_HU} HU (metal or artefact) are clipped to {METAL_HU} HU",
                stacklevel=2,
            )
        self.boxes, self.voxel_counts = _boxes_and_counts(self.channel, len(self.groups))
        self.cache_bytes = cache_mb * 2**20
        self._cache: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray, tuple[float, float]]] = {}

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel, mm³."""
        return float(abs(np.linalg.det(self.index_to_world[:3, :3])))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along the array axes ``(k, j, i)``, mm."""
        return np.linalg.norm(self.index_to_world[:3, :3], axis=0)[::-1]

    def group_volumes_mm3(self) -> np.ndarray:
        """Voxel count × voxel volume of every group, mm³."""
        return self.voxel_counts * self.voxel_volume_mm3

    def group_masses_g(self) -> np.ndarray:
        """Sum of voxel densities (from HU) × voxel volume of every group, g."""
        labelled = self.channel > 0
        density = _DENSITY[self.hu_index[labelled]]
        sums = np.bincount(self.channel[labelled], weights=density, minlength=len(self.groups) + 1)
        return sums[1:] * self.voxel_volume_mm3 / 1000.0

    def group_points(self, number: int) -> np.ndarray:
        """LPS centres ``(n, 3)`` of the voxels of group ``number``."""
        box = self.boxes[number]
        if box is None:
            return np.zeros((0, 3))
        k, j, i = np.nonzero(self.channel[box] == number + 1)
        ijk = np.c_[i + box[2].start, j + box[1].start, k + box[0].start, np.ones(len(i))]
        return (ijk @ self.index_to_world.T)[:, :3]

    def centroid(self) -> np.ndarray:
        """LPS centroid of all labelled voxels (the nominal isocentre), or of the grid if none."""
        total = int(self.voxel_counts.sum())
        if total == 0:
            centre = (np.array(self.shape[::-1]) - 1) / 2.0
            return (self.index_to_world @ np.r_[centre, 1.0])[:3]
        labelled = self.channel > 0
        # Mean index along each array axis from per-axis counts (no big coordinate arrays).
        means = [
            float(np.arange(n) @ labelled.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64))
            / total
            for axis, n in enumerate(self.shape)
        ]
        return (self.index_to_world @ np.array([means[2], means[1], means[0], 1.0]))[:3]

    def packs(self) -> list[_Pack]:
        """The materials pack over the whole grid, then labelled groups paired by overlapping boxes."""
        full = (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        packs = [_Pack((), full)]
        present = [g for g, box in enumerate(self.boxes) if box is not None]
        present.sort(key=lambda g: -_box_size(self.boxes[g]))  # type: ignore[arg-type]
        while present:
            first = present.pop(0)
            box = self.boxes[first]
            if not present:
                packs.append(_Pack((first,), box))  # type: ignore[arg-type]
                break
            best = min(present, key=lambda g: _box_size(_union(box, self.boxes[g])))  # type: ignore[arg-type]
            present.remove(best)
            packs.append(_Pack((first, best), _union(box, self.boxes[best])))  # type: ignore[arg-type]
        return packs

    def block(self, pack: _Pack, box: tuple[slice, slice, slice], depth_axis: int) -> np.ndarray:
        """The pack's four channels over ``box``, float32 ``(P, A, B, 4)`` with planes along ``depth_axis``.

        Materials: air, soft tissue and bone densities (g/cm³), and the adipose part of soft
        tissue. Label groups: mask and mask × density of each of the pack's (one or two) groups.
        """
        index = np.moveaxis(self.hu_index[box], depth_axis, 0)
        if not pack.groups:
            # One 16-byte gather per voxel (four float32 channels viewed as one complex128).
            rows = _LUT_ROWS[np.ascontiguousarray(index)]
            return rows.view(np.float32).reshape(*index.shape, 4)
        density = _DENSITY[index]
        channel = np.moveaxis(self.channel[box], depth_axis, 0)
        out = np.zeros((*index.shape, 4), np.float32)
        for slot, group in enumerate(pack.groups):
            mask = channel == group + 1
            out[..., 2 * slot] = mask
            np.multiply(density, mask, out=out[..., 2 * slot + 1])
        return out

    def planes(
        self, pack: _Pack, layout: PlaneLayout, chunk_mb: float
    ) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[slice, slice, slice], tuple[float, float]]]:
        """Prepared planes of a pack, chunk by chunk: ``(planes, depths, box, origin)``.

        ``origin`` is the array index, along the plane axes, where the first sample's block starts.

        Planes are decimated by the layout's factors and, for the materials pack, summed in
        groups of ``layout.group`` (``depths`` are then the groups' centres). Label packs are
        never grouped: their per-plane weights differ from view to view.
        """
        depth = layout.depth_axis
        group = 1 if pack.groups else layout.group
        base = (pack.groups, tuple((s.start, s.stop) for s in pack.box), depth, layout.factors)
        # Planes grouped more finely than these views allow serve them too (just more warps).
        usable = [int(k[-1]) for k in self._cache if k[:-1] == base and int(k[-1]) <= group]  # type: ignore[call-overload]
        if usable:
            planes, depths, origin = self._cache[base + (max(usable),)]
            yield planes, depths, pack.box, origin
            return
        key = base + (group,)
        a, b = layout.plane_axes
        box = pack.box
        area = (box[a].stop - box[a].start) * (box[b].stop - box[b].start)
        chunk = max(group, int(chunk_mb * 2**20 // max(48 * area, 1)) // group * group)
        start, stop = box[depth].start, box[depth].stop
        total = (stop - start) * area * 16 / (layout.factors[0] * layout.factors[1] * group)
        keep = total <= self.cache_bytes - sum(c[0].nbytes for c in self._cache.values())
        kept: list[tuple[np.ndarray, np.ndarray]] = []
        for c0 in range(start, stop, chunk):
            c1 = min(stop, c0 + chunk)
            sub = list(box)
            sub[depth] = slice(c0, c1)
            # A few planes at a time, so the full-resolution channels stay in the CPU's cache.
            parts = []
            for s0 in range(c0, c1, 8):
                sub[depth] = slice(s0, min(c1, s0 + 8))
                part, shifts = _prefilter(self.block(pack, tuple(sub), depth), layout.factors)  # type: ignore[arg-type]
                parts.append(part)
            sub[depth] = slice(c0, c1)
            planes = parts[0] if len(parts) == 1 else np.concatenate(parts)
            depths = np.arange(c0, c1, dtype=np.float64)
            if group > 1:
                extra = -len(depths) % group
                if extra:
                    planes = np.concatenate([planes, np.zeros((extra, *planes.shape[1:]), np.float32)])
                    depths = np.r_[depths, depths[-1] + 1 + np.arange(extra)]
                planes = planes.reshape(-1, group, *planes.shape[1:]).sum(axis=1)
                depths = depths.reshape(-1, group).mean(axis=1)
            if keep:
                kept.append((planes, depths))
            origin = (box[a].start + shifts[0], box[b].start + shifts[1])
            yield planes, depths, tuple(sub), origin  # type: ignore[misc]
        if keep and kept:
            self._cache[key] = (
                np.concatenate([p for p, _ in kept]),
                np.concatenate([d for _, d in kept]),
                origin,
            )


_LUT, _ = material_lut()
_DENSITY = np.ascontiguousarray(_LUT[:, : len(MATERIALS)].sum(axis=1))  # adipose is within soft tissue
_LUT_ROWS = np.ascontiguousarray(_LUT).view(np.complex128).ravel()


def _boxes_and_counts(
    channel: np.ndarray, n_groups: int
) -> tuple[list[tuple[slice, slice, slice] | None], np.ndarray]:
    """Bounding box (None when empty) and voxel count of every group ``1..n_groups``.

    Computed slab by slab from per-axis occupancy, without full-size index arrays.
    """
    n = n_groups + 1
    nk, nj, ni = channel.shape
    occupied = [np.zeros((nk, n), bool), np.zeros((nj, n), bool), np.zeros((ni, n), bool)]
    counts = np.zeros(n, np.int64)
    step = max(1, int(2**22 // max(1, nj * ni)))
    for k0 in range(0, nk, step):
        slab = channel[k0 : k0 + step].astype(np.int32)
        per_k = np.bincount(
            (np.arange(len(slab), dtype=np.int32)[:, None, None] * n + slab).ravel(), minlength=len(slab) * n
        )
        per_k = per_k.reshape(len(slab), n)
        counts += per_k.sum(axis=0)
        occupied[0][k0 : k0 + len(slab)] |= per_k > 0
        per_j = np.bincount(
            (np.arange(nj, dtype=np.int32)[None, :, None] * n + slab).ravel(), minlength=nj * n
        )
        occupied[1] |= per_j.reshape(nj, n) > 0
        per_i = np.bincount(
            (np.arange(ni, dtype=np.int32)[None, None, :] * n + slab).ravel(), minlength=ni * n
        )
        occupied[2] |= per_i.reshape(ni, n) > 0
    boxes: list[tuple[slice, slice, slice] | None] = []
    for g in range(1, n):
        spans = [np.nonzero(axis[:, g])[0] for axis in occupied]
        if len(spans[0]) == 0:
            boxes.append(None)
        else:
            boxes.append(tuple(slice(int(x[0]), int(x[-1]) + 1) for x in spans))  # type: ignore[arg-type]
    return boxes, counts[1:]


def _box_size(box: tuple[slice, ...]) -> int:
    return int(np.prod([s.stop - s.start for s in box]))


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, slice, slice]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _box_window(
    projection: np.ndarray,
    index_to_world: np.ndarray,
    box: tuple[slice, ...],
    rows: int,
    cols: int,
    margin: int = 3,
) -> tuple[int, int, int, int] | None:
    """Detector window ``(u0, v0, u1, v1)`` (exclusive ends) covering the box's shadow, or None."""
    lo = [s.start - 0.5 for s in box][::-1]  # (i, j, k)
    hi = [s.stop - 0.5 for s in box][::-1]
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    uv, _ = project_points(projection, (corners @ index_to_world.T)[:, :3])
    # The margin covers the bilinear ramp and the prefilter's spread, each about a pixel.
    u0 = max(0, int(math.floor(uv[:, 0].min())) - margin)
    v0 = max(0, int(math.floor(uv[:, 1].min())) - margin)
    u1 = min(cols, int(math.ceil(uv[:, 0].max())) + margin + 1)
    v1 = min(rows, int(math.ceil(uv[:, 1].max())) + margin + 1)
    if u1 <= u0 or v1 <= v0:
        return None
    return u0, v0, u1, v1


def _prefilter(planes: np.ndarray, factors: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Decimate ``(P, A, B, C)`` planes by ``factors`` along A and B with a tent filter.

    The tent (a box of ``f`` voxels convolved with the block average of ``f`` voxels) has a
    squared-sinc response that suppresses what a plain block average would alias, and each voxel's
    weights over the blocks sum to ``1/f``, so integrals are kept exactly. The planes are padded
    so that nothing spreads past the edge.

    Returns the planes and, per axis, the array index ``o`` such that sample ``y`` is centred on
    ``o + f·y + (f−1)/2`` relative to the planes' first voxel.
    """
    import cv2

    fa, fb = factors
    if fa == 1 and fb == 1:
        return np.ascontiguousarray(planes, dtype=np.float32), (0.0, 0.0)
    n, a, b, c = planes.shape
    pad_a, pad_b = (fa if fa > 1 else 0), (fb if fb > 1 else 0)
    rows = -(-(a + 2 * pad_a) // fa) * fa
    cols = -(-(b + 2 * pad_b) // fb) * fb
    out = np.empty((n, rows // fa, cols // fb, c), np.float32)
    for p in range(n):
        padded = cv2.copyMakeBorder(
            planes[p], pad_a, rows - a - pad_a, pad_b, cols - b - pad_b, cv2.BORDER_CONSTANT, value=0
        )
        blurred = cv2.boxFilter(padded, -1, (fb, fa), normalize=True, borderType=cv2.BORDER_CONSTANT)
        out[p] = cv2.resize(blurred, (cols // fb, rows // fa), interpolation=cv2.INTER_AREA).reshape(
            rows // fa, cols // fb, c
        )

    def origin(f: int, pad: int) -> float:
        # The box is centred on f//2 (its anchor), the block on (f-1)/2; the pad shifts everything.
        return 0.0 if f == 1 else float(-pad + (f - 1) - f // 2 - (f - 1) / 2.0)

    return out, (origin(fa, pad_a), origin(fb, pad_b))


def render(
    scene: Scene,
    geometry: Geometry,
    projections: np.ndarray,
    *,
    kernel: str = "auto",
    device: str = "cpu",
    max_shift_px: float = 0.25,
    prefilter: bool = True,
    chunk_mb: float = 128.0,
) -> Projections:
    """Project ``scene`` for every view in ``projections`` (``(B, 3, 4)`` or ``(3, 4)``).

    Parameters
    ----------
    scene
        The CT and label groups.
    geometry
        Detector size, pixel spacing and distances (the matrices must come from it).
    projections
        Projection matrices, patient LPS mm → pixel (col, row); see :mod:`drr.geometry`.
    kernel
        ``opencv``, ``torch`` or ``auto`` (OpenCV on CPU, torch on CUDA).
    device
        ``cpu`` or a CUDA device (torch kernel only).
    max_shift_px
        Largest sample displacement, in pixels, allowed when adjacent planes are summed.
    prefilter
        Decimate planes to the detector footprint first with a tent filter (prevents aliasing).
    chunk_mb
        Memory for one chunk of planes; bounds peak memory for large CTs.

    Raises
    ------
    ValueError
        For a source inside the volume, an unknown kernel or malformed matrices.
    """
    matrices = np.asarray(projections, dtype=np.float64)
    if matrices.ndim == 2:
        matrices = matrices[None]
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 4) or not np.all(np.isfinite(matrices)):
        raise ValueError(f"projections must be finite (B, 3, 4) matrices, not shape {matrices.shape}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    if kernel == "auto":
        kernel = "opencv" if str(device) == "cpu" else "torch"
    if kernel == "opencv" and str(device) != "cpu":
        raise ValueError("the opencv kernel runs on the CPU only; use kernel='torch' for CUDA")
    for matrix in matrices:
        check_source_outside(matrix, scene.index_to_world, scene.shape)

    n_views, rows, cols = len(matrices), geometry.rows, geometry.cols
    k = len(scene.groups)
    packs = scene.packs()
    warper: _Warper = _OpenCVWarper() if kernel == "opencv" else _TorchWarper(device)
    # The torch kernel accumulates on its device and assembles the outputs there: one copy back.
    acc = warper.zeros((n_views, len(packs), rows, cols, 4))
    axes = np.array([depth_axis_for(m, geometry, scene.index_to_world) for m in matrices])
    factors_img = np.zeros((n_views, rows, cols), np.float32)
    factors_map = np.zeros((n_views, rows, cols), np.float32)
    for axis in np.unique(axes):
        views = np.nonzero(axes == axis)[0]
        layout = plan_layout(
            matrices[views],
            geometry,
            scene.index_to_world,
            scene.shape,
            int(axis),
            max_shift_px=max_shift_px,
            prefilter=prefilter,
        )
        for v in views:
            factors_img[v], factors_map[v] = pixel_factors(
                matrices[v], geometry, scene.index_to_world, int(axis)
            )
        index = None if len(views) == n_views else warper.index(views)
        for p, pack in enumerate(packs):
            sub_acc = acc[:, p] if index is None else acc[index, p]  # a view, or a copy
            _render_pack(scene, pack, layout, matrices[views], sub_acc, warper, chunk_mb)
            if index is not None:
                acc[index, p] = sub_acc

    f_img, f_map = warper.asarray(factors_img), warper.asarray(factors_map)
    materials = warper.zeros((n_views, len(MATERIALS), rows, cols))
    adipose = warper.zeros((n_views, rows, cols))
    maps = warper.zeros((n_views, k, rows, cols))
    mass = warper.zeros((n_views, k, rows, cols))
    for p, pack in enumerate(packs):
        if not pack.groups:
            for m in range(len(MATERIALS)):
                materials[:, m] = acc[:, p, :, :, m] * f_img / 10.0
            adipose[:] = acc[:, p, :, :, len(MATERIALS)] * f_img / 10.0
            continue
        for slot, group in enumerate(pack.groups):
            maps[:, group] = acc[:, p, :, :, 2 * slot] * f_map
            mass[:, group] = acc[:, p, :, :, 2 * slot + 1] * f_map
    return Projections(
        warper.numpy(materials),
        warper.numpy(maps),
        warper.numpy(mass),
        geometry.iso_pixel_area_mm2,
        tuple(g.name for g in scene.groups),
        warper.numpy(adipose),
    )


def _render_pack(
    scene: Scene,
    pack: _Pack,
    layout: PlaneLayout,
    matrices: np.ndarray,
    acc: Any,
    warper: _Warper,
    chunk_mb: float,
) -> None:
    """Warp one pack's planes for every view into ``acc`` ``(V, H, W, 4)``, chunk by chunk."""
    depth = layout.depth_axis
    spacing = float(scene.spacing[depth])
    rows, cols = acc.shape[1:3]
    for planes, depths, box, origin in scene.planes(pack, layout, chunk_mb):
        jobs = []
        for v, matrix in enumerate(matrices):
            window = _box_window(matrix, scene.index_to_world, box, rows, cols)
            if window is None:
                continue
            if pack.groups:
                weights = plane_distances(matrix, scene.index_to_world, depth, depths) ** 2 * spacing
            else:
                weights = np.full(len(depths), spacing)
            homographies = plane_homographies(
                matrix, scene.index_to_world, layout, depths, origin, window[:2]
            )
            jobs.append(_Job(v, window, weights.astype(np.float32), homographies))
        if jobs:
            warper.accumulate(planes, jobs, acc)


@dataclass(frozen=True)
class _Job:
    view: int
    window: tuple[int, int, int, int]  # u0, v0, u1, v1
    weights: np.ndarray  # per plane
    homographies: np.ndarray  # per plane: plane samples -> window pixels


class _Warper:
    """Where the sums live: NumPy arrays (OpenCV kernel) or tensors on a device (torch kernel)."""

    def accumulate(self, planes: np.ndarray, jobs: list[_Job], acc: Any) -> None:
        raise NotImplementedError

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return np.zeros(shape, np.float32)

    def asarray(self, array: np.ndarray) -> Any:
        return array

    def index(self, views: np.ndarray) -> Any:
        return views

    def numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)


class _OpenCVWarper(_Warper):
    """Bilinear 4-channel perspective warps, one plane at a time, weighted as they are added."""

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2

    def accumulate(self, planes: np.ndarray, jobs: list[_Job], acc: np.ndarray) -> None:
        cv2 = self._cv2
        for job in jobs:
            u0, v0, u1, v1 = job.window
            local = np.zeros((v1 - v0, u1 - u0, 4), np.float32)
            for plane, homography, weight in zip(planes, job.homographies, job.weights, strict=True):
                warped = cv2.warpPerspective(
                    plane,
                    homography,
                    (u1 - u0, v1 - v0),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0,
                )
                cv2.scaleAdd(warped, float(weight), local, dst=local)
            acc[job.view, v0:v1, u0:u1] += local


class _TorchWarper(_Warper):
    """``grid_sample`` over all (view, plane) pairs of a step at once, on CPU or CUDA.

    The sums live on the device until the outputs are assembled. Sample positions are computed
    in float32 from homographies inverted and normalised in float64 (positions of a few hundred
    samples keep about 1e-5 of a sample), by element-wise arithmetic only, so that no reduced-
    precision (TF32) matrix product can enter. ``batch_mb`` bounds one step's temporaries
    (default: 512 MB; on CUDA a quarter of the free memory, at most 4 GB).
    """

    def __init__(self, device: str, batch_mb: float | None = None) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        if batch_mb is None:
            batch_mb = 512.0
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                batch_mb = min(4096.0, free / 4 / 2**20)
        self.batch_bytes = batch_mb * 2**20

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self._torch.zeros(shape, dtype=self._torch.float32, device=self.device)

    def asarray(self, array: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def index(self, views: np.ndarray) -> Any:
        return self._torch.from_numpy(np.asarray(views, np.int64)).to(self.device)

    def numpy(self, array: Any) -> np.ndarray:
        return array.cpu().numpy()

    def accumulate(self, planes: np.ndarray, jobs: list[_Job], acc: Any) -> None:
        torch = self._torch
        n_planes, height, width, _ = planes.shape
        source = torch.from_numpy(planes).to(self.device).permute(0, 3, 1, 2)  # (P, 4, A, B)
        u0 = min(j.window[0] for j in jobs)
        v0 = min(j.window[1] for j in jobs)
        u1 = max(j.window[2] for j in jobs)
        v1 = max(j.window[3] for j in jobs)
        ww, wh = u1 - u0, v1 - v0
        n_views = len(jobs)
        # Views are stacked along the grid's rows, so one grid_sample call warps every plane of
        # the step for every view without copying the planes. Temporaries per (plane, view,
        # pixel): three coordinates, the grid's two, four samples and their weighted copy.
        per_plane = 4 * 16 * ww * wh * n_views
        step = max(1, int(self.batch_bytes // per_plane))
        rebase = np.stack(
            [np.array([[1.0, 0, j.window[0] - u0], [0, 1.0, j.window[1] - v0], [0, 0, 1.0]]) for j in jobs]
        )
        homographies = np.stack([j.homographies for j in jobs])  # (V, P, 3, 3)
        inverse = np.linalg.inv(rebase[:, None] @ homographies)  # window pixel -> plane sample
        inverse /= inverse[..., 2:3, 2:3]
        # straight into grid_sample's coordinates (align_corners): x' = 2 x / (width - 1) - 1
        inverse[..., 0, :] *= 2.0 / max(width - 1, 1)
        inverse[..., 1, :] *= 2.0 / max(height - 1, 1)
        coeff = torch.from_numpy(inverse.transpose(1, 0, 2, 3).astype(np.float32)).to(self.device)
        weights = torch.from_numpy(np.stack([j.weights for j in jobs]).T.copy()).to(self.device)  # (P, V)
        uu = torch.arange(ww, device=self.device, dtype=torch.float32).view(1, 1, 1, ww)
        vv = torch.arange(wh, device=self.device, dtype=torch.float32).view(1, 1, wh, 1)
        total = torch.zeros((n_views, 4, wh, ww), device=self.device, dtype=torch.float32)
        for s in range(0, n_planes, step):
            e = min(n_planes, s + step)
            c = coeff[s:e, :, :, :, None, None]  # (p, v, 3, 3, 1, 1)
            w = c[:, :, 2, 0] * uu + c[:, :, 2, 1] * vv + c[:, :, 2, 2]  # (p, v, wh, ww)
            x = (c[:, :, 0, 0] * uu + c[:, :, 0, 1] * vv + c[:, :, 0, 2]) / w - 1.0
            y = (c[:, :, 1, 0] * uu + c[:, :, 1, 1] * vv + c[:, :, 1, 2]) / w - 1.0
            grid = torch.stack([x, y], dim=-1).reshape(e - s, n_views * wh, ww, 2)
            del w, x, y
            sampled = torch.nn.functional.grid_sample(
                source[s:e], grid, mode="bilinear", padding_mode="zeros", align_corners=True
            ).reshape(e - s, 4, n_views, wh, ww)
            del grid
            sampled *= weights[s:e].view(e - s, 1, n_views, 1, 1)
            total += sampled.sum(dim=0).transpose(0, 1)
            del sampled
        result = total.permute(0, 2, 3, 1)  # (V, wh, ww, 4)
        for index, job in enumerate(jobs):
            ju0, jv0, ju1, jv1 = job.window
            acc[job.view, jv0:jv1, ju0:ju1] += result[index, jv0 - v0 : jv1 - v0, ju0 - u0 : ju1 - u0]
