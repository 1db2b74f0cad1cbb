"""On a CUDA GPU: the torch projector, Monte Carlo inference (and the spacing's part of its sd)
and a CycleGAN step give what the CPU gives (skipped without a GPU).

Needs only the rendering engine, the model and the CycleGAN (PyTorch, NumPy, OpenCV, safetensors,
and pydicom, which ``benchmarks/gpu_check.sh`` carries as a wheel), so it runs on a GPU machine
that lacks the rest of the project's dependencies.
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


def test_mc_inference_on_cuda_matches_cpu() -> None:
    """The shipped model's Monte Carlo volumes: the same draws (seeded per image) on both devices."""
    from xraymuscle.inference import mc_predict
    from xraymuscle.model import load_model
    from xraymuscle.paths import default_model_dir

    images = torch.rand(6, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    results = {}
    for device in ("cpu", "cuda"):
        model = load_model(default_model_dir(), device=device)
        results[device] = mc_predict(
            model.network, images, samples=10, pixel_area_mm2=model.pixel_spacing_mm**2,
            map_scale_mm=float(model.meta["map_scale_mm"]), device=device, batch=6, twins=model.twins,
        )  # fmt: skip
    np.testing.assert_allclose(results["cuda"].volume, results["cpu"].volume, rtol=2e-3, atol=0.05)
    np.testing.assert_allclose(results["cuda"].volume_sd, results["cpu"].volume_sd, rtol=2e-2, atol=0.05)


def test_spacing_sd_on_cuda_matches_cpu() -> None:
    """The spacing's part of the sd (``--spacing-sd-percent``): the same on both devices."""
    from xraymuscle.model import load_model
    from xraymuscle.paths import default_model_dir
    from xraymuscle.spacing_error import spacing_sds

    generator = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 128, 128, generator=generator)
    probes = torch.cat([images * 1.2, images * 0.8], dim=1)
    results = {}
    for device in ("cpu", "cuda"):
        model = load_model(default_model_dir(), device=device)
        results[device] = spacing_sds(
            model.network, images, probes, percent=5.0, pixel_area_mm2=model.pixel_spacing_mm**2,
            map_scale_mm=float(model.meta["map_scale_mm"]), twins=model.twins, device=device,
        )  # fmt: skip
    for cuda, cpu in zip(results["cuda"], results["cpu"], strict=True):
        assert cuda is not None and cpu is not None
        np.testing.assert_allclose(cuda, cpu, rtol=2e-2, atol=0.05)


def test_cyclegan_step_in_bf16_on_cuda() -> None:
    """One CycleGAN step under bf16 autocast: finite losses; gradient consistency as on the CPU."""
    from training.config import CycleGanConfig
    from training.cyclegan import ImagePool, PatchDiscriminator, ResnetGenerator, _step
    from training.gradient_consistency import gradient_consistency

    config = CycleGanConfig(crop_size=64, base_channels=8, residual_blocks=2, disc_channels=8, batch_size=4)
    nets = {
        "g_ab": ResnetGenerator(8, 2), "g_ba": ResnetGenerator(8, 2),
        "d_a": PatchDiscriminator(8, 3), "d_b": PatchDiscriminator(8, 3),
    }  # fmt: skip
    nets = {k: v.cuda() for k, v in nets.items()}
    opts = {
        "g": torch.optim.Adam([*nets["g_ab"].parameters(), *nets["g_ba"].parameters()], lr=2e-4),
        "d": torch.optim.Adam([*nets["d_a"].parameters(), *nets["d_b"].parameters()], lr=2e-4),
    }
    rng = np.random.default_rng(0)
    a = torch.rand(4, 1, 64, 64, device="cuda") * 2 - 1
    b = torch.rand(4, 1, 64, 64, device="cuda") * 2 - 1
    losses = _step(nets, opts, ImagePool(4, rng), ImagePool(4, rng), a, b, config, use_amp=True)
    assert all(np.isfinite(v) for v in losses.values()), losses
    np.testing.assert_allclose(
        gradient_consistency(a, b.flip(-1)).cpu().numpy(),
        gradient_consistency(a.cpu(), b.flip(-1).cpu()).numpy(),
        atol=1e-4,
    )
