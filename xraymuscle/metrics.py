"""Agreement and calibration figures for predicted volumes against the truth.

Per muscle: n, Pearson r, ICC(2,1) (two-way random effects, absolute agreement, single measure),
MAE (ml), MAPE (%), bias (ml, predicted − true), and with a predicted sd: the Spearman correlation
between sd and absolute error, its ceiling (what that correlation would be on average were each
sd exactly its error's standard deviation), and the coverage of the 95 % interval ``mean ± 1.96·sd``.
``case_intervals`` gives bootstrap intervals of these figures, resampling whole cases.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats


def icc_2_1(a: np.ndarray, b: np.ndarray) -> float:
    """ICC(2,1) of two raters (columns) over n subjects, absolute agreement.

    Examples
    --------
    >>> round(icc_2_1(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 4])), 6)
    1.0
    """
    x = np.stack([a, b], axis=1).astype(np.float64)
    n, k = x.shape
    if n < 2:
        return math.nan
    grand = x.mean()
    ms_rows = k * np.sum((x.mean(axis=1) - grand) ** 2) / (n - 1)
    ms_cols = n * np.sum((x.mean(axis=0) - grand) ** 2) / (k - 1)
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand
    ms_err = np.sum(residual**2) / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_err + k * (ms_cols - ms_err) / n
    return float((ms_rows - ms_err) / denominator) if denominator > 0 else math.nan


def _correlation(kind: str, a: np.ndarray, b: np.ndarray) -> float:
    """Pearson or Spearman r; NaN when undefined (fewer than 3 cases or no spread)."""
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        # nearly constant inputs: the value is still defined, and reported as it is
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        value = float((stats.pearsonr if kind == "pearson" else stats.spearmanr)(a, b)[0])
    return value if math.isfinite(value) else math.nan


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def spearman_ceiling(sd: np.ndarray, *, draws: int = 1000, seed: int = 0) -> float:
    """Mean Spearman(sd, |error|) over ``draws`` sets of errors drawn from ``N(0, sd²)``.

    Even exact standard deviations rank absolute errors only as well as they differ from case to
    case: with ``log sd`` spread by 0.2 the mean is about 0.2, by 0.35 about 0.34, and with one sd for
    all cases 0. Set beside the observed Spearman, it separates an sd that ranks badly from errors
    whose size hardly varies. NaN for fewer than 3 cases or no spread.

    Examples
    --------
    >>> spearman_ceiling(np.ones(50))
    nan
    """
    s = np.asarray(sd, dtype=np.float64)
    if len(s) < 3 or np.std(s) == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    errors = np.abs(rng.standard_normal((draws, len(s))) * s)
    rank_sd = stats.rankdata(s)
    rank_err = stats.rankdata(errors, axis=1)
    a = rank_sd - rank_sd.mean()
    b = rank_err - rank_err.mean(axis=1, keepdims=True)
    r = (b @ a) / (np.sqrt((b**2).sum(axis=1)) * np.sqrt((a**2).sum()))
    return float(r.mean())


def volume_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray,
    muscles: list[str],
    sd: np.ndarray | None = None,
) -> dict[str, Any]:
    """Figures per muscle and their mean over muscles; ``valid`` masks (n, K) cases without truth."""
    table: dict[str, dict[str, float]] = {}
    for j, m in enumerate(muscles):
        ok = valid[:, j] & np.isfinite(truth[:, j]) & (truth[:, j] > 0)
        p, t = pred[ok, j], truth[ok, j]
        n = int(ok.sum())
        row: dict[str, float] = {"n": n}
        row["pcc"] = _correlation("pearson", p, t)
        row["icc"] = icc_2_1(p, t) if n >= 2 else math.nan
        err = p - t
        row["mae_ml"] = float(np.mean(np.abs(err))) if n else math.nan
        row["mape"] = float(100 * np.mean(np.abs(err) / t)) if n else math.nan
        row["bias_ml"] = float(np.mean(err)) if n else math.nan
        if sd is not None:
            s = sd[ok, j]
            row["spearman_sd_abs_error"] = _correlation("spearman", s, np.abs(err))
            row["spearman_ceiling"] = spearman_ceiling(s)
            row["coverage95"] = float(np.mean(np.abs(err) <= 1.96 * s)) if n else math.nan
        table[m] = row
    keys = [k for k in next(iter(table.values())) if k != "n"] if table else []
    mean = {k: _nanmean([r[k] for r in table.values()]) for k in keys}
    mean["n"] = int(sum(r["n"] for r in table.values()))
    return {"muscles": table, "mean": mean}


INTERVAL_KEYS = ("pcc", "mape", "spearman_sd_abs_error", "coverage95")


def case_intervals(
    pred: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray,
    muscles: list[str],
    cases: list[str],
    sd: np.ndarray | None = None,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of Pearson r, MAPE and, with an sd, Spearman and coverage.

    The resampling unit is the case (``cases`` names each sample's body): the views of one body
    share its anatomy and their errors, so resampling views would make the intervals too narrow.
    Returns ``{"muscles": {name: {key: [low, high]}}, "mean": {key: [low, high]}, "resamples",
    "level", "cases"}``; the mean's interval is that of the mean over muscles, resampled together.
    An interval is ``None`` where the figure is undefined in too many resamples (fewer than 3
    cases).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = rng.uniform(50, 150, (40, 1)); p = t + rng.normal(0, 5, t.shape)
    >>> iv = case_intervals(p, t, np.ones_like(t, bool), ["m"], [str(i // 2) for i in range(40)])
    >>> low, high = iv["muscles"]["m"]["pcc"]; bool(low < np.corrcoef(p[:, 0], t[:, 0])[0, 1] < high)
    True
    """
    keys = [k for k in INTERVAL_KEYS if sd is not None or k in ("pcc", "mape")]
    _, index = np.unique(np.asarray(cases), return_inverse=True)
    groups = int(index.max()) + 1 if len(index) else 0
    rng = np.random.default_rng(seed)
    # A resample is a count per case; every sample of a case drawn k times weighs k.
    counts = np.stack(
        [np.bincount(rng.integers(0, groups, groups), minlength=groups) for _ in range(resamples)]
    )
    weights = counts[:, index].astype(np.float64)  # (resamples, samples)
    values = np.full((resamples, len(muscles), len(keys)), np.nan)
    for j in range(len(muscles)):
        ok = valid[:, j] & np.isfinite(truth[:, j]) & (truth[:, j] > 0)
        w, p, t = weights[:, ok], pred[ok, j], truth[ok, j]
        err = np.abs(p - t)
        total = w.sum(axis=1)
        enough = (w > 0).sum(axis=1) >= 3
        figures = {"pcc": _weighted_pearson(p, t, w), "mape": 100 * (w @ (err / t)) / np.maximum(total, 1)}
        if sd is not None:
            s = sd[ok, j]
            figures["spearman_sd_abs_error"] = _weighted_pearson(
                _weighted_ranks(s, w), _weighted_ranks(err, w), w
            )
            figures["coverage95"] = (w @ (err <= 1.96 * s)) / np.maximum(total, 1)
        for i, k in enumerate(keys):
            values[:, j, i] = np.where(enough, figures[k], np.nan)
    tail = 100 * (1 - level) / 2

    def interval(samples: np.ndarray) -> list[float] | None:
        finite = samples[np.isfinite(samples)]
        if len(finite) < 0.9 * resamples:
            return None
        return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN muscles in a resample
        means = np.nanmean(values, axis=1)
    return {
        "muscles": {
            m: {k: interval(values[:, j, i]) for i, k in enumerate(keys)} for j, m in enumerate(muscles)
        },
        "mean": {k: interval(means[:, i]) for i, k in enumerate(keys)},
        "resamples": resamples,
        "level": level,
        "cases": groups,
    }


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of ``a`` and ``b`` (each ``(n,)`` or ``(R, n)``) under each row of weights ``w``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        total = w.sum(axis=1, keepdims=True)
        da = a - (w * a).sum(axis=1, keepdims=True) / total
        db = b - (w * b).sum(axis=1, keepdims=True) / total
        return (w * da * db).sum(axis=1) / np.sqrt((w * da * da).sum(axis=1) * (w * db * db).sum(axis=1))


def _weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` in each resample, a sample drawn ``k`` times taking the mean of its ``k`` ranks.

    Equal values of different samples are ranked in their order (continuous figures rarely tie).
    """
    order = np.argsort(x, kind="stable")
    ws = w[:, order]
    ranks = np.empty_like(ws)
    ranks[:, order] = np.cumsum(ws, axis=1) - ws + (ws + 1) / 2
    return ranks
