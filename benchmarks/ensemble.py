"""What averaging several trained networks would give, from their evaluations of the same data.

    python benchmarks/ensemble.py EVALUATION_DIR EVALUATION_DIR [EVALUATION_DIR ...]

Reads the ``predictions.csv`` that ``xraymuscle evaluate`` writes for each network (the same
held-out samples in the same order) and prints, for each network alone and for their ensemble, the
mean Pearson r, MAPE, Spearman(sd, |error|) and 95 % coverage, and the r of the muscles that miss
the targets. The ensemble's volume is the networks' mean; its sd is the square root of their mean
variance plus the variance of their means (the usual mixture of Gaussians).

It also prints how alike the networks' errors are: the Pearson correlation, per muscle, between two
networks' relative errors over the samples (the mean over all pairs of networks). Averaging N
networks whose errors correlate at ρ leaves ``ρ + (1 − ρ) / N`` of one network's error variance, so
at ρ near 1 an ensemble cannot help whatever its size.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from error_spread import read_predictions

from xraymuscle.metrics import volume_metrics

SHOWN = ("gluteus_medius", "gluteus_minimus", "iliopsoas")


def line(label: str, truth: np.ndarray, pred: np.ndarray, sd: np.ndarray, muscles: list[str]) -> str:
    """One row of figures: the mean r, MAPE, Spearman and coverage, and the r of the muscles shown."""
    valid = np.isfinite(pred) & np.isfinite(truth)
    m = volume_metrics(pred, truth, valid, muscles, sd)
    r = {k: v["pcc"] for k, v in m["muscles"].items()}
    shown = "  ".join(
        f"{name.split('_')[-1]} {r[name + '_left']:.3f}/{r[name + '_right']:.3f}"
        for name in SHOWN
        if name + "_left" in r and name + "_right" in r
    )
    mean = m["mean"]
    return (
        f"{label:28s} r {mean['pcc']:.3f}  MAPE {mean['mape']:5.2f} %  "
        f"Spearman {mean['spearman_sd_abs_error']:.3f}  coverage {mean['coverage95']:.3f}  {shown}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("evaluations", type=Path, nargs="+", help="`xraymuscle evaluate` folders")
    args = parser.parse_args()
    if len(args.evaluations) < 2:
        raise SystemExit("give two or more evaluation folders")
    runs = [read_predictions(d / "predictions.csv") for d in args.evaluations]
    muscles, cases, truth = runs[0][0], runs[0][1], runs[0][2]
    for d, (other_muscles, other_cases, other_truth, pred, sd) in zip(args.evaluations, runs, strict=True):
        same = other_muscles == muscles and np.array_equal(other_cases, cases)
        if not (same and np.allclose(other_truth, truth, equal_nan=True)):
            raise SystemExit(f"{d}: not the same samples and muscles as {args.evaluations[0]}")
        print(line(d.name, truth, pred, sd, muscles))
    preds = np.stack([run[3] for run in runs])
    sds = np.stack([run[4] for run in runs])
    sd = np.sqrt(np.mean(sds**2, axis=0) + np.var(preds, axis=0))
    print(line(f"ensemble of {len(runs)}", truth, preds.mean(axis=0), sd, muscles))

    errors = (preds - truth) / truth
    print("\ncorrelation of two networks' relative errors (mean over pairs):")
    for j, m in enumerate(muscles):
        rho = [
            np.corrcoef(errors[a, :, j], errors[b, :, j])[0, 1]
            for a, b in itertools.combinations(range(len(runs)), 2)
        ]
        print(f"  {m:24s} {np.mean(rho):.2f}")


if __name__ == "__main__":
    main()
