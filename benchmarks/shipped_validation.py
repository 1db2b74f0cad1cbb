"""Rebuild the shipped model's validation cases and calibrate it on them again.

    python benchmarks/shipped_validation.py --work DIR [--out MODEL]

The shipped model was calibrated on the 240 cases of its 2400-phantom training cohort that
``train`` held out (``model.json``: ``training.data``, ``recipe.val_fraction`` and ``recipe.seed``).
Neither the cohort nor its DRRs are kept, but every phantom is drawn from its seed and index alone
(``phantom.cohort.make_case``) and every view from its seed, case and view
(``generate-drr --seed``), and the split depends only on the cases' names
(``training.decomposition.held_out_cases``). So those cases can be built again, and ``calibrate``
run on them (into ``--out``, default ``DIR/model``). It prints how far the calibration it gives
lies from the shipped one: where the muscles' sd scales, ``uncertain`` thresholds and coverage
agree to rounding, the cases are the same, and what ``calibrate`` adds (the muscle groups' scales,
for a model calibrated before them) is what training would have set. The phantoms and DRRs are made
once under DIR and kept (about 6 and 1.5 minutes on two cores).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from training.decomposition import held_out_cases
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.paths import default_model_dir
from xraymuscle.phantom.cohort import case_id, make_case

# the shipped model's training cohort and its rendering (model.json: training.data)
COHORT_SEED, CASES, SPACING_MM, LAYERING = 101, 2400, 3.0, "additive"
DRR = ["--views", "2", "--seed", "1", "--image-size", "128", "--label-source", "phantom"]
REPO = Path(__file__).resolve().parents[1]
COMPARED = (
    "sd_scale",
    "mass_sd_scale",
    "cv_threshold",
    "validation_coverage95_calibrated",
    "validation_cases",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="the recalibrated model (default: WORK/model)")
    args = parser.parse_args()
    shipped = default_model_dir()
    meta = json.loads((shipped / "model.json").read_text(encoding="utf-8"))
    recipe = meta["recipe"]
    held = sorted(held_out_cases([case_id(i) for i in range(CASES)], recipe["val_fraction"], recipe["seed"]))
    print(f"{len(held)} validation cases ({held[0]}, {held[1]}, ...)")
    work = args.work.resolve()
    phantoms, drr = work / "phantoms", work / "drr"
    cohort = phantoms / "cohort.csv"
    if not cohort.is_file():
        catalog = MuscleCatalog.load()
        rows = [
            make_case(COHORT_SEED, int(name.rsplit("_", 1)[1]), phantoms, spacing=SPACING_MM,
                      catalog=catalog, preview=False, layering=LAYERING)
            for name in held
        ]  # fmt: skip
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        cohort.write_text(text.getvalue(), encoding="utf-8")
    command = [sys.executable, "-c", "from cli import app; app()"]
    if not (drr / "dataset.json").is_file():
        subprocess.run(
            [*command, "generate-drr", "--cohort", str(cohort), "--out", str(drr), *DRR], check=True
        )
    out = (args.out or work / "model").resolve()
    subprocess.run(
        [*command, "calibrate", "--val", str(drr), "--out", str(out), "--device", "cpu"], check=True
    )
    before = meta["calibration"]
    after = json.loads((out / "model.json").read_text(encoding="utf-8"))["calibration"]
    for key in COMPARED:
        old, new = np.asarray(before[key], float), np.asarray(after[key], float)
        gap = float(np.max(np.abs(new - old) / np.maximum(np.abs(old), 1e-12)))
        print(f"  {key:34s} largest relative difference from the shipped model's: {gap:.1e}")
    for key in ("group_sd_scale", "group_mass_sd_scale"):
        print(f"  {key:34s} {after.get(key)} (shipped: {before.get(key)})")


if __name__ == "__main__":
    main()
