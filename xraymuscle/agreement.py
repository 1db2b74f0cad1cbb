"""Agreement of measured volumes with true ones: the figures, their table and plots.

Shared by ``evaluate`` (a model against a labelled DRR dataset) and ``compare`` (a table of
predictions against reference volumes, such as a study's own CT-derived ones).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.metrics import INTERVAL_KEYS, case_intervals, volume_metrics

METRIC_KEYS = (
    "n", "pcc", "icc", "mae_ml", "mape", "bias_ml", "spearman_sd_abs_error", "spearman_ceiling", "coverage95"
)  # fmt: skip


def write_agreement(
    out: Path,
    pred: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray,
    sd: np.ndarray,
    muscles: list[str],
    cases: list[str],
    *,
    plots: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``metrics.json`` and ``metrics.csv`` (per muscle and their mean, with bootstrap intervals
    over ``cases``) and, with ``plots``, the three PNG plots, under ``out``; returns the metrics.
    ``extra`` adds blocks of its own to ``metrics.json``."""
    metrics = agreement_figures(pred, truth, valid, sd, muscles, cases) | (extra or {})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_text_atomic(out / "metrics.csv", metrics_csv(metrics))
    if plots:
        agreement_plots(out, muscles, pred, truth, sd, valid)
    return metrics


def agreement_figures(
    pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, sd: np.ndarray, names: list[str], cases: list[str]
) -> dict[str, Any]:
    """The figures per column (``names``: muscles, or muscle groups) and their mean, each with its
    bootstrap interval over ``cases`` (``metrics.json``'s layout)."""
    return with_intervals(
        volume_metrics(pred, truth, valid, names, sd=sd),
        case_intervals(pred, truth, valid, names, cases, sd=sd),
    )


def write_json(path: Path, metrics: dict[str, Any]) -> None:
    """``metrics`` as standard JSON (NaN as null), written atomically."""
    write_text_atomic(path, json.dumps(json_clean(metrics), indent=1))


def with_intervals(metrics: dict[str, Any], intervals: dict[str, Any]) -> dict[str, Any]:
    """Each row gains ``ci95`` (``{key: [low, high]}``), and the table an ``intervals`` block saying how."""
    for name, row in metrics["muscles"].items():
        row["ci95"] = intervals["muscles"][name]
    metrics["mean"]["ci95"] = intervals["mean"]
    metrics["intervals"] = {
        "method": "percentile bootstrap over cases (all views of a case together)",
        **{k: intervals[k] for k in ("level", "resamples", "cases")},
    }
    return metrics


def json_clean(value: Any) -> Any:
    """NaN → None, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: json_clean(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def metrics_csv(metrics: dict[str, Any]) -> str:
    """``metrics.csv``: a row per muscle and one for the mean, each figure and its interval's ends."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    bounds = [f"{k}_{end}" for k in INTERVAL_KEYS for end in ("low", "high")]
    writer.writerow(["muscle", *METRIC_KEYS, *bounds])
    rows = [*metrics["muscles"].items(), ("mean", metrics["mean"])]
    for name, row in rows:
        ci = row.get("ci95", {})
        ends = [ci.get(k) or [None, None] for k in INTERVAL_KEYS]
        figures = [format_number(row.get(k)) for k in METRIC_KEYS]
        writer.writerow([name, *figures, *(format_number(v) for end in ends for v in end)])
    return buf.getvalue()


def paired_csv(
    head: list[str],
    leads: list[list[str]],
    muscles: list[str],
    pred: np.ndarray,
    sd: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray,
    *,
    tail: tuple[str, list[str]] | None = None,
) -> str:
    """A CSV of each case's true, predicted and sd values per muscle (``true_ml__<m>``,
    ``volume_ml__<m>``, ``volume_sd_ml__<m>``; no truth where ``valid`` is false), after the
    ``head`` columns whose cells ``leads`` gives per case, and before one ``tail`` column."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = [*head]
    for m in muscles:
        columns += [f"true_ml__{m}", f"volume_ml__{m}", f"volume_sd_ml__{m}"]
    writer.writerow([*columns, *([tail[0]] if tail else [])])
    for i, lead in enumerate(leads):
        cells = list(lead)
        for j in range(len(muscles)):
            values = (truth[i, j] if valid[i, j] else math.nan, pred[i, j], sd[i, j])
            cells += [format_number(float(v)) for v in values]
        writer.writerow([*cells, *([tail[1][i]] if tail else [])])
    return buf.getvalue()


def format_number(value: Any) -> str:
    """A table cell: floats to 6 significant digits, missing and NaN as empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def agreement_plots(
    out: Path, muscles: list[str], pred: np.ndarray, truth: np.ndarray, sd: np.ndarray, valid: np.ndarray
) -> None:
    """``predicted_vs_true.png``, ``bland_altman.png`` and ``uncertainty_vs_error.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xraymuscle.preview import colour

    cols = 4
    rows = math.ceil(len(muscles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for j, m in enumerate(muscles):
        ax = axes[j // cols][j % cols]
        ok = valid[:, j] & (truth[:, j] > 0)
        if ok.any():
            ax.errorbar(
                truth[ok, j], pred[ok, j], yerr=1.96 * sd[ok, j], fmt="o", ms=2, lw=0.5, color=colour(j)
            )
            lo, hi = (
                float(min(truth[ok, j].min(), pred[ok, j].min())),
                float(max(truth[ok, j].max(), pred[ok, j].max())),
            )
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(m.replace("_", " "), fontsize=8)
        ax.set_xlabel("true volume (ml)", fontsize=7)
        ax.set_ylabel("predicted (ml)", fontsize=7)
        ax.tick_params(labelsize=6)
    for j in range(len(muscles), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("Predicted vs true volume (bars: 95 % interval)")
    save_figure(fig, out / "predicted_vs_true.png")

    fig, ax = plt.subplots(figsize=(7, 5))
    for j, m in enumerate(muscles):
        ok = valid[:, j] & (truth[:, j] > 0)
        mean = (pred[ok, j] + truth[ok, j]) / 2
        ax.scatter(mean, pred[ok, j] - truth[ok, j], s=5, color=colour(j), label=m.replace("_", " "))
    diff = (pred - truth)[valid & (truth > 0)]
    if diff.size:
        bias, spread = float(diff.mean()), float(diff.std())
        for y, style in ((bias, "-"), (bias + 1.96 * spread, "--"), (bias - 1.96 * spread, "--")):
            ax.axhline(y, color="k", ls=style, lw=0.8)
    ax.set_xlabel("mean of predicted and true (ml)")
    ax.set_ylabel("predicted − true (ml)")
    ax.set_title("Bland–Altman (lines: bias and 95 % limits of agreement)")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, out / "bland_altman.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    for j, m in enumerate(muscles):
        ok = valid[:, j] & (truth[:, j] > 0)
        ax.scatter(
            sd[ok, j], np.abs(pred[ok, j] - truth[ok, j]), s=5, color=colour(j), label=m.replace("_", " ")
        )
    top = float(np.nanmax(sd[valid])) if valid.any() else 1.0
    ax.plot([0, top], [0, 1.96 * top], "k--", lw=0.8, label="|error| = 1.96 sd")
    ax.set_xlabel("predicted sd (ml, calibrated)")
    ax.set_ylabel("|error| (ml)")
    ax.set_title("Uncertainty vs error")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, out / "uncertainty_vs_error.png")


def save_figure(fig: Any, path: Path) -> None:
    """Lay the figure out, write it atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
