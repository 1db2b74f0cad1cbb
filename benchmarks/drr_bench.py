"""DRR speed, accuracy and memory: this project's projector against DiffDRR on the same CT.

    python benchmarks/drr_bench.py [--device cpu|cuda] [--batch 16] [--no-peer] [--memory] [--json OUT]

The CT is the real abdomen/pelvis CT of the shared data resampled to 512 × 512 × 133 (a phantom
when the shared data is absent), with its muscle labels; the detector is the ``hip_ap`` preset
(256 × 256). Printed, all measured in this run:

* our projector: preparing the scene, the first view, then per view once prepared (one at a time
  and in batches), with per-muscle volume and mass maps; the torch kernel too;
* DiffDRR 0.6.1 (a benchmark-only peer: ``make bench-peers`` installs it without its own
  dependencies), its ray-voxel (``siddon``) and ``trilinear`` renderers, with and without
  ``mask_to_channels``, same CT and detector;
* accuracy: mean relative difference of our line integrals from the exact ray-voxel reference, and
  the volume error of every muscle whose shadow lies on the detector;
* ``--memory``: peak resident memory (VmHWM) of a separate process that reads a 512 × 512 × 600 CT
  and its labels, prepares the scene and renders a view with the muscle maps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drr.geometry import project_points  # noqa: E402
from drr.materials import density_from_hu  # noqa: E402
from drr.poses import Pose  # noqa: E402
from drr.presets import load_preset  # noqa: E402
from drr.projector import LabelGroup, Scene, render  # noqa: E402
from drr.reference import exact_projection  # noqa: E402
from xraymuscle.catalog import MuscleCatalog  # noqa: E402
from xraymuscle.paths import config_file, shared_data_dir  # noqa: E402
from xraymuscle.volume import Volume, read_ct_and_labels  # noqa: E402


def resample(volume: Volume, size: tuple[int, int, int], labels: bool) -> Volume:
    """Resample to ``size`` voxels (i, j, k) over the same field of view."""
    image = volume.to_sitk()
    spacing = [image.GetSpacing()[a] * image.GetSize()[a] / size[a] for a in range(3)]
    first = [-0.5 + 0.5 * spacing[a] / image.GetSpacing()[a] for a in range(3)]
    f = sitk.ResampleImageFilter()
    f.SetSize(size)
    f.SetOutputSpacing(spacing)
    f.SetOutputDirection(image.GetDirection())
    f.SetOutputOrigin(image.TransformContinuousIndexToPhysicalPoint(first))
    f.SetInterpolator(sitk.sitkNearestNeighbor if labels else sitk.sitkLinear)
    f.SetDefaultPixelValue(0 if labels else -1024)
    out = Volume.from_sitk(f.Execute(image))
    out.array = out.array.astype(np.uint8 if labels else np.int16)
    return out


def bench_ct(size: tuple[int, int, int]) -> tuple[Volume, Volume, str, str]:
    root = shared_data_dir() / "ct" / "totalsegmentator-example"
    if (root / "ct.nii.gz").is_file():
        ct, labels = read_ct_and_labels(root / "ct.nii.gz", root / "labels_total_v2.nii.gz")
        source, what = "totalsegmentator_v2", "real CT"
    else:
        from xraymuscle.phantom.anatomy import build_phantom, sample_params

        ct, labels = build_phantom(sample_params(np.random.default_rng([0, 0])), 2.0)
        source, what = "phantom", "phantom"
    catalog = MuscleCatalog.load()
    lut = catalog.lookup(source, int(labels.array.max()))
    labels.array = lut[labels.array].astype(np.uint8)  # muscle channel numbers 1..K, nothing else
    return resample(ct, size, False), resample(labels, size, True), what, source


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def ours(ct: Volume, labels: Volume, device: str, batch: int) -> dict[str, float]:
    catalog = MuscleCatalog.load()
    groups = [LabelGroup(m, (k + 1,)) for k, m in enumerate(catalog.muscles)]
    geo = load_preset(config_file("geometry", "hip_ap")).geometry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_scene, scene = timed(lambda: Scene(ct.array, ct.index_to_world, labels.array, groups))
    centre = scene.centroid()
    rng = np.random.default_rng(0)
    poses = [Pose(*rng.uniform(-1, 1, 6) * [5, 3, 5, 15, 10, 15]) for _ in range(batch)]
    matrices = np.stack([geo.projection_matrix(centre, p.matrix(centre)) for p in poses])
    kernel = "opencv" if device == "cpu" else "torch"
    t_first, out = timed(lambda: render(scene, geo, matrices[:1], device=device, kernel=kernel))
    t_view, out = timed(lambda: render(scene, geo, matrices[:1], device=device, kernel=kernel), repeat=5)
    t_batch, _ = timed(lambda: render(scene, geo, matrices, device=device, kernel=kernel), repeat=2)
    result = {
        "scene_s": t_scene,
        "first_view_s": t_first,
        "per_view_s": t_view,
        "per_view_batched_s": t_batch / batch,
        "muscles": int((scene.voxel_counts > 0).sum()),
    }
    if device == "cpu":
        t_torch, _ = timed(lambda: render(scene, geo, matrices[:1], kernel="torch"))
        result["torch_cpu_per_view_s"] = t_torch
    # Accuracy against the exact reference, on every 4th pixel.
    v, u = np.mgrid[0 : geo.rows : 4, 0 : geo.cols : 4]
    pixels = np.c_[u.ravel(), v.ravel()]
    density = density_from_hu(np.clip(np.rint(ct.array), -1024, 3000))
    reference = exact_projection(density, ct.index_to_world, geo, matrices[0], pixels=pixels) / 10.0
    mine = out.materials[0].sum(axis=0)[pixels[:, 1], pixels[:, 0]]
    body = reference > 0.05 * reference.max()
    result["mean_rel_diff_vs_exact"] = float(np.mean(np.abs(mine[body] / reference[body] - 1)))
    errors = {}
    volumes = scene.group_volumes_mm3()
    for g in np.nonzero(volumes > 0)[0]:
        uv, _ = project_points(matrices[0], scene.group_points(g))
        if uv.min() > 1 and uv[:, 0].max() < geo.cols - 2 and uv[:, 1].max() < geo.rows - 2:
            got = out.maps[0, g].sum() * out.pixel_area_mm2
            errors[scene.groups[g].name] = float(got / volumes[g] - 1)
    result["volume_errors"] = errors  # type: ignore[assignment]
    return result


def diffdrr(ct: Volume, labels: Volume, repeat: int) -> dict[str, float]:
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR

    geo = load_preset(config_file("geometry", "hip_ap")).geometry
    with tempfile.TemporaryDirectory() as tmp:
        ct.save(Path(tmp) / "ct.nii.gz")
        labels.save(Path(tmp) / "labels.nii.gz")
        subject = read(Path(tmp) / "ct.nii.gz", Path(tmp) / "labels.nii.gz", orientation="AP")
    rotations = torch.zeros(1, 3)
    translations = torch.tensor([[0.0, geo.sod, 0.0]])
    out = {}
    for renderer in ("siddon", "trilinear"):
        drr = DRR(subject, sdd=geo.sid, height=geo.rows, delx=geo.pixel_spacing, renderer=renderer)
        for channels in (False, True):

            def view(drr: DRR = drr, channels: bool = channels) -> torch.Tensor:
                with torch.no_grad():
                    return drr(
                        rotations, translations, parameterization="euler_angles", convention="ZXY",
                        mask_to_channels=channels,
                    )  # fmt: skip

            t, img = timed(view, repeat=repeat)
            out[f"{renderer}{'_channels' if channels else ''}_s"] = t
            out[f"{renderer}{'_channels' if channels else ''}_shape"] = list(img.shape)  # type: ignore[union-attr]
    return out


MEMORY_SCRIPT = """
import sys, time, warnings, numpy as np
sys.path.insert(0, {repo!r})
from drr.poses import Pose
from drr.presets import load_preset
from drr.projector import LabelGroup, Scene, render
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.paths import config_file
from xraymuscle.volume import read_ct_and_labels
ct, labels = read_ct_and_labels({ct!r}, {labels!r})
groups = [LabelGroup(m, (k + 1,)) for k, m in enumerate(MuscleCatalog.load().muscles)]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    scene = Scene(ct.array, ct.index_to_world, labels.array, groups)
geo = load_preset(config_file("geometry", "hip_ap")).geometry
c = scene.centroid()
start = time.perf_counter()
out = render(scene, geo, geo.projection_matrix(c, Pose(rx=3).matrix(c)))
seconds = time.perf_counter() - start
# VmHWM: this process's own high-water mark (ru_maxrss would carry the parent's over exec)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 1024, seconds, ct.array.dtype, ct.shape)
"""


def memory(ct: Volume, labels: Volume) -> dict[str, float]:
    big_ct = resample(ct, (512, 512, 600), False)
    big_labels = resample(labels, (512, 512, 600), True)
    with tempfile.TemporaryDirectory() as tmp:
        big_ct.save(Path(tmp) / "ct.nii.gz", compress=False)
        big_labels.save(Path(tmp) / "labels.nii.gz", compress=False)
        del big_ct, big_labels
        script = MEMORY_SCRIPT.format(repo=str(REPO), ct=f"{tmp}/ct.nii.gz", labels=f"{tmp}/labels.nii.gz")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak, seconds, dtype, shape = done.stdout.split(maxsplit=3)
    return {"peak_rss_mb": float(peak), "render_s": float(seconds), "dtype": dtype, "shape": shape.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="runs per DiffDRR setting (best kept)")
    parser.add_argument("--no-peer", action="store_true", help="skip DiffDRR")
    parser.add_argument("--memory", action="store_true", help="also measure the 512 x 512 x 600 case")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    ct, labels, what, _ = bench_ct((512, 512, 133))
    spacing = np.round(ct.spacing, 3).tolist()
    print(f"CT: {what}, {ct.size_ijk} voxels of {spacing} mm; detector hip_ap 256 x 256")
    results: dict[str, object] = {"ct": what, "device": args.device, "batch": args.batch}
    mine = ours(ct, labels, args.device, args.batch)
    results["ours"] = mine
    peer = None
    if not args.no_peer:
        try:
            peer = diffdrr(ct, labels, args.repeat)
        except ImportError as exc:
            print(f"DiffDRR not installed ({exc}); run `make bench-peers` first")
        results["diffdrr"] = peer
    head = f"renderer (per view, {args.device})"
    print(f"\n{head:46s} {'seconds':>9s} {'peer siddon+ch / this':>26s}")
    reference = peer["siddon_channels_s"] if peer else None

    def line(name: str, seconds: float) -> None:
        ratio = f"{reference / seconds:8.1f}x" if reference else ""
        print(f"{name:46s} {seconds:9.3f} {ratio:>26s}")

    line(f"ours: prepare scene ({mine['muscles']} muscles)", mine["scene_s"])
    line("ours: first view, image + maps", mine["first_view_s"])
    line("ours: per view, prepared, image + maps", mine["per_view_s"])
    line(f"ours: per view in batches of {args.batch}", mine["per_view_batched_s"])
    if "torch_cpu_per_view_s" in mine:
        line("ours, torch kernel on CPU: per view", mine["torch_cpu_per_view_s"])
    if peer:
        for key, name in (
            ("siddon_s", "DiffDRR renderer=siddon"),
            ("siddon_channels_s", "DiffDRR renderer=siddon, mask_to_channels"),
            ("trilinear_s", "DiffDRR renderer=trilinear"),
            ("trilinear_channels_s", "DiffDRR renderer=trilinear, mask_to_channels"),
        ):
            line(name, peer[key])
    diff = 100 * mine["mean_rel_diff_vs_exact"]
    print(f"\nmean relative difference from the exact ray-voxel reference: {diff:.2f} %")
    errors = mine["volume_errors"]
    worst = max(abs(e) for e in errors.values()) if errors else float("nan")
    print(f"volume error, {len(errors)} muscles on the detector: worst {100 * worst:.3f} %")
    for name, err in errors.items():
        print(f"  {name:26s} {100 * err:+.3f} %")
    if args.memory:
        mem = memory(ct, labels)
        results["memory"] = mem
        print(f"\n512 x 512 x 600 CT ({mem['dtype']}): peak RSS {mem['peak_rss_mb']:.0f} MB", end="")
        print(f", render {mem['render_s']:.2f} s")
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
