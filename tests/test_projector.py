"""The projector against exact references: a slab's and a sphere's line integrals, exact ray-voxel
intersections, voxel counts for volumes and masses, 90° poses, and the two kernels against each other."""

from __future__ import annotations

import numpy as np
import pytest

from drr.geometry import Geometry, pixel_rays, source_position
from drr.planes import axis_directions
from drr.poses import Pose
from drr.projector import LabelGroup, Scene, render
from drr.reference import exact_projection
from tests.conftest import oblique_direction

GEO = Geometry(sid=1000.0, sod=800.0, rows=96, cols=96, pixel_spacing=2.0)


def grid_affine(shape: tuple[int, int, int], spacing: float | tuple[float, float, float], direction=None):
    """Affine of a grid centred on the origin; ``shape`` is (nk, nj, ni)."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    d = np.eye(3) if direction is None else np.asarray(direction)
    affine = np.eye(4)
    affine[:3, :3] = d @ np.diag(sp)
    centre = (np.array(shape[::-1]) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def world_coords(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk @ affine.T)[..., :3]


def posed_view(geo: Geometry, pose: Pose, centre: np.ndarray | None = None) -> np.ndarray:
    c = np.zeros(3) if centre is None else centre
    return geo.projection_matrix(c, pose.matrix(c))


def density_of_hu(hu: float) -> float:
    return max(min(0.001029 * hu + 1.03, 0.0005886 * hu + 1.03), 0.0)


@pytest.mark.parametrize("kernel", ["opencv", "torch"])
def test_slab_line_integral_is_exact(kernel: str) -> None:
    # A soft-tissue slab 40 mm thick (y), wider than the beam: every ray crosses it fully.
    shape = (60, 20, 60)
    affine = grid_affine(shape, (6.0, 2.0, 6.0))
    hu = np.zeros(shape, np.int16)
    scene = Scene(hu, affine)
    geo = Geometry(sid=1000.0, sod=800.0, rows=40, cols=40, pixel_spacing=4.0)
    matrix = geo.projection_matrix(np.zeros(3), Pose(rx=4.0, rz=-3.0).matrix(np.zeros(3)))
    out = render(scene, geo, matrix, kernel=kernel)
    rays = pixel_rays(matrix, geo.rows, geo.cols)
    expected = density_of_hu(0) * 40.0 / np.abs(rays[..., 1]) / 10.0  # g/cm²
    np.testing.assert_allclose(out.materials[0, 1], expected, rtol=2e-4)
    assert np.all(out.materials[0, [0, 2]] == 0)


@pytest.mark.parametrize("kernel", ["opencv", "torch"])
def test_fat_is_reported_apart_and_counted_once(kernel: str) -> None:
    # A fat slab (−100 HU) over a muscle slab (40 HU), 20 mm each along y, wider than the beam.
    shape = (60, 20, 60)
    affine = grid_affine(shape, (6.0, 2.0, 6.0))
    hu = np.full(shape, 40, np.int16)
    hu[:, :10] = -100
    scene = Scene(hu, affine)
    geo = Geometry(sid=1000.0, sod=800.0, rows=40, cols=40, pixel_spacing=4.0)
    matrix = geo.projection_matrix(np.zeros(3), Pose(rx=3.0, rz=2.0).matrix(np.zeros(3)))
    out = render(scene, geo, matrix, kernel=kernel)
    path = 20.0 / np.abs(pixel_rays(matrix, geo.rows, geo.cols)[..., 1]) / 10.0  # cm through each slab
    np.testing.assert_allclose(out.adipose[0], density_of_hu(-100) * path, rtol=5e-4)
    soft = (density_of_hu(-100) + density_of_hu(40)) * path
    np.testing.assert_allclose(out.materials[0, 1], soft, rtol=5e-4)
    assert np.all(out.materials[0, [0, 2]] == 0)


def sphere_scene(radius: float = 40.0, spacing: float = 2.0, n: int = 56) -> tuple[Scene, np.ndarray]:
    shape = (n, n, n)
    affine = grid_affine(shape, spacing)
    r = np.linalg.norm(world_coords(shape, affine), axis=-1)
    fraction = np.clip((radius - r) / spacing + 0.5, 0.0, 1.0)  # partial volume at the surface
    hu = np.where(fraction > 0.5, 0, -1000).astype(np.int16)
    labels = (fraction > 0.5).astype(np.uint8)
    return Scene(hu, affine, labels, [LabelGroup("ball", (1,))]), fraction


def test_sphere_line_integral_and_volume() -> None:
    radius = 40.0
    scene, _ = sphere_scene(radius)
    matrix = GEO.projection_matrix(np.zeros(3))
    out = render(scene, GEO, matrix)
    # Analytic chord through the sphere for every ray.
    source = source_position(matrix)
    rays = pixel_rays(matrix, GEO.rows, GEO.cols).reshape(-1, 3)
    along = -(rays @ source)
    miss2 = source @ source - along**2
    chord = (2 * np.sqrt(np.clip(radius**2 - miss2, 0, None))).reshape(GEO.rows, GEO.cols)
    soft = out.materials[0, 1] * 10 / density_of_hu(0)  # back to mm
    inner = chord > 0.5 * 2 * radius  # away from the edge, where voxelisation dominates
    assert np.mean(np.abs(soft[inner] / chord[inner] - 1)) < 0.01
    # Volume: the map integrates to the voxel count and to the analytic sphere.
    volume = out.maps[0, 0].sum() * out.pixel_area_mm2
    assert volume == pytest.approx(scene.group_volumes_mm3()[0], rel=1e-3)
    assert volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=5e-3)
    mass = out.mass_maps[0, 0].sum() * out.pixel_area_mm2 / 1000
    assert mass == pytest.approx(scene.group_masses_g()[0], rel=1e-3)
    # And the map is a thickness at the isocentre: the centre pixel reads the diameter.
    centre = out.maps[0, 0][GEO.rows // 2 - 1 : GEO.rows // 2 + 1, GEO.cols // 2 - 1 : GEO.cols // 2 + 1]
    assert centre.mean() == pytest.approx(2 * radius, rel=0.02)


def smooth_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 1500 - 200).astype(np.int16)  # soft tissue and bone, no air


@pytest.mark.parametrize("kernel", ["opencv", "torch"])
def test_matches_exact_reference_for_an_oblique_ct_and_posed_view(kernel: str) -> None:
    shape = (40, 36, 44)
    affine = grid_affine(shape, (2.0, 2.5, 3.0), oblique_direction())
    hu = smooth_volume(shape)
    scene = Scene(hu, affine)
    geo = Geometry(sid=1000.0, sod=750.0, rows=48, cols=48, pixel_spacing=3.0)
    matrix = geo.projection_matrix(
        np.array([5.0, -3.0, 2.0]), Pose(rx=6, ry=-4, rz=12, tx=3).matrix(np.ones(3))
    )
    out = render(scene, geo, matrix, kernel=kernel)
    from drr.materials import density_from_hu

    reference = exact_projection(density_from_hu(hu), affine, geo, matrix) / 10.0
    ours = out.materials[0].sum(axis=0)
    covered = reference > 0.5 * reference.max()
    assert np.mean(np.abs(ours[covered] / reference[covered] - 1)) < 0.01


def test_volume_map_matches_exact_volume_weighting() -> None:
    shape = (40, 40, 40)
    affine = grid_affine(shape, 2.0)
    r = np.linalg.norm(world_coords(shape, affine) - [6.0, -4.0, 3.0], axis=-1)
    labels = (r < 30).astype(np.uint8)
    scene = Scene(np.zeros(shape, np.int16), affine, labels, [LabelGroup("ball", (1,))])
    matrix = GEO.projection_matrix(np.zeros(3), Pose(rz=20).matrix(np.zeros(3)))
    out = render(scene, GEO, matrix)
    reference = exact_projection(labels, affine, GEO, matrix, weighting="volume")
    assert reference.sum() * GEO.iso_pixel_area_mm2 == pytest.approx(scene.group_volumes_mm3()[0], rel=3e-3)
    inside = reference > 0.5 * reference.max()
    assert np.mean(np.abs(out.maps[0, 0][inside] / reference[inside] - 1)) < 0.02


def test_kernels_agree() -> None:
    shape = (30, 34, 38)
    affine = grid_affine(shape, 3.0, oblique_direction())
    labels = (smooth_volume(shape, seed=2) > 700).astype(np.uint8) + (smooth_volume(shape, seed=3) > 900)
    scene = Scene(smooth_volume(shape), affine, labels, [LabelGroup("a", (1,)), LabelGroup("b", (2,))])
    matrices = np.stack([posed_view(GEO, Pose(rx=a, rz=-a)) for a in (0, 7)])
    a = render(scene, GEO, matrices, kernel="opencv")
    b = render(scene, GEO, matrices, kernel="torch")
    for x, y in ((a.materials, b.materials), (a.maps, b.maps), (a.mass_maps, b.mass_maps)):
        assert np.abs(x - y).sum() / np.abs(y).sum() < 2e-3


def test_quarter_turns_give_rotated_and_transposed_images() -> None:
    n = 40
    shape = (n, n, n)
    affine = grid_affine(shape, 2.5)
    xyz = world_coords(shape, affine)
    # An asymmetric object, symmetric front-to-back (y) so that the view does not depend on depth.
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    inside = (np.abs(y) < 20) & (x > -25) & (x < 10) & (np.abs(z - 5) < 15)
    inside |= np.linalg.norm(xyz - [20, 0, -20], axis=-1) < 8
    hu = np.where(inside, 800, -1000).astype(np.int16)
    geo = Geometry(sid=1000.0, sod=800.0, rows=64, cols=64, pixel_spacing=2.5)
    scene = Scene(hu, affine)
    nominal = render(scene, geo, geo.projection_matrix(np.zeros(3))).materials[0, 2]
    # ry = +90: superior turns to the patient's left, i.e. up turns to the image's right: clockwise.
    turned = render(scene, geo, posed_view(geo, Pose(ry=90))).materials[0, 2]
    np.testing.assert_allclose(turned, np.rot90(nominal, k=-1), atol=1e-3 * nominal.max())
    # rz = +90 turns the patient's +x to +y: the same view as a CT whose x and y axes were swapped
    # (x' = -y, y' = x), which exercises a different depth axis in the projector.
    # value at (i', j') = hu[j = i', i = n - 1 - j']
    swapped = np.ascontiguousarray(np.flip(hu, axis=1).transpose(0, 2, 1))
    direct = render(Scene(swapped, affine), geo, geo.projection_matrix(np.zeros(3))).materials[0, 2]
    posed = render(scene, geo, posed_view(geo, Pose(rz=90))).materials[0, 2]
    np.testing.assert_allclose(posed, direct, atol=2e-2 * direct.max())
    assert np.abs(posed - direct).mean() < 2e-3 * direct.max()


def test_prefilter_prevents_aliasing() -> None:
    # Stripes one voxel wide (0.5 mm) under a detector whose pixels cover about 2 mm.
    shape = (80, 20, 400)
    affine = grid_affine(shape, (0.5, 2.0, 2.0))
    hu = np.zeros(shape, np.int16)
    hu[..., ::2] = 1000
    hu[..., 1::2] = -1000
    scene = Scene(hu, affine)
    geo = Geometry(sid=1000.0, sod=800.0, rows=16, cols=80, pixel_spacing=2.47)
    matrix = geo.projection_matrix(np.zeros(3))
    clean = render(scene, geo, matrix).materials[0].sum(axis=0)[4:-4, 10:-10]
    aliased = render(scene, geo, matrix, prefilter=False).materials[0].sum(axis=0)[4:-4, 10:-10]
    assert clean.std() / clean.mean() < 0.01
    assert aliased.std() / aliased.mean() > 3 * clean.std() / clean.mean()


def test_plane_grouping_changes_little() -> None:
    shape = (30, 120, 40)
    affine = grid_affine(shape, (3.0, 0.5, 3.0))
    scene = Scene(smooth_volume(shape, seed=4), affine)
    matrix = GEO.projection_matrix(np.zeros(3), Pose(rx=5).matrix(np.zeros(3)))
    grouped = render(scene, GEO, matrix, max_shift_px=0.5).materials
    single = render(scene, GEO, matrix, max_shift_px=0.0).materials
    assert np.abs(grouped - single).sum() / single.sum() < 2e-3


def test_bad_inputs_are_refused() -> None:
    shape = (20, 20, 20)
    scene = Scene(np.zeros(shape, np.int16), grid_affine(shape, 10.0))
    close = Geometry(sid=200.0, sod=50.0, rows=8, cols=8, pixel_spacing=1.0)
    with pytest.raises(ValueError, match="source .* lies inside the volume"):
        render(scene, close, close.projection_matrix(np.zeros(3)))
    with pytest.raises(ValueError, match=r"\(B, 3, 4\)"):
        render(scene, GEO, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="kernel must be one of"):
        render(scene, GEO, GEO.projection_matrix(np.zeros(3)), kernel="fast")
    with pytest.raises(ValueError, match="labels shape"):
        Scene(np.zeros(shape), np.eye(4), np.zeros((2, 2, 2)), [LabelGroup("a", (1,))])
    with pytest.raises(ValueError, match="invertible"):
        Scene(np.zeros(shape), np.zeros((4, 4)))


def test_metal_is_clipped_with_a_warning() -> None:
    hu = np.zeros((4, 4, 4), np.float32)
    hu[0, 0, 0] = 8000
    with pytest.warns(UserWarning, match="1 voxels above 3000 HU"):
        scene = Scene(hu, np.eye(4))
    assert int(scene.hu_index.max()) == 3000 + 1024


def test_axis_directions_follow_the_affine() -> None:
    affine = grid_affine((4, 5, 6), (1.0, 2.0, 3.0), oblique_direction())
    directions, spacing = axis_directions(affine)
    np.testing.assert_allclose(spacing, [3.0, 2.0, 1.0])  # array order: k, j, i
    np.testing.assert_allclose(directions[2], oblique_direction()[:, 0])


def test_group_boxes_and_counts_match_a_direct_search() -> None:
    from scipy import ndimage

    from drr.projector import _boxes_and_counts

    rng = np.random.default_rng(5)
    channel = np.zeros((23, 17, 19), np.uint8)
    for g in (1, 2, 4):
        k, j, i = rng.integers(0, 10, 3)
        channel[k : k + rng.integers(1, 12), j : j + rng.integers(1, 7), i : i + rng.integers(1, 9)] = g
    boxes, counts = _boxes_and_counts(channel, 4)
    assert boxes == ndimage.find_objects(channel, max_label=4)
    np.testing.assert_array_equal(counts, np.bincount(channel.ravel(), minlength=5)[1:])
