"""How far the measured volumes follow an error in the radiograph's pixel spacing.

    python benchmarks/spacing_sensitivity.py --work DIR [--n 20] [--seed 909]
        [--factors 0.85 0.9 0.95 1.0 1.05 1.1 1.15] [--model MODEL]

A spacing at the patient is never exact: a detector's spacing is divided by a magnification that
depends on how far the hip lies from the detector (the patient's thickness, the table), and a
`PixelSpacing` alone may or may not have been corrected (README, *Check what a file holds*). This
measures what such an error costs. New phantoms (``phantom --seed SEED --spacing 3``, not the
shipped model's cohorts) are rendered as its held-out ones were (``hip_ap``, 128 pixels, one view),
written as DICOM, and measured with ``predict --pixel-spacing`` at the true spacing times each
factor. For each factor it prints the mean ratio of the volumes to those at the true spacing, the
exponent ``k`` of ``volume ∝ spacing^k`` that ratio gives, the spread of the ratio over muscles and
images, the MAPE against the volumes in the field of view, and the share of images still ``ok``.
Every step is skipped when its output is there, so a rerun only prints.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from drr.presets import load_preset
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.generate import GenerateOptions, generate_drr, read_cohort
from xraymuscle.paths import config_file
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.predict import predict_images


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float | str) and value != "" else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20, help="phantoms (one radiograph each)")
    parser.add_argument("--seed", type=int, default=909)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15])
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: the shipped one)")
    args = parser.parse_args()
    factors = sorted(set(args.factors) | {1.0})

    catalog = MuscleCatalog.load()
    cohort = args.work / "phantoms" / "cohort.csv"
    if not cohort.is_file():
        cohort = make_cohort(args.n, args.work / "phantoms", seed=args.seed, spacing=3.0, catalog=catalog)
    drr = args.work / "drr"
    if not (drr / "dataset.json").is_file():
        preset = load_preset(config_file("geometry", "hip_ap"), image_size=128)
        generate_drr(
            read_cohort(cohort)[0], drr, GenerateOptions(catalog, "phantom", preset, views=1, seed=1)
        )
    data = DrrDataset.load(drr)
    spacing = float(data.info["pixel_spacing_mm"])
    images = []
    for index, row in enumerate(data.rows):
        path = args.work / "radiographs" / f"{row['sample_id']}.dcm"
        if not path.is_file():
            write_dx(path, data.sample(index)["image"], pixel_spacing_mm=spacing)
        images.append(path)
    in_field = np.array([
        data.sample(i, keys=("maps",))["maps"].sum(axis=(1, 2)) * r["pixel_area_mm2"] / 1000
        for i, r in enumerate(data.rows)
    ])  # fmt: skip

    measured: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for factor in factors:
        rows = predict_images(
            images, args.work / f"predict_x{factor:g}", model_dir=args.model,
            pixel_spacing=spacing * factor, pictures=False, progress=False, echo=lambda _: None,
        )  # fmt: skip
        volumes = np.array([[_number(r.get(f"volume_ml__{m}")) for m in data.muscles] for r in rows])
        ok = np.array([r["status"] in ("ok", "uncertain") for r in rows])
        measured[factor] = volumes, ok

    base = measured[1.0][0]
    print(f"{len(images)} phantom radiographs, true spacing {spacing:.3f} mm, {len(data.muscles)} muscles")
    header = ("spacing factor", "volume ratio", "k", "ratio 5-95 %", "MAPE %", "ok or uncertain")
    print(" ".join(f"{h:>{w}s}" for h, w in zip(header, (14, 12, 6, 14, 7, 16), strict=True)))
    for factor in factors:
        volumes, ok = measured[factor]
        ratio = volumes / base
        mean = float(np.nanmean(ratio))
        k = math.log(mean) / math.log(factor) if factor != 1.0 else math.nan
        lo, hi = np.nanpercentile(ratio, [5, 95])
        mape = float(np.nanmean(np.abs(volumes - in_field) / in_field)) * 100
        k_text = "" if math.isnan(k) else f"{k:6.2f}"
        print(f"{factor:14.2f} {mean:12.3f} {k_text:>6s} {lo:6.2f} - {hi:5.2f} {mape:7.1f} {ok.mean():16.0%}")


if __name__ == "__main__":
    main()
