"""How often the ``uncertain`` threshold flags new images, by the number of validation images it was set on.

    python benchmarks/uncertain_rate.py EVALUATION_DIR [EVALUATION_DIR ...] [--sizes 20 40 60 120 240]
        [--repeats 200] [--rate 0.02] [--mirror | --no-mirror]

Reads the ``predictions.csv`` that ``xraymuscle evaluate`` writes (calibrated sds, so each row's CV
is what ``predict`` compares with the threshold). For each size ``n``, it draws ``n / views`` of the
held-out bodies again and again, sets the thresholds on their images as calibration would
(with mirrored draws, each image and its mirror with the sides exchanged), and counts the share of
the other bodies' images that some muscle's CV passes. Three rules, measured on the same draws:

* **rank**: ``training.calibration.cv_thresholds``, what calibration does now (each image scored
  against the other validation images; the ``ceil((n + 1)(1 - rate))``-th of the ``n``);
* **percentile**: the plain ``1 - rate`` percentile of the images' in-sample scores (the rule of
  earlier models with 200 validation images or more);
* **log-normal**: each muscle's log-normal tail of ``rate / K`` (earlier models below 200).

The share that each rule means to flag is ``rate``; the printed figures are its mean over the draws
and the spread between draws. See docs/accuracy.md (*The `uncertain` threshold*).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import NormalDist

import numpy as np
from error_spread import read_predictions

from training.calibration import cv_thresholds
from training.data import twin_order


def percentile_rule(cv: np.ndarray, rate: float) -> np.ndarray:
    logs = np.log(cv)
    centre, spread = logs.mean(axis=0), logs.std(axis=0, ddof=1)
    level = np.quantile(((logs - centre) / spread).max(axis=1), 1.0 - rate)
    return np.exp(centre + level * spread)


def lognormal_rule(cv: np.ndarray, rate: float) -> np.ndarray:
    logs = np.log(cv)
    z = NormalDist().inv_cdf(1.0 - rate / cv.shape[1])
    return np.exp(logs.mean(axis=0) + z * logs.std(axis=0, ddof=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("evaluations", type=Path, nargs="+")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 60, 120, 240])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        f"share of new images flagged (intended: {100 * args.rate:g} %), mean (sd) over {args.repeats} draws"
    )
    for folder in args.evaluations:
        muscles, cases, _, volume, sd = read_predictions(folder / "predictions.csv")
        complete = np.isfinite(volume).all(axis=1) & np.isfinite(sd).all(axis=1)
        cv = sd[complete] / np.maximum(volume[complete], 1.0)
        cases = cases[complete]
        bodies = np.unique(cases)
        views = len(cases) / len(bodies)
        twins = twin_order(muscles)
        print(f"\n{folder}: {len(cv)} images of {len(bodies)} bodies")
        for n in args.sizes:
            pick_n = max(1, round(n / views))
            if pick_n >= len(bodies):
                print(f"  {n:4d} validation images: more than the held-out bodies allow")
                continue
            shares: dict[str, list[float]] = {"rank": [], "percentile": [], "log-normal": []}
            for _ in range(args.repeats):
                chosen = np.isin(cases, rng.choice(bodies, pick_n, replace=False))
                val, new = cv[chosen], cv[~chosen]
                rows = np.concatenate([val, val[:, twins]]) if args.mirror else val
                rules = {
                    "rank": np.array(
                        cv_thresholds(rows, np.ones(rows.shape, bool), args.rate, images=len(val))
                    ),
                    "percentile": percentile_rule(rows, args.rate),
                    "log-normal": lognormal_rule(rows, args.rate),
                }
                for name, threshold in rules.items():
                    shares[name].append(float((new > threshold).any(axis=1).mean()))
            line = "  ".join(
                f"{name} {100 * np.mean(v):4.1f} % ({100 * np.std(v):.1f})" for name, v in shares.items()
            )
            print(f"  {int(chosen.sum()):4d} validation images: {line}")


if __name__ == "__main__":
    main()
