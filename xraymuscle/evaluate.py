"""``evaluate``: a model against a labelled DRR dataset — agreement, calibration, and plots."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from training.data import DrrTrainingSet, GridSpec, collect
from xraymuscle.agreement import agreement_figures, format_number, paired_csv, write_agreement, write_json
from xraymuscle.atomic import write_text_atomic
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.inference import check_mc_samples, mc_predict
from xraymuscle.model import LoadedModel, load_model
from xraymuscle.muscle_groups import group_table, group_truth
from xraymuscle.run_lock import locks_output


@locks_output("out")
def evaluate_model(
    model_dir: Path,
    data_dir: Path,
    out: Path,
    *,
    mc_samples: int | None = None,
    device: str = "cpu",
    plots: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.csv``, ``predictions.csv`` (and PNG plots) under ``out``;
    ``progress`` shows a progress bar over the images."""
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
    result = predict_dataset(model, data, mc_samples=mc_samples, device=device, progress=progress)
    scales = np.asarray(model.meta["calibration"]["sd_scale"])
    sd = result["sd"] * scales
    cases = [row["case_id"] for row in data.rows]
    result["ood_score"] = model.ood.score(result["features"])
    ood = {
        "threshold": model.ood.threshold,
        "rejected": float(np.mean(result["ood_score"] > model.ood.threshold)),
        "n": len(data),
    }
    out = Path(out)
    metrics = write_agreement(
        out, result["pred"], result["truth"], result["valid"], sd, data.muscles, cases,
        plots=plots, extra={"out_of_distribution": ood},
    )  # fmt: skip
    if result["mass"] is not None:
        mass_scales = np.asarray(model.meta["calibration"].get("mass_sd_scale", scales))
        mass_sd = result["mass_sd"] * mass_scales
        mass_metrics = agreement_figures(
            result["mass"], result["mass_truth"], result["valid"], mass_sd, data.muscles, cases
        )
        write_json(out / "mass_metrics.json", mass_metrics)
    if model.groups:
        write_json(out / "group_metrics.json", _group_metrics(model, result, sd, cases))
    table = paired_csv(
        ["sample_id", "case_id"], [[row["sample_id"], row["case_id"]] for row in data.rows], data.muscles,
        result["pred"], sd, result["truth"], result["valid"],
        tail=("ood_score", [format_number(float(v)) for v in result["ood_score"]]),
    )  # fmt: skip
    write_text_atomic(out / "predictions.csv", table)
    return metrics


def _group_metrics(
    model: LoadedModel, result: dict[str, Any], sd: np.ndarray, cases: list[str]
) -> dict[str, Any]:
    """The figures of the model's muscle groups (summed volumes, their sd as ``predict`` gives
    it), over the samples whose every muscle of the group has a truth."""
    names = list(model.groups)
    pred, group_sd = group_table(result["pred"], sd, result["correlation"], model.groups)
    group_sd = group_sd * model.group_sd_scales("volume")
    truth, valid = group_truth(result["truth"], result["valid"], model.groups)
    return agreement_figures(pred, truth, valid, group_sd, names, cases) | {
        "groups": {name: [model.muscles[j] for j in members] for name, members in model.groups.items()}
    }


def predict_dataset(
    model: LoadedModel,
    data: DrrDataset,
    *,
    mc_samples: int | None = None,
    device: str = "cpu",
    progress: bool = False,
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
        progress="evaluating" if progress else None,
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
        "correlation": mc.volume_correlation,
    }
