"""What ``calibrate`` buys where the radiographs are not like the training DRRs.

    python benchmarks/recalibration.py --val DRR --test DRR --work DIR [--model MODEL]

A model calibrated on plain DRRs meets radiographs that an X-ray system has processed; its errors
grow, and its sds, calibrated on plain DRRs, no longer cover them. Short of adapting the model,
``calibrate`` on validation cases that look like the study's radiographs makes the sds say so.
Here both datasets are made clinical-style (:mod:`xraymuscle.clinical_style`, other seeds for the
two), and the model is evaluated on the test cases before and after ``calibrate`` on the
validation ones, and on the plain test cases for reference. For the shipped model, ``--val`` can
be its rebuilt validation set (``benchmarks/shipped_validation.py``) and ``--test`` any held-out
phantoms (``benchmarks/muscle_groups.py``'s). Prints MAPE, mean sd over the volume and 95 %
coverage of each evaluation, and the sd scales before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from accuracy import run  # noqa: E402

from xraymuscle.paths import default_model_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--val", type=Path, required=True, help="DRR dataset the model did not learn")
    parser.add_argument("--test", type=Path, required=True, help="held-out DRR dataset")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    work = args.work.resolve()
    model = (args.model or default_model_dir()).resolve()
    styled = {name: work / f"{name}_clinical" for name in ("val", "test")}
    for (name, folder), seed in zip(styled.items(), (11, 12), strict=True):
        if not (folder / "dataset.json").is_file():
            source = getattr(args, name).resolve()
            run("clinical-style", "--data", str(source), "--out", str(folder), "--seed", str(seed))
    recalibrated = work / "model_clinical"
    if not (recalibrated / "model.json").is_file():
        run("calibrate", "--model", str(model), "--val", str(styled["val"]), "--out", str(recalibrated))
    rows = (
        ("plain test DRRs, the model as it is", model, args.test.resolve()),
        ("clinical-style test, the model as it is", model, styled["test"]),
        ("clinical-style test, calibrated on clinical-style validation", recalibrated, styled["test"]),
    )
    print(f"{'':62s} {'MAPE %':>7s} {'sd/vol %':>8s} {'cov95':>6s} {'rejected':>8s}")
    for i, (label, folder, data) in enumerate(rows):
        out = work / f"evaluate_{i}"
        if not (out / "metrics.json").is_file():
            run("evaluate", "--model", str(folder), "--data", str(data), "--out", str(out))
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        table = np.genfromtxt(
            out / "predictions.csv", delimiter=",", names=True, dtype=None, encoding="utf-8"
        )
        sd = [c for c in table.dtype.names if c.startswith("volume_sd_ml__")]
        ratio = np.mean([table[c] / table[c.replace("volume_sd_ml__", "volume_ml__")] for c in sd]) * 100
        mean = metrics["mean"]
        rejected = metrics["out_of_distribution"]["rejected"]
        print(f"{label:62s} {mean['mape']:7.2f} {ratio:8.1f} {mean['coverage95']:6.0%} {rejected:8.0%}")
    before = json.loads((model / "model.json").read_text(encoding="utf-8"))["calibration"]["sd_scale"]
    after = json.loads((recalibrated / "model.json").read_text(encoding="utf-8"))["calibration"]["sd_scale"]
    print(f"sd scales {min(before):.2f}-{max(before):.2f} before, {min(after):.2f}-{max(after):.2f} after")


if __name__ == "__main__":
    main()
