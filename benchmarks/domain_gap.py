"""The domain gap, measured: plain DRR training against CycleGAN adaptation, with and without the
gradient-consistency loss, all evaluated on clinical-style radiographs of held-out phantoms.

    python benchmarks/domain_gap.py --work DIR [--train 120] [--style 60] [--test 30] [--views 2]
        [--epochs N] [--gan-epochs N]   (the README's figures: --epochs 50 --gan-epochs 20)

Three phantom cohorts (different seeds): A, the training cohort (plain DRRs with maps); B, the
"real" domain (its DRRs made clinical-style by :mod:`xraymuscle.clinical_style` and written as
DICOM radiographs, unpaired with A); C, the held-out cohort (clinical-style DRRs, with their maps,
for evaluation). Then:

1. no adaptation: train on A, evaluate on clinical-style C;
2. adaptation without gradient consistency: CycleGAN A ↔ B with ``--gc-weight 0``, ``adapt`` A,
   train on the adapted A, evaluate on clinical-style C;
3. adaptation with gradient consistency: the same with the recipe's weight.

Also evaluated, for reference: a perfect adaptation (the network trained on clinical-style images
of cohort A itself, the best any translation of A could give) and the plain model on plain DRRs of
C (no gap at all). Prints the per-muscle Pearson r and MAPE of the three rows and the two
references, and the training times; writes ``domain_gap.json``.
Each step is skipped when its output exists, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from accuracy import run  # noqa: E402


def step(done: Path, *args: str) -> float:
    """Run a CLI step unless its last output ``done`` exists; return its seconds (0 when skipped)."""
    return 0.0 if done.exists() else run(*args)


def export_radiographs(data_dir: Path, folder: Path) -> int:
    """Write a DRR dataset's images as DICOM radiographs (with their pixel spacing)."""
    from xraymuscle.dicom_writer import write_dx
    from xraymuscle.drr_dataset import DrrDataset

    data = DrrDataset.load(data_dir)
    spacing = float(data.info["pixel_spacing_mm"])
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(data.rows):
        path = folder / f"{row['sample_id']}.dcm"
        if not path.exists():
            write_dx(path, data.sample(i)["image"], pixel_spacing_mm=spacing, description="clinical-style")
    return len(data.rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--style", type=int, default=60)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=3.0, help="phantom voxel size, mm")
    parser.add_argument("--epochs", type=int, help="decomposition epochs (default: the recipe's)")
    parser.add_argument("--gan-epochs", type=int, help="CycleGAN epochs (default: the recipe's)")
    parser.add_argument("--gan-config", default="cyclegan")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    w = args.work
    times: dict[str, float] = {}
    for name, n, seed in (("A", args.train, 301), ("B", args.style, 302), ("C", args.test, 303)):
        cohort = w / f"phantoms_{name}"
        step(
            cohort / "cohort.csv",
            "phantom",
            "--n",
            str(n),
            "--seed",
            str(seed),
            "--spacing",
            str(args.spacing),
            "--out",
            str(cohort),
        )
        drr = w / f"drr_{name}"
        step(
            drr / "dataset.json", "generate-drr", "--cohort", str(cohort / "cohort.csv"), "--out", str(drr),
            "--views", str(args.views), "--seed", str(seed), "--image-size", "128",
            "--label-source", "phantom",
        )  # fmt: skip
    step(
        w / "clinical_B" / "dataset.json",
        "clinical-style",
        "--data",
        str(w / "drr_B"),
        "--out",
        str(w / "clinical_B"),
        "--seed",
        "1",
    )
    step(  # the training cohort in the target style itself: what a perfect adaptation would give
        w / "clinical_A" / "dataset.json",
        "clinical-style",
        "--data",
        str(w / "drr_A"),
        "--out",
        str(w / "clinical_A"),
        "--seed",
        "3",
    )
    step(
        w / "clinical_C" / "dataset.json",
        "clinical-style",
        "--data",
        str(w / "drr_C"),
        "--out",
        str(w / "clinical_C"),
        "--seed",
        "2",
    )
    export_radiographs(w / "clinical_B", w / "real_B")
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    gan_epochs = ["--epochs", str(args.gan_epochs)] if args.gan_epochs else []
    device = ["--device", args.device]
    settings = {"no adaptation": w / "drr_A"}
    for label, gc in (("adapted, no GC", "0"), ("adapted, with GC", None)):
        tag = "gc0" if gc == "0" else "gc"
        gan = w / f"cyclegan_{tag}"
        extra = ["--gc-weight", gc] if gc is not None else []
        times[f"cyclegan {label}"] = step(
            gan / "done", "train-cyclegan", "--drr", str(w / "drr_A"), "--xray", str(w / "real_B"),
            "--out", str(gan), "--config", args.gan_config, *gan_epochs, *extra, *device, "--resume",
        )  # fmt: skip
        (gan / "done").touch()
        adapted = w / f"adapted_A_{tag}"
        step(
            adapted / "dataset.json",
            "adapt",
            "--cyclegan",
            str(gan),
            "--data",
            str(w / "drr_A"),
            "--out",
            str(adapted),
            *device,
        )
        settings[label] = adapted
    settings["reference: perfect adaptation"] = w / "clinical_A"
    results: dict[str, dict[str, Any]] = {}
    for label, data in settings.items():
        model = w / f"model_{data.name}"
        times[f"train {label}"] = step(
            model / "model.json", "train", "--data", str(data), "--out", str(model), *epochs, *device
        )
        evaluation = w / f"eval_{data.name}_on_clinical_C"
        step(
            evaluation / "metrics.json",
            "evaluate",
            "--model",
            str(model),
            "--data",
            str(w / "clinical_C"),
            "--out",
            str(evaluation),
        )
        results[label] = json.loads((evaluation / "metrics.json").read_text())
    reference = w / "eval_drr_A_on_plain_C"
    step(
        reference / "metrics.json",
        "evaluate",
        "--model",
        str(w / "model_drr_A"),
        "--data",
        str(w / "drr_C"),
        "--out",
        str(reference),
    )
    results["reference: no adaptation, on plain DRRs"] = json.loads((reference / "metrics.json").read_text())
    report(results, times)
    (w / "domain_gap.json").write_text(json.dumps({"results": results, "seconds": times}, indent=1))


def report(results: dict[str, dict[str, Any]], times: dict[str, float]) -> None:
    labels = list(results)
    muscles = list(results[labels[0]]["muscles"])
    print("\nper-muscle Pearson r / MAPE % on clinical-style held-out radiographs")
    print(f"{'muscle':26s}" + "".join(f"{label[:26]:>28s}" for label in labels))
    for m in [*muscles, "mean"]:
        cells = []
        for label in labels:
            table = results[label]
            row = table["mean"] if m == "mean" else table["muscles"][m]
            cells.append(f"{row['pcc']:>13.2f} / {row['mape']:>6.1f} %   ")
        print(f"{m:26s}" + "".join(f"{c:>28s}" for c in cells))
    print("share that predict would reject as unlike the model's training images:")
    for label in labels:
        ood = results[label].get("out_of_distribution")
        if ood is not None:
            print(f"  {label}: {100 * ood['rejected']:.0f} % of {ood['n']}")
    plain = results["no adaptation"]["mean"]["mape"]
    for label in ("adapted, no GC", "adapted, with GC"):
        mape = results[label]["mean"]["mape"]
        print(
            f"{label}: mean MAPE {mape:.1f} % against {plain:.1f} % unadapted "
            f"({100 * (1 - mape / plain):+.0f} % better)"
        )
    for k, v in times.items():
        if v:
            print(f"time, {k}: {v / 60:.1f} min")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {(time.perf_counter() - start) / 60:.1f} min")
