"""Volume preservation: every muscle's map integrates to its voxel volume (and mass) within 0.5 %,
for phantoms and for the real CT, whenever its shadow lies on the detector."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from drr.geometry import project_points
from drr.poses import Pose
from drr.presets import load_preset
from drr.projector import LabelGroup, Scene, render
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.paths import config_file
from xraymuscle.phantom.anatomy import build_phantom, sample_params
from xraymuscle.volume import read_ct_and_labels

POSES = [Pose(), Pose(rx=4, ry=-2, rz=5, tx=10, tz=-8), Pose(rx=-5, ry=3, rz=-4, ty=6)]


def on_detector(scene: Scene, matrix: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Per group: whether every voxel centre (with a one-pixel margin) projects onto the detector."""
    inside = []
    for g in range(len(scene.groups)):
        uv, _ = project_points(matrix, scene.group_points(g))
        inside.append(
            bool(len(uv)) and uv.min() > 1 and uv[:, 0].max() < cols - 2 and uv[:, 1].max() < rows - 2
        )
    return np.array(inside)


def check_preservation(scene: Scene, preset_size: int | None = None, detector: float | None = None) -> int:
    preset = load_preset(
        config_file("geometry", "hip_ap"),
        image_size=preset_size,
        pixel_spacing=None if detector is None else detector / (preset_size or 256),
    )
    geo = preset.geometry
    centre = scene.centroid()
    matrices = np.stack([geo.projection_matrix(centre, p.matrix(centre)) for p in POSES])
    out = render(scene, geo, matrices)
    volumes = scene.group_volumes_mm3()
    masses = scene.group_masses_g()
    checked = 0
    for b, matrix in enumerate(matrices):
        full = on_detector(scene, matrix, geo.rows, geo.cols)
        got_v = out.maps[b].sum(axis=(1, 2)) * out.pixel_area_mm2
        got_m = out.mass_maps[b].sum(axis=(1, 2)) * out.pixel_area_mm2 / 1000
        for g in np.nonzero(full & (volumes > 0))[0]:
            name = scene.groups[g].name
            assert got_v[g] == pytest.approx(volumes[g], rel=5e-3), f"view {b}: volume of {name}"
            assert got_m[g] == pytest.approx(masses[g], rel=5e-3), f"view {b}: mass of {name}"
            checked += 1
    return checked


def phantom_scene(seed: int, spacing: float = 4.0) -> Scene:
    ct, labels = build_phantom(sample_params(np.random.default_rng([seed, 0])), spacing)
    catalog = MuscleCatalog.load()
    table = catalog.check_source("phantom")
    groups = [LabelGroup(m, tuple(table[m])) for m in catalog.muscles]
    return Scene(ct.array, ct.index_to_world, labels.array, groups)


def test_phantom_muscles_keep_their_volume() -> None:
    scene = phantom_scene(5)
    # hip_ap's 40 cm detector: the muscles whose shadow it holds entirely
    assert check_preservation(scene) >= 12
    # a 72 cm detector holds them all
    assert check_preservation(scene, preset_size=360, detector=720.0) == 3 * len(scene.groups)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_phantom_muscles_keep_their_volume_at_2mm(seed: int) -> None:
    scene = phantom_scene(seed, spacing=2.0)
    assert check_preservation(scene, preset_size=360, detector=720.0) == 3 * len(scene.groups)


@pytest.mark.realdata
def test_real_ct_every_label_keeps_its_volume(real_ct_dir: Path) -> None:
    ct, labels = read_ct_and_labels(real_ct_dir / "ct.nii.gz", real_ct_dir / "labels_total_v2.nii.gz")
    names = json.loads((real_ct_dir / "label_names_total_v2.json").read_text())
    present = [int(v) for v in np.unique(labels.array) if v != 0]
    groups = [LabelGroup(str(names.get(str(v), v)), (v,)) for v in present]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*above 3000 HU")  # this CT holds a few such voxels
        scene = Scene(ct.array, ct.index_to_world, labels.array, groups)
    checked = check_preservation(scene)
    assert checked >= 3 * 30  # most of its labels lie on the detector in every view
