"""Phantom cohort: time per case by voxel size, and each muscle's volume range across seeds.

    python benchmarks/phantom_bench.py [--seeds 20] [--spacing 2.0] [--layering carve]

Prints seconds per case at 4, 3 and the chosen spacing for both muscle layerings (the ratios show
how the cost grows as voxels shrink, and what additive layering costs over carving) and, at the
chosen spacing and layering, min / mean / max volume per muscle over the seeds. Last, for one case
(seed 101, case 3) at the chosen spacing, what growing its left gluteus minimus by 20 % does under
each layering: the minimus's, the medius's and all labelled muscles' change in ml.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from xraymuscle.catalog import MuscleCatalog
from xraymuscle.measure import muscle_volumes
from xraymuscle.phantom.anatomy import DEFAULT_LAYERING, MUSCLE_LAYERINGS, build_phantom, sample_params


def minimus_growth(spacing: float, layering: str, factor: float = 1.2) -> dict[str, float]:
    """Change in ml of the left minimus, the left medius and all muscles when the minimus grows."""
    params = sample_params(np.random.default_rng([101, 3]))
    grown = copy.deepcopy(params)
    grown.muscle_scale["gluteus_minimus_left"] *= factor
    catalog = MuscleCatalog.load()
    ml = []
    for case in (params, grown):
        volumes = {
            m: v["volume_ml"]
            for m, v in muscle_volumes(*build_phantom(case, spacing, layering), catalog, "phantom").items()
        }
        ml.append(
            {
                "minimus": volumes["gluteus_minimus_left"],
                "medius": volumes["gluteus_medius_left"],
                "all muscle": sum(volumes.values()),
            }
        )
    return {k: float(ml[1][k] - ml[0][k]) for k in ml[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--layering", choices=MUSCLE_LAYERINGS, default=DEFAULT_LAYERING)
    args = parser.parse_args()
    catalog = MuscleCatalog.load()
    timing: dict[float, dict[str, float]] = {}
    for spacing in sorted({4.0, 3.0, args.spacing}, reverse=True):
        timing[spacing] = {}
        for layering in MUSCLE_LAYERINGS:
            times = []
            for seed in range(3):
                params = sample_params(np.random.default_rng([seed, 0]))
                start = time.perf_counter()
                build_phantom(params, spacing, layering)
                times.append(time.perf_counter() - start)
            timing[spacing][layering] = float(np.median(times))
    base = timing[4.0]["carve"]
    print(f"{'spacing mm':>10s} {'carve s':>8s} {'x 4 mm':>8s} {'additive s':>11s} {'x carve':>8s}")
    for spacing, t in timing.items():
        print(
            f"{spacing:10.1f} {t['carve']:8.2f} {t['carve'] / base:8.2f} "
            f"{t['additive']:11.2f} {t['additive'] / t['carve']:8.2f}"
        )

    vols: dict[str, list[float]] = {m: [] for m in catalog.muscles}
    per_case = []
    for seed in range(args.seeds):
        params = sample_params(np.random.default_rng([seed, 0]))
        start = time.perf_counter()
        ct, labels = build_phantom(params, args.spacing, args.layering)
        per_case.append(time.perf_counter() - start)
        counts = np.bincount(labels.array.ravel(), minlength=len(catalog.muscles) + 1)
        for value, muscle in enumerate(catalog.muscles, start=1):
            vols[muscle].append(counts[value] * ct.voxel_volume_mm3 / 1000)
    print(
        f"\n{args.seeds} seeds at {args.spacing} mm, {args.layering}: "
        f"{np.mean(per_case):.2f} s/case mean, {np.max(per_case):.2f} max"
    )
    print(f"{'muscle':24s} {'min':>7s} {'mean':>7s} {'max':>7s} {'min/mean':>9s} {'max/mean':>9s}  (ml)")
    for muscle, v in vols.items():
        a = np.array(v)
        print(
            f"{muscle:24s} {a.min():7.0f} {a.mean():7.0f} {a.max():7.0f} "
            f"{a.min() / a.mean():9.2f} {a.max() / a.mean():9.2f}"
        )
    print(f"\nseed 101 case 3 at {args.spacing} mm, left gluteus minimus x 1.2: change in ml")
    print(f"{'layering':10s} {'minimus':>8s} {'medius':>8s} {'all muscle':>11s}")
    for layering in MUSCLE_LAYERINGS:
        d = minimus_growth(args.spacing, layering)
        print(f"{layering:10s} {d['minimus']:8.1f} {d['medius']:8.1f} {d['all muscle']:11.1f}")


if __name__ == "__main__":
    main()
