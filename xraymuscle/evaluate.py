"""``evaluate``: a model against a labelled DRR dataset — agreement, calibration, and plots."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from training.data import DrrTrainingSet, GridSpec, collect
from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.inference import check_mc_samples, mc_predict
from xraymuscle.metrics import INTERVAL_KEYS, case_intervals, volume_metrics
from xraymuscle.model import LoadedModel, load_model
from xraymuscle.run_lock import locks_output

METRIC_KEYS = (
    "n", "pcc", "icc", "mae_ml", "mape", "bias_ml", "spearman_sd_abs_error", "spearman_ceiling", "coverage95"
)  # fmt: skip


@locks_output("out")
def evaluate_model(
    model_dir: Path,
    data_dir: Path,
    out: Path,
    *,
    mc_samples: int | None = None,
    device: str = "cpu",
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.csv``, ``predictions.csv`` (and PNG plots) under ``out``."""
    check_mc_samples(mc_samples)
    for given in (model_dir, data_dir):
        if os.path.realpath(out) == os.path.realpath(given):
            raise InputError("--out must be a folder of its own, not the model's or the dataset's", out)
    model = load_model(model_dir, device=device)
    data = DrrDataset.load(data_dir)
    training = model.meta.get("training") or {}
    for role in ("data", "validation"):
        recorded = training.get(role)
        if isinstance(recorded, str) and os.path.realpath(recorded) == os.path.realpath(data_dir):
            what = "training" if role == "data" else "validation (calibration)"
            warnings.warn(
                f"{data_dir}: this is the model's {what} data, so its figures will be too optimistic; "
                "held-out cases measure a model",
                stacklevel=2,
            )
    if data.muscles != model.muscles:
        raise InputError(
            f"dataset muscles {data.muscles} differ from the model's {model.muscles} (order matters)",
            data_dir,
        )
    if len(data) == 0:
        raise InputError("the dataset has no samples", data_dir)
    result = predict_dataset(model, data, mc_samples=mc_samples, device=device)
    scales = np.asarray(model.meta["calibration"]["sd_scale"])
    sd = result["sd"] * scales
    cases = [row["case_id"] for row in data.rows]
    metrics = _with_intervals(
        volume_metrics(result["pred"], result["truth"], result["valid"], data.muscles, sd=sd),
        case_intervals(result["pred"], result["truth"], result["valid"], data.muscles, cases, sd=sd),
    )
    result["ood_score"] = model.ood.score(result["features"])
    metrics["out_of_distribution"] = {
        "threshold": model.ood.threshold,
        "rejected": float(np.mean(result["ood_score"] > model.ood.threshold)),
        "n": len(data),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps(_clean(metrics), indent=1))
    write_text_atomic(out / "metrics.csv", _metrics_csv(metrics))
    if result["mass"] is not None:
        mass_scales = np.asarray(model.meta["calibration"].get("mass_sd_scale", scales))
        mass_sd = result["mass_sd"] * mass_scales
        mass_metrics = _with_intervals(
            volume_metrics(result["mass"], result["mass_truth"], result["valid"], data.muscles, sd=mass_sd),
            case_intervals(
                result["mass"], result["mass_truth"], result["valid"], data.muscles, cases, sd=mass_sd
            ),
        )
        write_text_atomic(out / "mass_metrics.json", json.dumps(_clean(mass_metrics), indent=1))
    write_text_atomic(out / "predictions.csv", _predictions_csv(data, result, sd))
    if plots:
        _plots(out, data.muscles, result["pred"], result["truth"], sd, result["valid"])
    return metrics


def predict_dataset(
    model: LoadedModel, data: DrrDataset, *, mc_samples: int | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """MC predictions for every sample of a DRR dataset, with the truth on the model's grid."""
    grid = GridSpec(model.input_size, model.pixel_spacing_mm)
    mass = bool(model.meta["architecture"]["mass_head"])
    dataset = DrrTrainingSet(
        data, list(range(len(data))), grid, map_scale_mm=float(model.meta["map_scale_mm"]), mass=mass
    )
    images, truth, mass_truth, valid = collect(dataset)
    mc = mc_predict(
        model.network,
        images,
        samples=mc_samples or int(model.meta["mc_samples"]),
        pixel_area_mm2=grid.pixel_area_mm2,
        map_scale_mm=float(model.meta["map_scale_mm"]),
        device=device,
        keep_maps=False,
        twins=model.twins,
    )
    return {
        "pred": mc.volume,
        "sd": mc.volume_sd,
        "truth": truth,
        "valid": valid,
        "mass": mc.mass,
        "mass_sd": mc.mass_sd,
        "mass_truth": mass_truth,
        "features": mc.features,
    }


def _with_intervals(metrics: dict[str, Any], intervals: dict[str, Any]) -> dict[str, Any]:
    """Each row gains ``ci95`` (``{key: [low, high]}``), and the table an ``intervals`` block saying how."""
    for name, row in metrics["muscles"].items():
        row["ci95"] = intervals["muscles"][name]
    metrics["mean"]["ci95"] = intervals["mean"]
    metrics["intervals"] = {
        "method": "percentile bootstrap over cases (all views of a case together)",
        **{k: intervals[k] for k in ("level", "resamples", "cases")},
    }
    return metrics


def _clean(value: Any) -> Any:
    """NaN → None, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _metrics_csv(metrics: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    bounds = [f"{k}_{end}" for k in INTERVAL_KEYS for end in ("low", "high")]
    writer.writerow(["muscle", *METRIC_KEYS, *bounds])
    rows = [*metrics["muscles"].items(), ("mean", metrics["mean"])]
    for name, row in rows:
        ci = row.get("ci95", {})
        ends = [ci.get(k) or [None, None] for k in INTERVAL_KEYS]
        writer.writerow(
            [name, *(_fmt(row.get(k)) for k in METRIC_KEYS), *(_fmt(v) for end in ends for v in end)]
        )
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _predictions_csv(data: DrrDataset, result: dict[str, Any], sd: np.ndarray) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = ["sample_id", "case_id"]
    for m in data.muscles:
        head += [f"true_ml__{m}", f"volume_ml__{m}", f"volume_sd_ml__{m}"]
    writer.writerow([*head, "ood_score"])
    for i, row in enumerate(data.rows):
        cells: list[str] = [row["sample_id"], row["case_id"]]
        for j in range(len(data.muscles)):
            truth = result["truth"][i, j] if result["valid"][i, j] else math.nan
            cells += [_fmt(float(truth)), _fmt(float(result["pred"][i, j])), _fmt(float(sd[i, j]))]
        writer.writerow([*cells, _fmt(float(result["ood_score"][i]))])
    return buf.getvalue()


def _plots(
    out: Path, muscles: list[str], pred: np.ndarray, truth: np.ndarray, sd: np.ndarray, valid: np.ndarray
) -> None:
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
    _save(fig, out / "predicted_vs_true.png")

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
    _save(fig, out / "bland_altman.png")

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
    _save(fig, out / "uncertainty_vs_error.png")


def _save(fig: Any, path: Path) -> None:
    """Lay the figure out, write it atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
