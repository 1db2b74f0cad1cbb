"""How far the measured volumes follow an error in the radiograph's pixel spacing.

    python benchmarks/spacing_sensitivity.py --work DIR [--n 20] [--seed 909]
        [--factors 0.85 0.9 0.95 1.0 1.05 1.1 1.15] [--spacing-sd 5] [--model MODEL]

A spacing at the patient is never exact: a detector's spacing is divided by a magnification that
depends on how far the hip lies from the detector (the patient's thickness, the table), and a
`PixelSpacing` alone may or may not have been corrected (README, *Check what a file holds*). This
measures what such an error costs. New phantoms (``phantom --seed SEED --spacing 3``, not the
shipped model's cohorts) are rendered as its held-out ones were (``hip_ap``, 128 pixels, one view),
written as DICOM, and measured with ``predict --pixel-spacing`` at the true spacing times each
factor. For each factor it prints the mean ratio of the volumes to those at the true spacing, the
exponent ``k`` of ``volume ∝ spacing^k`` that ratio gives, the spread of the ratio over muscles and
images, the MAPE against the volumes in the field of view, the share of images still ``ok``, and
the 95 % intervals' coverage of those volumes, as the model gives them and with
``--spacing-sd-percent`` (``--spacing-sd``) added.

Then the case the option is for: each radiograph written again with its spacing off by a factor
drawn from a normal distribution of that relative sd (the same for every image, seeded), measured
as the files say, without and with the option; and the time ``predict`` takes for the images at
their true spacing without and with it (pictures off; five runs of each, in turn).
It also prints, per muscle, the sd the option adds at the true spacing (in % of the volume), and
what a study whose films differ in how well their spacing is known gets from one sd for all
(the root mean square of theirs) and from each film's own, given in a study list: the films'
spacings off by factors drawn with an sd of 1 % and 8 % in turn.
The phantoms, their DRRs and DICOM files are made once under DIR and kept; the predictions run
again each time.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
from new_phantoms import new_phantom_radiographs
from scipy.stats import spearmanr

from xraymuscle.compare import cell_number
from xraymuscle.dicom_writer import write_dx
from xraymuscle.predict import predict_images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20, help="phantoms (one radiograph each)")
    parser.add_argument("--seed", type=int, default=909)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15])
    parser.add_argument("--spacing-sd", type=float, default=5.0, help="relative sd of the spacing, %%")
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: the shipped one)")
    args = parser.parse_args()
    factors = sorted(set(args.factors) | {1.0})

    data, images, in_field = new_phantom_radiographs(args.work, args.n, args.seed)
    spacing = float(data.info["pixel_spacing_mm"])

    def measure(
        paths: list[Path], name: str, factor: float | None, sd: float | None, files: list[Path] | None = None
    ) -> tuple[np.ndarray, ...]:
        """Volumes, sds and QC of ``paths`` (radiographs, or a study list of ``files``), in the
        order of ``files`` (default: ``paths``)."""
        rows = predict_images(
            paths, args.work / name, model_dir=args.model,
            pixel_spacing=None if factor is None else spacing * factor, spacing_sd_percent=sd,
            pictures=False, progress=False, echo=lambda _: None,
        )  # fmt: skip
        by_name = {Path(r["image"]).name: r for r in rows}
        rows = [by_name[p.name] for p in (files or paths)]
        volumes = np.array([[cell_number(r.get(f"volume_ml__{m}")) for m in data.muscles] for r in rows])
        sds = np.array([[cell_number(r.get(f"volume_sd_ml__{m}")) for m in data.muscles] for r in rows])
        ok = np.array([r["status"] in ("ok", "uncertain") for r in rows])
        return volumes, sds, ok

    def coverage(volumes: np.ndarray, sds: np.ndarray, ok: np.ndarray, truth: np.ndarray = in_field) -> float:
        inside = np.abs(volumes - truth) <= 1.96 * sds
        return float(inside[ok].mean()) if ok.any() else math.nan

    def radiographs_off(folder: Path, drawn: np.ndarray) -> list[Path]:
        """The radiographs written again into ``folder``, each file's spacing ``drawn`` times the true."""
        paths = []
        for index, (row, factor) in enumerate(zip(data.rows, drawn, strict=True)):
            path = folder / f"{row['sample_id']}.dcm"
            if not path.is_file():
                write_dx(path, data.sample(index)["image"], pixel_spacing_mm=spacing * factor)
            paths.append(path)
        return paths

    measured = {f: measure(images, f"predict_x{f:g}", f, None) for f in factors}
    sd_given = args.spacing_sd
    widened = {f: measure(images, f"predict_x{f:g}_sd{sd_given:g}", f, sd_given) for f in factors}

    base = measured[1.0][0]
    print(f"{len(images)} phantom radiographs, true spacing {spacing:.3f} mm, {len(data.muscles)} muscles")
    header = ("spacing factor", "volume ratio", "k", "ratio 5-95 %", "MAPE %", "ok or uncertain")
    header += ("cov95", "with sd")
    widths = (14, 12, 6, 14, 7, 16, 6, 8)
    print(" ".join(f"{h:>{w}s}" for h, w in zip(header, widths, strict=True)))
    for factor in factors:
        volumes, sds, ok = measured[factor]
        ratio = volumes / base
        mean = float(np.nanmean(ratio))
        k = math.log(mean) / math.log(factor) if factor != 1.0 else math.nan
        lo, hi = np.nanpercentile(ratio, [5, 95])
        mape = float(np.nanmean(np.abs(volumes - in_field) / in_field)) * 100
        k_text = "" if math.isnan(k) else f"{k:6.2f}"
        plain, wide = coverage(volumes, sds, ok), coverage(*widened[factor])
        print(
            f"{factor:14.2f} {mean:12.3f} {k_text:>6s} {lo:6.2f} - {hi:5.2f} {mape:7.1f} {ok.mean():16.0%}"
            f" {plain:6.0%} {wide:8.0%}"
        )

    # what the option adds, per muscle, at the true spacing: sqrt(sd_with² - sd_without²) / volume
    volumes, sds, ok = measured[1.0]
    added = np.sqrt(np.maximum(widened[1.0][1] ** 2 - sds**2, 0.0)) / volumes * 100
    print(f"the sd --spacing-sd-percent {sd_given:g} adds, in % of the volume (mean; 5-95 %):")
    for j, m in enumerate(data.muscles):
        lo, hi = np.percentile(added[ok, j], [5, 95])
        print(f"  {m:24s} {added[ok, j].mean():5.1f}  ({lo:4.1f}-{hi:4.1f})")

    # each file's spacing off by its own drawn factor, as a study's would be
    rng = np.random.default_rng(args.seed)
    drawn = 1.0 + rng.standard_normal(len(images)) * args.spacing_sd / 100
    off_paths = radiographs_off(args.work / f"radiographs_sd{args.spacing_sd:g}", drawn)
    plain = measure(off_paths, f"predict_drawn{args.spacing_sd:g}", None, None)
    wide = measure(off_paths, f"predict_drawn{args.spacing_sd:g}_sd", None, args.spacing_sd)
    print(
        f"spacing off by factors drawn with sd {args.spacing_sd:g} % "
        f"(drawn: {drawn.min():.3f}-{drawn.max():.3f}): "
        f"MAPE {np.nanmean(np.abs(plain[0] - in_field) / in_field) * 100:.1f} %, coverage of the 95 % "
        f"intervals {coverage(*plain):.0%} as the model gives them, {coverage(*wide):.0%} with "
        f"--spacing-sd-percent {args.spacing_sd:g} (mean sd {np.nanmean(plain[1] / plain[0]) * 100:.1f} "
        f"against {np.nanmean(wide[1] / wide[0]) * 100:.1f} % of the volume)"
    )

    # a study whose films differ in how well their spacing is known: half to 1 %, half to 8 %
    rng = np.random.default_rng(args.seed + 1)
    known = np.where(np.arange(len(images)) % 2 == 0, 1.0, 8.0)
    drawn = 1.0 + rng.standard_normal(len(images)) * known / 100
    mixed_paths = radiographs_off(args.work / "radiographs_mixed", drawn)
    listing = args.work / "radiographs_mixed" / "list.csv"
    lines = ["path,spacing_sd_percent", *(f"{p.name},{k:g}" for p, k in zip(mixed_paths, known, strict=True))]
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    study_wide = float(np.sqrt(np.mean(known**2)))
    one = measure(mixed_paths, "predict_mixed_one_sd", None, study_wide)
    per_file = measure([listing], "predict_mixed_listed", None, None, files=mixed_paths)
    print(
        f"films whose spacing is known to 1 % and 8 % in turn (drawn: {drawn.min():.3f}-{drawn.max():.3f}): "
        "coverage of the 95 % intervals, films known to 1 % / to 8 %:"
    )
    for label, (volumes, sds, ok) in (
        (f"one sd for the study, --spacing-sd-percent {study_wide:.1f}", one),
        ("each film's own, from the study list's spacing_sd_percent", per_file),
    ):
        parts = [
            coverage(volumes[known == k], sds[known == k], ok[known == k], in_field[known == k])
            for k in (1.0, 8.0)
        ]
        widths = [np.nanmean(sds[known == k] / volumes[known == k]) * 100 for k in (1.0, 8.0)]
        # how well the sds rank the errors: per muscle over the films, then the mean
        ranks = [spearmanr(sds[ok, j], np.abs(volumes - in_field)[ok, j])[0] for j in range(volumes.shape[1])]
        print(
            f"  {label}: {parts[0]:.0%} / {parts[1]:.0%} "
            f"(mean sd {widths[0]:.1f} / {widths[1]:.1f} % of the volume); "
            f"Spearman(sd, |error|) {np.nanmean(ranks):.2f}"
        )

    seconds: dict[float | None, list[float]] = {None: [], args.spacing_sd: []}
    for _ in range(5):  # alternating, so that both see the machine alike
        for sd in seconds:
            shutil.rmtree(args.work / "timing", ignore_errors=True)
            begin = time.perf_counter()
            measure(images, "timing", 1.0, sd)
            seconds[sd].append(time.perf_counter() - begin)
    plain_s, wide_s = np.array(seconds[None]), np.array(seconds[args.spacing_sd])
    print(
        f"predict on the {len(images)} radiographs (5 runs each, pictures off): best {plain_s.min():.2f} s "
        f"without, {wide_s.min():.2f} s with --spacing-sd-percent "
        f"({wide_s.min() / plain_s.min():.2f} times); "
        f"median {np.median(plain_s):.2f} and {np.median(wide_s):.2f} s "
        f"({np.median(wide_s) / np.median(plain_s):.2f} times)"
    )


if __name__ == "__main__":
    main()
