"""The torch kernel on a CUDA GPU gives what the CPU kernel gives (skipped without a GPU).

Imports only the rendering engine, so ``benchmarks/gpu_check.sh`` runs it on a machine that has
PyTorch with CUDA and nothing of the rest of the project's dependencies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drr.geometry import Geometry
from drr.poses import Pose
from drr.projector import LabelGroup, Scene, render

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
]


def synthetic_scene(n: int = 48, spacing: float = 3.0) -> Scene:
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*(np.arange(n) - (n - 1) / 2.0,) * 3, indexing="ij")
    body = (i / 20) ** 2 + (j / 14) ** 2 < 1
    hu = np.where(body, 40, -1000) + rng.normal(0, 10, body.shape)
    hu[(np.abs(i) - 9) ** 2 + j**2 < 9] = 900  # two bones
    labels = np.zeros(body.shape, np.uint8)
    labels[body & (i < -3) & (np.abs(k) < 15)] = 1
    labels[body & (i > 3) & (k > -10)] = 2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(n - 1) / 2 * spacing
    return Scene(hu.astype(np.float32), affine, labels, [LabelGroup("left", (1,)), LabelGroup("right", (2,))])


def test_cuda_kernel_matches_cpu_kernel() -> None:
    scene = synthetic_scene()
    geo = Geometry(sid=1000.0, sod=800.0, rows=64, cols=64, pixel_spacing=3.0)
    poses = [Pose(), Pose(rx=5, rz=-4, tx=6), Pose(ry=90), Pose(rz=30)]
    matrices = np.stack([geo.projection_matrix(np.zeros(3), p.matrix(np.zeros(3))) for p in poses])
    cpu = render(scene, geo, matrices, kernel="opencv")
    gpu = render(scene, geo, matrices, kernel="torch", device="cuda")
    for a, b in ((cpu.materials, gpu.materials), (cpu.maps, gpu.maps), (cpu.mass_maps, gpu.mass_maps)):
        assert np.abs(a - b).sum() / np.abs(a).sum() < 2e-3
    volumes = gpu.maps.sum(axis=(2, 3)) * gpu.pixel_area_mm2
    np.testing.assert_allclose(volumes, np.broadcast_to(scene.group_volumes_mm3(), volumes.shape), rtol=5e-3)
