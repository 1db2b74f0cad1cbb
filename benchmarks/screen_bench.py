"""Screening throughput, end to end, and the two study-level checks of ``screen``.

    python benchmarks/screen_bench.py --base base.npz [--n 200] [--size 1024] [--device cpu|cuda]
    python benchmarks/screen_bench.py --base base.npz --bad-input 1000
    python benchmarks/screen_bench.py --base base.npz --kill-resume 300

``--base`` is an ``.npz`` of synthetic radiographs (``images`` (N, H, W), ``spacing_mm``), made
from a DRR dataset with ``--make-base DRR_DIR``; ``benchmarks/data/screen_base.npz`` holds 16
DRRs (``hip_ap`` at 128 pixels) of the accuracy benchmark's held-out phantoms, made so.
Every study here is written by :mod:`xraymuscle.synthetic_study`: DICOM DX files of ``--size``
pixels a side (the DRRs resampled to a clinical-like pixel count, same field), with patient tags.

Throughput: radiographs per second from files on disk to the finished table (reading, decoding,
resampling, Monte Carlo inference with the model's default number of draws, rows, tables), for
``screen`` and, measured in the same run on the same files, for ``predict`` (one process, no
decoding workers) as the peer. ``--bad-input N``: N files with every bad kind mixed in; prints
the counts by status. ``--kill-resume N``: a run killed with SIGKILL midway and started again;
prints inputs, rows, journal lines and duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_base(drr: Path, out: Path, count: int = 16) -> None:
    """``count`` images spread evenly over a DRR dataset, as the benchmark's base images."""
    from xraymuscle.drr_dataset import DrrDataset

    data = DrrDataset.load(drr)
    picks = range(0, len(data), max(1, len(data) // count))[:count]
    images = np.stack([data.sample(i, keys=("image",))["image"] for i in picks]).astype(np.float32)
    np.savez_compressed(out, images=images, spacing_mm=float(data.info["pixel_spacing_mm"]))
    spacing = float(data.info["pixel_spacing_mm"])
    print(f"{len(images)} base images of {images.shape[1:]} at {spacing:.3f} mm: {out}")


def base_images(path: Path) -> list[tuple[np.ndarray, float]]:
    with np.load(path) as z:
        return [(im, float(z["spacing_mm"])) for im in z["images"]]


def study(folder: Path, base: Path, n: int, size: int, *, bad: bool) -> dict[str, tuple[str, ...]]:
    from xraymuscle.synthetic_study import write_study

    images = base_images(base)
    upsample = max(1, round(size / images[0][0].shape[0]))
    return write_study(folder, images, n, bad=bad, seed=1, upsample=upsample)


def throughput(args: argparse.Namespace, work: Path) -> dict[str, object]:
    from xraymuscle.model import load_model
    from xraymuscle.paths import default_model_dir
    from xraymuscle.predict import predict_images
    from xraymuscle.screen import screen_study

    folder = work / "study"
    expected = study(folder, args.base, args.n, args.size, bad=False)
    files = sorted(expected)
    model = load_model(default_model_dir())
    results: dict[str, object] = {
        "n": len(files),
        "size_px": args.size,
        "mc_samples": int(model.meta["mc_samples"]),
        "model_input": model.input_size,
        "device": args.device,
        "cpus": os.cpu_count(),
    }
    # warm-up (imports, first allocations) on a few files, not timed
    warm = folder / "good" / "batch_000"
    screen_study(warm, work / "warm", device=args.device, report=False, progress=False, echo=str)
    start = time.perf_counter()
    summary = screen_study(
        folder, work / "screen", device=args.device, batch=args.batch, workers=args.workers,
        overlays="none", report=False, progress=False, echo=str,
    )  # fmt: skip
    t_screen = time.perf_counter() - start
    results["screen_per_s"] = summary.rows / t_screen
    start = time.perf_counter()
    report_rows = screen_study(folder, work / "screen", device=args.device, progress=False, echo=str)
    results["report_s"] = time.perf_counter() - start
    del report_rows
    peer_files = files[: min(len(files), args.peer_n)]
    start = time.perf_counter()
    predict_images(peer_files, work / "predict", device=args.device, pictures=False, progress=False, echo=str)
    results["predict_per_s"] = len(peer_files) / (time.perf_counter() - start)
    results["screen_over_predict"] = float(results["screen_per_s"]) / float(results["predict_per_s"])  # type: ignore[arg-type]
    print(
        f"{len(files)} radiographs of {args.size}² px on {args.device} ({os.cpu_count()} cores), "
        f"{results['mc_samples']} dropout draws at {model.input_size}² px:\n"
        f"  screen : {results['screen_per_s']:.1f} radiographs/s ({t_screen:.1f} s)\n"
        f"  predict: {results['predict_per_s']:.1f} radiographs/s (peer, {len(peer_files)} files)\n"
        f"  screen ÷ predict: {results['screen_over_predict']:.1f}×; "
        f"report for the study: {results['report_s']:.1f} s"
    )
    return results


def bad_input(args: argparse.Namespace, work: Path) -> dict[str, object]:
    from xraymuscle.screen import screen_study

    folder = work / "bad_study"
    expected = study(folder, args.base, args.bad_input - 10, min(args.size, 512), bad=True)
    start = time.perf_counter()
    summary = screen_study(folder, work / "bad_out", device=args.device, progress=False, echo=print)
    seconds = time.perf_counter() - start
    import csv

    with (work / "bad_out" / "results.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    wrong = [r["image"] for r in rows if r["status"] not in expected[r["image"]]]
    counts = Counter(r["status"] for r in rows)
    print(
        f"bad-input study: {len(expected)} files, {len(rows)} rows, {dict(counts)}, {seconds:.0f} s; "
        f"unexpected statuses: {wrong}"
    )
    return {"files": len(expected), "rows": len(rows), "counts": dict(counts), "unexpected": wrong,
            "duplicates": summary.duplicates, "seconds": seconds}  # fmt: skip


def kill_resume(args: argparse.Namespace, work: Path) -> dict[str, object]:
    folder = work / "kill_study"
    expected = study(folder, args.base, args.kill_resume, min(args.size, 512), bad=False)
    out = work / "kill_out"
    command = [sys.executable, "-c", "from cli import app; app()", "screen", str(folder), "--out", str(out),
               "--device", args.device, "--batch", "8", "--no-report"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "journal.jsonl"
    while proc.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= len(expected) // 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = journal.read_bytes().count(b"\n")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    import csv

    with (out / "results.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    lines = journal.read_text(encoding="utf-8").splitlines()
    images = [r["image"] for r in rows]
    result = {
        "inputs": len(expected),
        "rows_at_kill": at_kill,
        "rows": len(rows),
        "journal_lines": len(lines),
        "duplicated_rows": len(images) - len(set(images)),
        "missing": len(set(expected) - set(images)),
    }
    print(f"kill -9 and resume: {result}; resumed run said: {done.stdout.strip().splitlines()[-1]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, help="base images (.npz); see --make-base")
    parser.add_argument("--make-base", type=Path, metavar="DRR_DIR", help="write --base from a DRR dataset")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--peer-n", type=int, default=60)
    parser.add_argument("--size", type=int, default=1024, help="radiograph side, pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, help="decoding processes (default: screen's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bad-input", type=int, default=0, metavar="N")
    parser.add_argument("--kill-resume", type=int, default=0, metavar="N")
    parser.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.make_base:
        make_base(args.make_base, args.base)
        return
    if args.base is None:
        parser.error("--base is needed (make one with --make-base DRR_DIR --base FILE)")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        if args.throughput:
            results["throughput"] = throughput(args, work)
        if args.bad_input:
            results["bad_input"] = bad_input(args, work)
        if args.kill_resume:
            results["kill_resume"] = kill_resume(args, work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
