"""The image from DeepDRR (CUDA only) in the built-in geometry; maps still come from our projector.

DeepDRR is an optional extra (``pip install .[deepdrr]``) and needs a CUDA GPU. The scene's
densities and material masks (the same segmentation, see :mod:`drr.materials`) are handed over
with the scene's index-to-LPS affine, and each view is given as its intrinsic matrix and the
camera-from-patient transform recovered from our 3 × 4 matrix, so both renderers share one
geometry (checked in ``benchmarks/gpu_check.sh``: bone edges agree within a pixel).
"""

from __future__ import annotations

import numpy as np

from drr.geometry import Geometry
from drr.imaging import XrayPhysics
from drr.materials import material_lut
from drr.projector import Scene


class BackendUnavailable(RuntimeError):
    """The DeepDRR backend cannot run here (package missing or no CUDA GPU)."""


def check_available() -> None:
    """Raise :class:`BackendUnavailable` with the reason when DeepDRR cannot run."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise BackendUnavailable(f"the deepdrr backend needs torch: {exc}") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("the deepdrr backend needs a CUDA GPU, and none is available here")
    try:
        import deepdrr  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            f"the deepdrr backend needs the deepdrr package (pip install .[deepdrr]): {exc}"
        ) from None


def camera_from_matrix(projection: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The 4 × 4 camera-from-patient transform of a projection matrix made with ``geometry``."""
    extrinsic = np.linalg.inv(geometry.intrinsics()) @ np.asarray(projection, dtype=np.float64)
    extrinsic /= np.linalg.norm(extrinsic[2, :3])
    out = np.eye(4)
    out[:3] = extrinsic
    return out


def deepdrr_images(
    scene: Scene, geometry: Geometry, matrices: np.ndarray, physics: XrayPhysics
) -> np.ndarray:
    """Render ``(B, H, W)`` images ``−ln(I/I0)`` with DeepDRR (requires CUDA)."""
    check_available()
    from deepdrr import Volume, geo  # type: ignore[import-not-found]
    from deepdrr.projector import Projector  # type: ignore[import-not-found]

    lut, _ = material_lut()
    table = lut[:, :3][scene.hu_index]  # (k, j, i, 3): air, soft tissue, bone densities (no fat column)
    density = np.ascontiguousarray(table.sum(axis=-1).transpose(2, 1, 0))  # (i, j, k)
    materials = {
        name: np.ascontiguousarray((table[..., c] > 0).transpose(2, 1, 0))
        for c, name in enumerate(("air", "soft tissue", "bone"))
    }
    volume = Volume.from_parameters(
        data=density, materials=materials, anatomical_from_IJK=geo.FrameTransform(scene.index_to_world)
    )
    intrinsic = geo.CameraIntrinsicTransform.from_sizes(
        sensor_size=(geometry.cols, geometry.rows),
        pixel_size=geometry.pixel_spacing,
        source_to_detector_distance=geometry.sid,
    )
    views = [
        geo.CameraProjection(intrinsic, geo.FrameTransform(camera_from_matrix(m, geometry))) for m in matrices
    ]
    images = []
    with Projector(
        volume,
        camera_intrinsics=intrinsic,
        spectrum="90KV_AL40",
        photon_count=max(physics.photons_per_pixel, 1.0) * geometry.rows * geometry.cols,
        add_noise=physics.photons_per_pixel > 0,
        add_scatter=False,
        neglog=True,
    ) as projector:
        for view in views:
            images.append(np.asarray(projector.project(view), dtype=np.float32))
    return np.stack(images)
