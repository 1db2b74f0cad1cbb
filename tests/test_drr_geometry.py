"""Geometry, poses and presets: where points land on the detector, and what a pose does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drr.geometry import Geometry, pixel_rays, project_points, source_position
from drr.poses import Pose, PoseRanges, sample_pose
from drr.presets import load_preset
from xraymuscle.paths import config_file

GEO = Geometry(sid=1000.0, sod=800.0, rows=101, cols=121, pixel_spacing=2.0)
ISO = np.array([10.0, -20.0, 30.0])


def test_isocentre_lands_on_the_detector_centre() -> None:
    uv, depth = project_points(GEO.projection_matrix(ISO), ISO[None])
    np.testing.assert_allclose(uv[0], [(GEO.cols - 1) / 2, (GEO.rows - 1) / 2], atol=1e-9)
    assert depth[0] == pytest.approx(GEO.sod)


@pytest.mark.parametrize(
    ("offset", "axis", "sign"),
    [
        ((10.0, 0, 0), 0, +1),  # patient's left: to the image's right
        ((-10.0, 0, 0), 0, -1),  # patient's right: to the image's left
        ((0, 0, 10.0), 1, -1),  # superior: up the image (smaller row)
        ((0, 0, -10.0), 1, +1),
    ],
)
def test_image_orientation_and_magnification(offset: tuple[float, ...], axis: int, sign: int) -> None:
    centre = np.array([(GEO.cols - 1) / 2, (GEO.rows - 1) / 2])
    uv, _ = project_points(GEO.projection_matrix(ISO), (ISO + np.array(offset))[None])
    shift = uv[0] - centre
    expected = 10.0 * GEO.magnification / GEO.pixel_spacing
    assert shift[axis] == pytest.approx(sign * expected)
    assert shift[1 - axis] == pytest.approx(0.0, abs=1e-9)


def test_source_is_anterior_and_rays_point_posterior() -> None:
    matrix = GEO.projection_matrix(ISO)
    np.testing.assert_allclose(source_position(matrix), ISO - np.array([0, GEO.sod, 0]), atol=1e-6)
    rays = pixel_rays(matrix, GEO.rows, GEO.cols)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0)
    assert np.all(rays[..., 1] > 0.9)
    np.testing.assert_allclose(rays[GEO.rows // 2, GEO.cols // 2], [0, 1, 0], atol=1e-12)


def test_pose_rotates_about_the_centre() -> None:
    m = Pose(ry=90).matrix(ISO)
    np.testing.assert_allclose(m @ np.r_[ISO, 1], np.r_[ISO, 1], atol=1e-9)
    moved = m @ np.r_[ISO + [0, 0, 10.0], 1]  # +z turns towards +x
    np.testing.assert_allclose(moved[:3], ISO + [10.0, 0, 0], atol=1e-9)
    shifted = Pose(tx=5, ty=-2, tz=1).matrix(ISO) @ np.r_[ISO, 1]
    np.testing.assert_allclose(shifted[:3], ISO + [5, -2, 1])


def test_pose_sampler_stays_in_range_and_is_reproducible() -> None:
    ranges = PoseRanges(rx=5, ry=0, rz=10, tx=1, ty=2, tz=3)
    poses = [sample_pose(np.random.default_rng([1, i]), ranges) for i in range(200)]
    values = np.array([list(p.to_dict().values()) for p in poses])
    assert np.all(np.abs(values) <= [5, 0, 10, 1, 2, 3])
    assert values[:, 0].std() > 2  # really drawn
    assert sample_pose(np.random.default_rng([1, 7]), ranges) == poses[7]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sid": 0.0}, "sid must be a positive"),
        ({"pixel_spacing": -1.0}, "pixel_spacing must be a positive"),
        ({"rows": 0}, "rows must be a positive"),
        ({"sod": 1200.0}, "between source and detector"),
    ],
)
def test_geometry_refuses_impossible_values(changes: dict[str, float], match: str) -> None:
    fields = {**GEO.to_dict(), **changes}
    with pytest.raises(ValueError, match=match):
        Geometry(**fields)


def test_preset_and_overrides() -> None:
    path = config_file("geometry", "hip_ap")
    preset = load_preset(path)
    g = preset.geometry
    assert (g.rows, g.cols) == (256, 256)
    assert 1000 <= g.sid <= 1100 and g.cols * g.pixel_spacing == pytest.approx(400.0)
    small = load_preset(path, image_size=128).geometry
    assert small.cols * small.pixel_spacing == pytest.approx(400.0)  # same field of view
    moved = load_preset(path, sid=1100.0, pixel_spacing=1.0).geometry
    assert moved.sid - moved.sod == pytest.approx(g.sid - g.sod) and moved.pixel_spacing == 1.0
    assert g.iso_pixel_area_mm2 == pytest.approx((g.pixel_spacing * g.sod / g.sid) ** 2)


def test_preset_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sid: 1000\nsod: 900\nimage_size: 64\ndetector_mm: 300\nzoom: 2\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_preset(bad)
    bad.write_text("sid: 1000\nsod: 900\nimage_size: 64\ndetector_mm: 300\npose_ranges: {rx: -1}\n")
    with pytest.raises(ValueError, match="non-negative"):
        load_preset(bad)
    with pytest.raises(ValueError, match="1 to 4096 pixels a side, not 0"):
        load_preset(config_file("geometry", "hip_ap"), image_size=0)
    with pytest.raises(ValueError, match="1 to 4096 pixels a side, not 4097"):
        load_preset(config_file("geometry", "hip_ap"), image_size=4097)


def test_per_view_factors_agree_with_every_pixels_ray() -> None:
    """The projector's shortcuts (central ray, border pixels, 1/cosφ without the rays) against rays
    computed for every pixel, over strongly tilted views."""
    from drr.geometry import border_pixels, rays_through
    from drr.planes import axis_directions, depth_axis_for, pixel_factors

    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-100.0, -120.0, -150.0]
    directions, _ = axis_directions(affine)
    rng = np.random.default_rng(3)
    for _ in range(6):
        pose = Pose(*rng.uniform(-1, 1, 6) * [40, 30, 40, 15, 10, 15])
        matrix = GEO.projection_matrix(ISO, pose.matrix(ISO))
        rays = pixel_rays(matrix, GEO.rows, GEO.cols)
        pixels = np.array([[0.0, 0.0], [7.0, 3.0], [GEO.cols - 1.0, GEO.rows - 1.0]])
        np.testing.assert_allclose(rays_through(matrix, pixels), rays[[0, 3, -1], [0, 7, -1]], atol=1e-12)
        axis = depth_axis_for(matrix, GEO, affine)
        assert axis == int(np.argmax(np.abs(directions @ rays[GEO.rows // 2, GEO.cols // 2])))
        cos_phi = np.abs(rays @ directions[axis])
        edge = np.abs(rays_through(matrix, border_pixels(GEO.rows, GEO.cols)) @ directions[axis])
        assert edge.min() == pytest.approx(cos_phi.min(), rel=1e-12)  # the steepest ray is on the edge
        line, volume = pixel_factors(matrix, GEO, affine, axis)
        np.testing.assert_allclose(line, 1.0 / cos_phi, rtol=1e-6)
        v, u = np.mgrid[0 : GEO.rows, 0 : GEO.cols]
        f = GEO.focal_length_px
        cos_theta = f / np.sqrt(f**2 + (u - (GEO.cols - 1) / 2) ** 2 + (v - (GEO.rows - 1) / 2) ** 2)
        expected = cos_theta**3 / GEO.sid**2 / cos_phi**3 * GEO.magnification**2
        np.testing.assert_allclose(volume, expected, rtol=1e-6)
