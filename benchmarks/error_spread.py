"""How much the sizes of a model's errors differ from case to case, and so how well any sd can rank them.

    python benchmarks/error_spread.py EVALUATION_DIR [--draws 2000] [--cohort CSV] [--model DIR ...]

Reads the ``predictions.csv`` that ``xraymuscle evaluate`` writes. Spearman(sd, |error|) can only be
high when the errors' own standard deviations differ a good deal between cases. Three figures bound it:

* the **ceiling of the model's sds**: the mean Spearman they would reach were each sd exactly its
  error's standard deviation (``xraymuscle.metrics.spearman_ceiling``);
* the **share of the error that the body decides**: the correlation between the errors of two views
  of one case (near 1: another view of the same body would be wrong the same way);
* the **spread the errors allow**: if each error is ``N(0, σ²)`` with ``log σ`` spread by ``w``, the
  errors' pooled excess kurtosis grows with ``w`` (0 at ``w`` = 0). For several ``w`` the script
  prints the Spearman that exact sds would reach and how often errors drawn that way are as
  light-tailed as the observed ones (a small share: the errors vary less than that ``w``).

The views of one body share most of their error (the body, not the view, decides it), so the
kurtosis is taken over cases: each case's error is the mean over its views, centred and scaled per
muscle before pooling.

It then prints where the error lies: the person's overall muscularity (the mean log-volume over
the muscles) against each muscle's own deviation from it, true against predicted, the log-error's
shared and own parts, and the summed volumes of the muscles that overlap in an AP projection. With
``--model`` (model folders), how many radiographs each model's ``cv_threshold`` flags ``uncertain``
and the mean error of those and of the rest.

With ``--cohort`` (the held-out phantoms' ``cohort.csv``) it also asks *what* sets an error's size:
the Spearman correlation, over cases, between the relative absolute error and each of the phantom's
parameters that a radiograph shows (body size, fat, densities, pose: the value and its distance
from the cohort's mean, whichever correlates more), against the one it hides, the muscle's own size
deviation (``|log own scale − mean log scale of the person's muscles|``). An sd can only rank
errors by what the image shows.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from scipy import stats

from xraymuscle.metrics import spearman_ceiling

Predictions = tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_predictions(path: Path) -> Predictions:
    """An evaluation's ``predictions.csv``: the muscles, each row's case, and truth, volume and sd
    (rows × muscles, NaN where empty)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    muscles = [c[len("true_ml__") :] for c in rows[0] if c.startswith("true_ml__")]
    true, pred, sd = (
        np.array([[float(r[f"{key}__{m}"] or "nan") for m in muscles] for r in rows])
        for key in ("true_ml", "volume_ml", "volume_sd_ml")
    )
    return muscles, np.array([r["case_id"] for r in rows]), true, pred, sd


def per_muscle(predictions: Predictions) -> dict[str, dict[str, np.ndarray]]:
    """Per muscle: the truth, volume, sd and case of each row where both are known."""
    muscles, cases, true, pred, sd = predictions
    out = {}
    for j, m in enumerate(muscles):
        ok = np.isfinite(true[:, j]) & np.isfinite(pred[:, j]) & (true[:, j] > 0)
        out[m] = {"true": true[ok, j], "volume": pred[ok, j], "sd": sd[ok, j], "case": cases[ok]}
    return out


def case_means(values: np.ndarray, cases: np.ndarray) -> np.ndarray:
    """The mean of ``values`` over each case's views, one value per case."""
    _, index = np.unique(cases, return_inverse=True)
    return np.bincount(index, weights=values) / np.bincount(index)


