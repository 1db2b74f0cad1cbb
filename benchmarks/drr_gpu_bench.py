"""Views per second of the projector, batched, on a CUDA GPU, with the CPU kernel as the peer.

    python benchmarks/drr_gpu_bench.py [--json OUT]

Needs only the rendering engine (numpy, torch, OpenCV, PyYAML), so it runs on a GPU machine
without the rest of the project's dependencies. The CT is synthetic, 512 × 512 × 133 voxels of
0.7 × 0.7 × 2.5 mm (a body with bones and eight labelled muscles), the detector ``hip_ap``'s
256 × 256. Printed: views per second with image line integrals and per-muscle maps at several batch
sizes on CUDA, and one view with the OpenCV kernel on the CPU in the same run. When DeepDRR is
installed, also how far its bone edges lie from ours in the same geometry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drr.geometry import Geometry  # noqa: E402
from drr.poses import Pose  # noqa: E402
from drr.projector import LabelGroup, Scene, render  # noqa: E402


def synthetic_ct(shape: tuple[int, int, int] = (133, 512, 512)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, labels and affine of a pelvis-sized body with two femora, a pelvis ring and 8 muscles."""
    nk, nj, ni = shape
    spacing = np.array([0.7, 0.7, 2.5])  # i, j, k
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array([ni, nj, nk]) - 1) / 2 * spacing
    z = (np.arange(nk) - (nk - 1) / 2)[:, None, None] * spacing[2]
    y = (np.arange(nj) - (nj - 1) / 2)[None, :, None] * spacing[1]
    x = (np.arange(ni) - (ni - 1) / 2)[None, None, :] * spacing[0]
    body = (x / 170) ** 2 + (y / 110) ** 2 < 1
    hu = np.where(body, np.int16(40), np.int16(-1000)).astype(np.int16)
    hu = np.broadcast_to(hu, shape).copy()
    labels = np.zeros(shape, np.uint8)
    for side, sign in ((0, -1), (1, 1)):
        femur = ((x - sign * 90) ** 2 + y**2 < 14**2) & (z < 20)
        ring = (np.abs(np.hypot(x - sign * 60, y) - 45) < 8) & (np.abs(z - 40) < 40)
        for number, (cx, cy, cz, r) in enumerate(
            ((120, 60, 40, 55), (110, -10, 80, 40), (95, 20, 60, 30), (50, -40, 60, 35))
        ):
            muscle = ((x - sign * cx) / r) ** 2 + ((y - cy) / r) ** 2 + ((z - cz) / (1.6 * r)) ** 2 < 1
            labels[muscle & body] = 2 * number + side + 1
        hu[np.broadcast_to(femur | ring, shape)] = 900
    return hu, labels, affine


def view_matrices(scene: Scene, geo: Geometry, n: int) -> np.ndarray:
    """``n`` projection matrices of random poses about the scene's centre (seeded by ``n``)."""
    centre = scene.centroid()
    rng = np.random.default_rng(n)
    poses = [Pose(*rng.uniform(-1, 1, 6) * [5, 3, 5, 15, 10, 15]) for _ in range(n)]
    return np.stack([geo.projection_matrix(centre, p.matrix(centre)) for p in poses])


def views_per_second(scene: Scene, geo: Geometry, batch: int, device: str, kernel: str) -> float:
    matrices = view_matrices(scene, geo, batch)
    render(scene, geo, matrices, device=device, kernel=kernel)  # warm-up, fills the plane cache
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    render(scene, geo, matrices, device=device, kernel=kernel)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch / (time.perf_counter() - start)


def geometry_ms_per_view(scene: Scene, geo: Geometry, n: int = 256) -> float:
    """CPU time (ms) of the per-view geometry a batched render does before any warp."""
    from drr.planes import depth_axis_for, pixel_factors, plan_layout

    matrices = view_matrices(scene, geo, n)
    start = time.perf_counter()
    axes = [depth_axis_for(m, geo, scene.index_to_world) for m in matrices]
    plan_layout(matrices, geo, scene.index_to_world, scene.shape, axes[0], max_shift_px=0.25)
    for m, axis in zip(matrices, axes, strict=True):
        pixel_factors(m, geo, scene.index_to_world, axis)
    return (time.perf_counter() - start) / n * 1000.0


