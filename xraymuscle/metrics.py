"""Agreement and calibration figures for predicted volumes against the truth.

Per muscle: n, Pearson r, ICC(2,1) (two-way random effects, absolute agreement, single measure),
MAE (ml), MAPE (%), bias (ml, predicted − true), and with a predicted sd: the Spearman correlation
between sd and absolute error, its ceiling (what that correlation would be on average were each
sd exactly its error's standard deviation), and the coverage of the 95 % interval ``mean ± 1.96·sd``.
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