def view_pairs(err: np.ndarray, cases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The errors of the first two views of each case that has two or more."""
    views: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        views.setdefault(str(c), []).append(i)
    pairs = [rows[:2] for rows in views.values() if len(rows) >= 2]
    return np.array([err[i] for i, _ in pairs]), np.array([err[j] for _, j in pairs])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("evaluation", type=Path, help="an `xraymuscle evaluate` output folder")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--cohort", type=Path, help="the held-out phantoms' cohort.csv")
    parser.add_argument(
        "--model",
        type=Path,
        nargs="+",
        default=[],
        help="model folders whose `uncertain` thresholds to apply",
    )
    args = parser.parse_args()
    predictions = read_predictions(args.evaluation / "predictions.csv")
    table = per_muscle(predictions)
    head = f"{'muscle':24s} {'n':>4s} {'rho(sd,|e|)':>11s} {'ceiling':>7s} {'sd(log sd)':>10s}"
    print(head + f" {'r(e, e) of two views':>21s}")
    observed, ceilings, pooled, shared = [], [], [], []
    for m, v in table.items():
        err = v["volume"] - v["true"]
        rho = float(stats.spearmanr(v["sd"], np.abs(err))[0])
        ceiling = spearman_ceiling(v["sd"])
        observed.append(rho)
        ceilings.append(ceiling)
        per_case = case_means(err, v["case"])
        pooled.append((per_case - per_case.mean()) / per_case.std())
        a, b = view_pairs(err, v["case"])
        r_views = float(stats.pearsonr(a, b)[0]) if len(a) >= 3 else float("nan")
        shared.append(r_views)
        row = f"{m:24s} {len(err):4d} {rho:11.2f} {ceiling:7.2f} {np.std(np.log(v['sd'])):10.2f}"
        print(row + f" {r_views:21.2f}")
    mean_row = f"{'mean':24s} {'':4s} {np.mean(observed):11.2f} {np.mean(ceilings):7.2f} {'':10s}"
    print(mean_row + f" {np.nanmean(shared):21.2f}")
    kurtosis = float(stats.kurtosis(np.concatenate(pooled)))
    sizes = [len(x) for x in pooled]
    print(f"\npooled excess kurtosis of the errors, {sum(sizes)} muscle-cases: {kurtosis:.2f} ", end="")
    print("(0 for errors of one common sd)")
    print(f"{'log-sd spread w':>16s} {'Spearman if exact':>18s} {'share as light-tailed':>22s}")
    rng = np.random.default_rng(0)
    for w in (0.1, 0.2, 0.3, 0.35, 0.4):
        kurt, rho = [], []
        for _ in range(args.draws):
            parts = []
            for n in sizes:
                sigma = np.exp(rng.normal(0.0, w, n))
                e = rng.normal(0.0, sigma)
                parts.append((e - e.mean()) / e.std())
            rho.append(stats.spearmanr(sigma, np.abs(e))[0])  # over the last muscle's cases
            kurt.append(stats.kurtosis(np.concatenate(parts)))
        share = float(np.mean(np.asarray(kurt) <= kurtosis))
        print(f"{w:16.2f} {np.mean(rho):18.2f} {share:22.3f}")
    muscles, true, pred, sd = complete_rows(predictions)
    where_error_lies(muscles, true, pred)
    if args.model:
        print("\n`uncertain` (a muscle's sd / volume above the model's cv_threshold):")
    for model in args.model:
        flagged_share(model, muscles, true, pred, sd)
    if args.cohort:
        error_drivers(table, args.cohort)


# Muscles that overlap in an AP projection, summed per side.
GROUPS = {
    "gluteal (maximus + medius + minimus)": ("gluteus_maximus", "gluteus_medius", "gluteus_minimus"),
    "thigh (quadriceps + adductors + hamstrings)": ("quadriceps", "adductors", "hamstrings"),
}


def complete_rows(predictions: Predictions) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The muscles, and truth, volume and sd (radiographs × muscles) of the rows that have every muscle."""
    muscles, _, true, pred, sd = predictions
    ok = np.all(np.isfinite(true) & np.isfinite(pred) & (true > 0) & (pred > 0), axis=1)
    return muscles, true[ok], pred[ok], sd[ok]


def flagged_share(
    model: Path, muscles: list[str], true: np.ndarray, pred: np.ndarray, sd: np.ndarray
) -> None:
    """How many radiographs a model's ``cv_threshold`` flags ``uncertain``, and their mean error."""
    meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
    threshold = dict(zip(meta["muscles"], meta["calibration"]["cv_threshold"], strict=True))
    flagged = (sd / pred > np.array([threshold[m] for m in muscles])).any(axis=1)
    error = 100 * np.mean(np.abs(pred - true) / true, axis=1)
    print(
        f"  {model}: {flagged.sum()} of {len(flagged)} flagged uncertain ({100 * flagged.mean():.1f} %); ",
        end="",
    )
    rest = error[~flagged].mean() if (~flagged).any() else float("nan")
    flagged_error = error[flagged].mean() if flagged.any() else float("nan")
    print(f"mean error {flagged_error:.1f} % flagged, {rest:.1f} % the rest")


def where_error_lies(muscles: list[str], true: np.ndarray, pred: np.ndarray) -> None:
    """Overall muscularity against each muscle's own deviation from it, and sums of overlapping muscles.

    Over the rows in which every muscle has a truth and a prediction: the mean log-volume of the
    muscles (the person's muscularity) and each muscle's log-volume minus it (its own deviation),
    true against predicted; the sd of the log-error's shared part (its mean over the muscles) and of
    the rest; and Pearson r and MAPE of the summed volume of muscles that overlap in the projection.
    """
    print(f"\nwhere the error lies, {len(true)} radiographs with every muscle:")
    lt, lp = np.log(true), np.log(pred)
    own_t, own_p = lt - lt.mean(1, keepdims=True), lp - lp.mean(1, keepdims=True)
    own_r = np.mean([stats.pearsonr(own_t[:, j], own_p[:, j])[0] for j in range(len(muscles))])
    print(f"  muscularity (mean log-volume) r {stats.pearsonr(lt.mean(1), lp.mean(1))[0]:.3f}; ", end="")
    print(f"a muscle's own deviation from it r {own_r:.3f} (mean over muscles)")
    err = lp - lt
    shared = err.mean(1, keepdims=True)
    print(f"  log-error sd: shared by the muscles {shared.std():.3f}, ", end="")
    print(f"each muscle's own {(err - shared).std():.3f}")
    for name, parts in GROUPS.items():
        for side in ("left", "right"):
            cols = [muscles.index(f"{p}_{side}") for p in parts if f"{p}_{side}" in muscles]
            if len(cols) != len(parts):
                continue
            t, v = true[:, cols].sum(1), pred[:, cols].sum(1)
            mape = 100 * np.mean(np.abs(v - t) / t)
            print(f"  {name}, {side}: r {stats.pearsonr(t, v)[0]:.3f}, MAPE {mape:.1f} %")


SHOWN = ("body_scale", "height_scale", "fat_mm", "muscle_hu", "fat_hu", "cortical_hu", "cancellous_hu",
         "noise_sd_hu", "tilt_deg", "rotation_deg", "obliquity_deg")  # fmt: skip


def error_drivers(table: dict[str, dict[str, np.ndarray]], cohort: Path) -> None:
    """Spearman of each case's relative |error| with what the radiograph shows and what it hides."""
    with cohort.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    params = {}
    for r in rows:
        params[r["case_id"]] = {
            k.removeprefix("param__"): float(v) for k, v in r.items() if k.startswith("param__")
        }
    print(
        f"\nwhat sets the size of an error (Spearman with the relative |error|, over {cohort.name}'s cases)"
    )
    print(f"{'muscle':24s} {'strongest shown':>26s} {'by chance':>9s} {'own size (hidden)':>18s}")
    muscles = list(table)
    shown_all, chance_all, hidden_all = [], [], []
    for m, v in table.items():
        cases = np.unique(v["case"])
        if any(str(c) not in params for c in cases):
            raise SystemExit(f"{cohort}: lacks some cases of the evaluation")
        err = case_means(np.abs(v["volume"] / v["true"] - 1), v["case"])
        p = [params[str(c)] for c in cases]
        shown = []
        for k in SHOWN:
            x = np.array([q[k] for q in p])
            shown += [(k, x), (k, np.abs(x - x.mean()))]
        best, best_rho = _strongest(err, shown)
        rng = np.random.default_rng(0)
        chance = float(np.mean([abs(_strongest(rng.permutation(err), shown)[1]) for _ in range(50)]))
        person = np.array([np.mean([np.log(q[f"muscle_scale__{o}"]) for o in muscles]) for q in p])
        own = np.array([np.log(q[f"muscle_scale__{m}"]) for q in p]) - person
        hidden = float(stats.spearmanr(np.abs(own - own.mean()), err)[0])
        shown_all.append(abs(best_rho))
        chance_all.append(chance)
        hidden_all.append(hidden)
        print(f"{m:24s} {best:>19s} {best_rho:6.2f} {chance:9.2f} {hidden:18.2f}")
    means = (np.mean(shown_all), np.mean(chance_all), np.mean(hidden_all))
    print(f"{'mean':24s} {'|rho|':>19s} {means[0]:6.2f} {means[1]:9.2f} {means[2]:18.2f}")
    print("(by chance: the strongest |rho| of the same parameters with the errors shuffled, mean of 50)")


def _strongest(err: np.ndarray, shown: list[tuple[str, np.ndarray]]) -> tuple[str, float]:
    """The parameter whose Spearman with ``err`` is largest in size, and that Spearman."""
    rhos = [(k, float(stats.spearmanr(value, err)[0])) for k, value in shown]
    return max(rhos, key=lambda kr: abs(kr[1]))


if __name__ == "__main__":
    main()