def profile(scene: Scene, geo: Geometry, batch: int) -> None:
    """Print the operators that take the most time in one batched render on CUDA."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    matrices = view_matrices(scene, geo, batch)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        render(scene, geo, matrices, device="cuda", kernel="torch")
        torch.cuda.synchronize()
    table = prof.key_averages()
    for key in ("self_device_time_total", "self_cpu_time_total"):
        try:
            print(table.table(sort_by=key, row_limit=10, max_name_column_width=36))
        except (KeyError, AttributeError, ValueError) as exc:  # the key's name differs between versions
            print(f"no table sorted by {key}: {exc}")


def deepdrr_edges(scene: Scene, geo: Geometry) -> dict[str, object]:
    """Largest distance (pixels) between bone edges in our image and DeepDRR's, same geometry."""
    try:
        from drr.deepdrr_backend import deepdrr_images
        from drr.imaging import XrayPhysics
    except ImportError as exc:
        return {"available": False, "reason": str(exc)}
    centre = scene.centroid()
    matrix = geo.projection_matrix(centre)[None]
    try:
        theirs = deepdrr_images(scene, geo, matrix, XrayPhysics(mode="monochromatic", energy_kev=60.0))[0]
    except Exception as exc:  # the backend is optional: report why it did not run
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    ours = render(scene, geo, matrix).materials[0, 2]

    def edges(image: np.ndarray) -> np.ndarray:
        profile = image[image.shape[0] // 2]
        above = profile > 0.5 * profile.max()
        return np.nonzero(np.diff(above.astype(int)))[0]

    a, b = edges(ours), edges(theirs - theirs.min())
    if len(a) != len(b):
        return {"available": True, "ours": a.tolist(), "deepdrr": b.tolist(), "agree": False}
    worst = float(np.abs(a - b).max()) if len(a) else 0.0
    return {
        "available": True,
        "ours": a.tolist(),
        "deepdrr": b.tolist(),
        "max_px": worst,
        "agree": worst <= 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--profile", action="store_true", help="where the largest batch's time goes")
    args = parser.parse_args()
    hu, labels, affine = synthetic_ct()
    groups = [LabelGroup(f"muscle_{g}", (g,)) for g in range(1, 9)]
    scene = Scene(hu, affine, labels, groups)
    geo = Geometry(sid=1050.0, sod=900.0, rows=256, cols=256, pixel_spacing=400 / 256, name="hip_ap")
    results: dict[str, object] = {"ct": list(hu.shape), "muscles": len(groups)}
    results["geometry_ms_per_view"] = geometry_ms_per_view(scene, geo)
    print(f"per-view geometry on the CPU: {results['geometry_ms_per_view']:.2f} ms")
    results["cpu_opencv_views_per_s"] = views_per_second(scene, geo, 1, "cpu", "opencv")
    print(f"CPU, OpenCV kernel, 1 view: {results['cpu_opencv_views_per_s']:.1f} views/s")
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name(0)
        for batch in args.batches:
            rate = views_per_second(scene, geo, batch, "cuda", "torch")
            results[f"cuda_views_per_s_batch_{batch}"] = rate
            ratio = rate / results["cpu_opencv_views_per_s"]  # type: ignore[operator]
            print(f"CUDA ({results['gpu']}), batch {batch}: {rate:.0f} views/s ({ratio:.0f}x the CPU kernel)")
        results["deepdrr"] = deepdrr_edges(scene, geo)
        print(f"DeepDRR geometry check: {results['deepdrr']}")
    else:
        print("no CUDA GPU here: only the CPU figure")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.profile and torch.cuda.is_available():
        profile(scene, geo, max(args.batches))


if __name__ == "__main__":
    main()
