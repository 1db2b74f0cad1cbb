"""How well a muscle's volume follows from everything about the body except the muscle's own size.

    python benchmarks/own_size_bound.py COHORT.csv [MORE.csv ...]

In the phantom's population model a muscle's size is the person's muscularity times a factor of
its own (log-normal, sd 0.1; ``xraymuscle/phantom/anatomy.py``). A radiograph shows that factor
only as far as the muscle's outline can be told from its neighbours'. This benchmark asks what a
reader who saw every *other* muscle exactly would know: a linear fit (in log volume, 5-fold
cross-validated over the cases of the given ``cohort.csv`` tables) of each muscle's volume on the
exact volumes of the other muscles (its twin on the other side left out: the two share the
factor), body size, fat and pose, and its position jitter. The population model is log-linear, so
the Pearson r of that fit is about the best a reader that cannot see the muscle's own factor can
do; the second column adds the factor, the third is the network's figure to set beside them (from
an ``evaluate`` metrics.json given with ``--metrics``). Measured figures: docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

BODY = ["body_scale", "height_scale", "fat_mm", "tilt_deg", "rotation_deg", "obliquity_deg"]


def cross_validated_r(features: np.ndarray, volume: np.ndarray, folds: int = 5) -> float:
    """Pearson r between ``volume`` and the out-of-fold predictions of a least-squares fit in log."""
    x = np.column_stack([np.ones(len(volume)), features])
    y = np.log(volume)
    fold = np.arange(len(y)) % folds
    pred = np.empty_like(y)
    for f in range(folds):
        coef, *_ = np.linalg.lstsq(x[fold != f], y[fold != f], rcond=None)
        pred[fold == f] = x[fold == f] @ coef
    return float(np.corrcoef(np.exp(pred), volume)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cohorts", type=Path, nargs="+", help="cohort.csv tables written by `phantom`")
    parser.add_argument("--metrics", type=Path, help="an `evaluate` metrics.json to set beside")
    args = parser.parse_args()
    rows = []
    for path in args.cohorts:
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) for r in rows])

    def columns(names: list[str]) -> np.ndarray:
        return np.column_stack([column(n) for n in names])

    muscles = [c.removeprefix("volume_ml__") for c in rows[0] if c.startswith("volume_ml__")]
    network = json.loads(args.metrics.read_text())["muscles"] if args.metrics else {}
    body = columns([f"param__{k}" for k in BODY])
    print(f"{len(rows)} phantoms; Pearson r of each muscle's volume, 5-fold cross-validated")
    print(f"{'muscle':24s} {'others exact':>12s} {'+ own size':>10s} {'network':>8s}")
    for m in muscles:
        volume = column(f"volume_ml__{m}")
        kind = m.rsplit("_", 1)[0]  # its twin on the other side shares the own factor: left out too
        others = np.log(columns([f"volume_ml__{o}" for o in muscles if o.rsplit("_", 1)[0] != kind]))
        jitter = columns([c for c in rows[0] if c.startswith(f"param__jitter__{m}__")])
        seen = np.column_stack([others, body, jitter])
        own = np.log(column(f"param__muscle_scale__{m}"))
        r_seen = cross_validated_r(seen, volume)
        r_own = cross_validated_r(np.column_stack([seen, own]), volume)
        r_net = network.get(m, {}).get("pcc")
        print(f"{m:24s} {r_seen:12.3f} {r_own:10.3f} {'-' if r_net is None else f'{r_net:.3f}':>8s}")


if __name__ == "__main__":
    main()
