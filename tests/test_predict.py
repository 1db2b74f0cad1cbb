"""``evaluate`` and ``predict`` with a small trained model: files, contracts, statuses, bad input."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from safetensors.torch import load_file, save_file
from scipy import stats
from typer.testing import CliRunner

from cli import app
from tests.conftest import TINY_RECIPE as TINY
from training.config import DecompositionConfig
from training.decomposition import train_decomposition
from xraymuscle.agreement import metrics_csv, with_intervals
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.clinical_style import clinical_style
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.inference import McResult
from xraymuscle.metrics import case_intervals, icc_2_1, spearman_ceiling, volume_metrics
from xraymuscle.model import load_model
from xraymuscle.paths import default_model_dir
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.predict import _legend_line, prediction_row
from xraymuscle.prepare import GridTarget, Prepared, prepare
from xraymuscle.preview import colour, legend

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_drr: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    drr = tiny_drr
    root = tmp_path_factory.mktemp("predict")
    model = root / "model"
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 2})
    train_decomposition(drr, model, recipe, progress=False, echo=lambda s: None)
    return drr, model


def test_metrics_against_hand_values() -> None:
    truth = np.array([[100.0], [200.0], [300.0], [400.0]])
    pred = truth * 1.1
    table = volume_metrics(pred, truth, np.ones_like(truth, bool), ["m"], sd=np.full_like(truth, 15.0))
    row = table["muscles"]["m"]
    assert row["pcc"] == pytest.approx(1.0) and row["mape"] == pytest.approx(10.0)
    assert row["bias_ml"] == pytest.approx(25.0) and row["mae_ml"] == pytest.approx(25.0)
    assert row["coverage95"] == pytest.approx(0.5)  # |error| 10, 20, 30, 40 against 1.96 x 15
    assert icc_2_1(truth[:, 0], pred[:, 0]) < 1.0
    # absolute agreement: a constant offset between raters lowers ICC(2,1) below 1
    a = np.array([9, 6, 8, 7, 10, 6.0])
    assert icc_2_1(a, a + 2) < icc_2_1(a, a)
    assert math.isnan(row["spearman_ceiling"])  # one sd for every case ranks nothing


def test_table_cells_stay_short() -> None:
    """An absurd value (a DICOM spacing of 1e308 mm, rejected) takes a few characters, not 300."""
    from xraymuscle.predict import format_cell

    assert [format_cell(v) for v in (1234.56789, 0.000123456, 5e307, float("inf"), float("nan"), None)] == [
        "1234.568", "0.0001235", "5e+307", "inf", "", ""
    ]  # fmt: skip


def test_spearman_ceiling_is_what_exact_sds_reach() -> None:
    rng = np.random.default_rng(5)
    sd = np.exp(rng.normal(0.0, 0.35, 100))
    direct = np.mean([stats.spearmanr(sd, np.abs(rng.normal(0.0, sd)))[0] for _ in range(400)])
    assert spearman_ceiling(sd) == pytest.approx(direct, abs=0.03)
    assert 0.25 < spearman_ceiling(sd) < 0.42
    # sds that hardly differ rank errors no better than chance; widely different ones rank them well
    assert abs(spearman_ceiling(np.exp(rng.normal(0.0, 1e-3, 100)))) < 0.03
    assert spearman_ceiling(np.exp(rng.normal(0.0, 1.5, 100))) > 0.6


def test_case_intervals_match_a_slow_resampling_of_cases() -> None:
    """The weighted bootstrap equals rebuilding each resample by hand, a case's views together."""
    rng = np.random.default_rng(3)
    cases = [f"c{i // 2}" for i in range(30)] + ["lone"]  # 15 cases of two views and one of one
    truth = rng.uniform(50, 300, (31, 2))
    truth[1::2] = truth[0:-1:2] * rng.uniform(0.97, 1.03, (15, 2))  # a case's views agree closely
    sd = truth * rng.uniform(0.03, 0.12, truth.shape)
    pred = truth + rng.normal(0, sd)
    shared = (pred[0:-1:2] - truth[0:-1:2]) * rng.uniform(0.9, 1.1, (15, 2))
    pred[1::2] = truth[1::2] + shared  # the body, not the view, decides the error
    valid = np.ones_like(truth, bool)
    valid[4, 1] = False
    resamples = 40
    iv = case_intervals(pred, truth, valid, ["a", "b"], cases, sd=sd, resamples=resamples, level=0.8, seed=7)
    labels, index = np.unique(cases, return_inverse=True)
    draws = np.random.default_rng(7)
    figures = []
    for _ in range(resamples):
        rows = np.concatenate(
            [np.flatnonzero(index == g) for g in draws.integers(0, len(labels), len(labels))]
        )
        per_muscle = []
        for j in range(2):
            r = rows[valid[rows, j]]
            p, t, s = pred[r, j], truth[r, j], sd[r, j]
            err = np.abs(p - t)
            r_vol, r_sd = stats.pearsonr(p, t)[0], stats.spearmanr(s, err)[0]
            per_muscle.append([r_vol, 100 * np.mean(err / t), r_sd, np.mean(err <= 1.96 * s)])
        figures.append(per_muscle)
    values = np.array(figures)  # (resamples, muscles, keys)
    keys = ["pcc", "mape", "spearman_sd_abs_error", "coverage95"]
    for i, key in enumerate(keys):
        assert iv["muscles"]["b"][key] == pytest.approx(np.percentile(values[:, 1, i], [10, 90]), rel=1e-9)
        assert iv["mean"][key] == pytest.approx(
            np.percentile(values[:, :, i].mean(axis=1), [10, 90]), rel=1e-9
        )
    assert iv["cases"] == 16
    # views that share their errors are not independent samples: resampled by case, the interval is wider
    by_view = case_intervals(pred, truth, valid, ["a", "b"], [str(i) for i in range(31)], resamples=400)
    by_case = case_intervals(pred, truth, valid, ["a", "b"], cases, resamples=400)
    width = {name: np.diff(t["mean"]["mape"])[0] for name, t in (("view", by_view), ("case", by_case))}
    assert width["case"] > 1.2 * width["view"]


def test_evaluate_writes_metrics_and_plots(trained: tuple[Path, Path], tmp_path: Path) -> None:
    drr, model = trained
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(model), "--data", str(drr), "--out", str(out)]
    with pytest.warns(UserWarning, match="this is the model's training data, so its figures will be too"):
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"muscles", "mean", "intervals", "out_of_distribution"}
    data = DrrDataset.load(drr)
    assert metrics["intervals"]["cases"] == len({row["case_id"] for row in data.rows})
    # the share of the dataset that `predict` would reject as unlike the training images, and
    # each sample's score in predictions.csv
    with (out / "predictions.csv").open() as fh:
        scores = np.array([float(r["ood_score"]) for r in csv.DictReader(fh)])
    ood = metrics["out_of_distribution"]
    assert ood["n"] == len(data) == len(scores) and ood["threshold"] == load_model(model).ood.threshold
    assert ood["rejected"] == pytest.approx(np.mean(scores > ood["threshold"]))
    assert np.all(scores > 0)
    keys = {
        "pcc",
        "icc",
        "mae_ml",
        "mape",
        "bias_ml",
        "spearman_sd_abs_error",
        "spearman_ceiling",
        "coverage95",
    }
    assert keys <= set(metrics["muscles"]["gluteus_medius_left"]) and keys <= set(metrics["mean"])
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["muscle"] == "mean" and len(rows) == 15
    _assert_intervals_in_csv(metrics, rows)  # four cases: too few for intervals, the cells stay empty
    # and with enough cases, the intervals reach the CSV
    rng = np.random.default_rng(0)
    truth = rng.uniform(50, 300, (40, 2))
    pred, sd = truth * rng.normal(1.0, 0.05, truth.shape), truth * 0.05
    valid, cases = np.ones_like(truth, bool), [str(i // 2) for i in range(40)]
    table = with_intervals(
        volume_metrics(pred, truth, valid, ["a", "b"], sd=sd),
        case_intervals(pred, truth, valid, ["a", "b"], cases, sd=sd),
    )
    _assert_intervals_in_csv(table, list(csv.DictReader(io.StringIO(metrics_csv(table)))))
    assert all(v is not None for v in table["mean"]["ci95"].values())
    for name in ("predicted_vs_true.png", "bland_altman.png", "uncertainty_vs_error.png"):
        assert cv2.imread(str(out / name)) is not None
    # the muscle groups: a group's MAE is that of the summed volumes in predictions.csv
    groups = json.loads((out / "group_metrics.json").read_text())
    assert groups["groups"]["gluteal_left"] == [
        "gluteus_maximus_left",
        "gluteus_medius_left",
        "gluteus_minimus_left",
    ]
    with (out / "predictions.csv").open() as fh:
        samples = list(csv.DictReader(fh))
    members = groups["groups"]["thigh_right"]
    pred = np.array([sum(float(r[f"volume_ml__{m}"]) for m in members) for r in samples])
    true = np.array([sum(float(r[f"true_ml__{m}"]) for m in members) for r in samples])
    assert groups["muscles"]["thigh_right"]["n"] == len(samples)
    assert groups["muscles"]["thigh_right"]["mae_ml"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-3)


def _assert_intervals_in_csv(metrics: dict, rows: list[dict[str, str]]) -> None:
    for row, name in zip(rows, [*metrics["muscles"], "mean"], strict=True):
        ci = (metrics["mean"] if name == "mean" else metrics["muscles"][name])["ci95"]
        for key in ("pcc", "mape", "spearman_sd_abs_error", "coverage95"):
            if ci[key] is None:
                assert row[f"{key}_low"] == row[f"{key}_high"] == ""
            else:
                assert float(row[f"{key}_low"]) == pytest.approx(ci[key][0], rel=1e-5)
                assert float(row[f"{key}_high"]) == pytest.approx(ci[key][1], rel=1e-5)
                assert ci[key][0] <= ci[key][1]


def test_inspect_describes_a_dataset_and_a_model_folder(trained: tuple[Path, Path]) -> None:
    drr, model_dir = trained
    data = DrrDataset.load(drr)
    shown = json.loads(runner.invoke(app, ["inspect", str(drr)]).output)
    assert shown["kind"] == "drr_dataset" and shown["samples"] == len(data) > 0
    assert shown["cases"] == len({r["case_id"] for r in data.rows}) and shown["muscles"] == data.muscles
    model = load_model(model_dir)
    shown = json.loads(runner.invoke(app, ["inspect", str(model_dir)]).output)
    assert shown["kind"] == "model" and shown["muscles"] == model.muscles
    assert shown["training"]["samples"] == model.meta["training"]["samples"]
    assert shown["parameters"] == sum(p.numel() for p in model.network.parameters())
    assert "phantoms only" in shown["notice"]


def test_predict_statuses_and_pictures(trained: tuple[Path, Path], tmp_path: Path) -> None:
    drr, model_dir = trained
    data = DrrDataset.load(drr)
    spacing = float(data.info["pixel_spacing_mm"])
    images = tmp_path / "images"
    images.mkdir()
    good = write_dx(images / "drr.dcm", data.sample(0)["image"], pixel_spacing_mm=spacing)
    detector = write_dx(
        images / "detector.dcm", data.sample(1)["image"], pixel_spacing_mm=spacing,
        detector_spacing_mm=spacing * 1.1667, magnification=1.1667,
    )  # fmt: skip
    # Only the detector's spacing: the reader must divide it by the training geometry's magnification.
    magnification = float(data.info["geometry"]["sid"]) / float(data.info["geometry"]["sod"])
    detector_only = write_dx(
        images / "detector_only.dcm", data.sample(0)["image"], pixel_spacing_mm=spacing,
        detector_spacing_mm=spacing * magnification,
    )  # fmt: skip
    ds = pydicom.dcmread(detector_only)
    del ds.PixelSpacing
    ds.save_as(detector_only)
    no_spacing = images / "no_spacing.png"
    cv2.imwrite(
        str(no_spacing), (255 * data.sample(2)["image"] / data.sample(2)["image"].max()).astype(np.uint8)
    )
    tiny = images / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((10, 10), np.uint8))
    colour = images / "photo.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(colour), rng.integers(0, 255, (200, 200, 3)).astype(np.uint8))
    text = images / "notes.dcm"
    text.write_text("not an image")
    noise = write_dx(images / "noise.dcm", rng.normal(size=(400, 400)), pixel_spacing_mm=0.9)
    ct_slice = write_dx(images / "ct.dcm", rng.normal(size=(256, 256)), pixel_spacing_mm=0.8)
    ds = pydicom.dcmread(ct_slice)
    ds.Modality = "CT"
    ds.save_as(ct_slice)
    bad_spacing = images / "bad_spacing.dcm"
    ds = pydicom.dcmread(good)
    ds.PixelSpacing = [-1.0, -1.0]
    ds.save_as(bad_spacing)
    paths = [
        good,
        detector,
        detector_only,
        no_spacing,
        tiny,
        colour,
        text,
        noise,
        ct_slice,
        bad_spacing,
        images / "missing.dcm",
    ]
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", *map(str, paths), "--model", str(model_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as fh:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(fh)}
    assert len(rows) == len(paths)
    assert rows["drr.dcm"]["status"] in ("ok", "uncertain")
    assert float(rows["drr.dcm"]["volume_ml__gluteus_medius_left"]) > 0
    assert float(rows["drr.dcm"]["volume_sd_ml__gluteus_medius_left"]) > 0
    assert rows["drr.dcm"]["spacing_source"] == "dicom:PixelSpacing"
    # Both are brought to the isocentre spacing the image was made at (PixelSpacing that differs
    # from ImagerPixelSpacing is taken as calibrated); the same pixels give the same volumes.
    for name, source in (
        ("detector.dcm", "dicom:PixelSpacing"),
        ("detector_only.dcm", "dicom:ImagerPixelSpacing"),
    ):
        assert rows[name]["spacing_source"] == source
        assert float(rows[name]["pixel_spacing_mm"]) == pytest.approx(spacing, abs=1e-3)
    for column in (c for c in rows["drr.dcm"] if c.startswith("volume_ml__")):
        same = float(rows["drr.dcm"][column])
        assert float(rows["detector_only.dcm"][column]) == pytest.approx(same, rel=1e-3)
    assert (
        rows["no_spacing.png"]["status"] == "rejected"
        and "pixel spacing unknown" in rows["no_spacing.png"]["reason"]
    )
    assert rows["bad_spacing.dcm"]["reason"] == (
        "pixel spacing unknown (PixelSpacing -1.0 x -1.0 is not a positive spacing; ignored); "
        "give --pixel-spacing MM"
    )
    assert rows["tiny.png"]["status"] == "rejected" and "too small" in rows["tiny.png"]["reason"]
    assert rows["photo.png"]["status"] == "rejected" and "colour" in rows["photo.png"]["reason"]
    assert rows["notes.dcm"]["status"] == "error"
    assert rows["missing.dcm"]["status"] == "error" and "no such file" in rows["missing.dcm"]["reason"]
    assert (
        rows["noise.dcm"]["status"] == "rejected"
        and "not like the radiographs" in rows["noise.dcm"]["reason"]
    )
    assert rows["ct.dcm"]["status"] == "rejected" and "not a radiograph" in rows["ct.dcm"]["reason"]
    assert all("phantoms only" in r["notice"] for r in rows.values())
    assert (
        len(list((out / "overlays").glob("*.png"))) == 4
        and len(list((out / "uncertainty").glob("*.png"))) == 4
    )
    # The same image given with its spacing on the command line gives the same volumes.
    again = runner.invoke(
        app, ["predict", str(no_spacing), "--model", str(model_dir), "--out", str(tmp_path / "p2"),
              "--pixel-spacing", str(spacing)],
    )  # fmt: skip
    assert again.exit_code == 0 and ("1 ok" in again.output or "1 uncertain" in again.output)
    # A folder stands for the radiographs in it, found as `screen` finds them (subfolders too);
    # a folder with none is a row of its own.
    (images / "more").mkdir()
    shutil.copy(good, images / "more" / "copy.dcm")
    (tmp_path / "empty").mkdir()
    folders = runner.invoke(
        app, ["predict", str(images), str(tmp_path / "empty"), "--model", str(model_dir),
              "--out", str(tmp_path / "p3"), "--pixel-spacing", str(spacing)],
    )  # fmt: skip
    assert folders.exit_code == 0, folders.output
    with (tmp_path / "p3" / "predictions.csv").open() as fh:
        listed = [(r["image"], r["status"], r["reason"]) for r in csv.DictReader(fh)]
    found = sorted(
        str(p) for p in images.rglob("*") if p.suffix in (".dcm", ".png") and p.name != "missing.dcm"
    )
    assert [name for name, _, _ in listed] == [*found, str(tmp_path / "empty")]
    assert listed[-1][1:] == ("error", "no radiographs found (DICOM, PNG, JPEG, TIFF)")
    row = {name: r for name, *r in listed}
    assert row[str(images / "more" / "copy.dcm")][0] in ("ok", "uncertain")


def test_the_overlay_legend_names_each_colour_with_its_volume() -> None:
    row: dict[str, Any] = {
        "volume_ml__gluteus_medius_left": 242.4,
        "volume_sd_ml__gluteus_medius_left": 18.2,
        "volume_ml__iliopsoas_right": "",  # (a rejected image: no volume)
        "volume_sd_ml__iliopsoas_right": "",
    }
    assert _legend_line("gluteus_medius_left", row) == "gluteus medius L  242 ml, sd 18"
    assert _legend_line("iliopsoas_right", row) == "iliopsoas R"
    panel = legend(["first", "second", "third"])
    for i in range(3):  # each line's swatch is its channel's colour, as the maps are drawn
        np.testing.assert_allclose(panel[4 + 18 * i + 6, 8], colour(i), atol=1 / 255)


def test_a_second_predict_into_the_same_folder_replaces_the_first(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """The table is replaced, and so are the pictures: none is left of an image the new table
    does not name (they once stayed, beside a table that no longer listed them)."""
    drr, model_dir = trained
    data = DrrDataset.load(drr)
    spacing = float(data.info["pixel_spacing_mm"])
    a = write_dx(tmp_path / "a.dcm", data.sample(0)["image"], pixel_spacing_mm=spacing)
    b = write_dx(tmp_path / "b.dcm", data.sample(1)["image"], pixel_spacing_mm=spacing)
    out = tmp_path / "out"
    keep = out / "overlays" / "notes.txt"  # not a picture of an earlier run: left alone
    for images in ([a, b], [b]):
        result = runner.invoke(
            app, ["predict", *map(str, images), "--out", str(out), "--model", str(model_dir)]
        )
        assert result.exit_code == 0, result.output
        keep.write_text("mine")
    with (out / "predictions.csv").open() as fh:
        assert [Path(r["image"]).name for r in csv.DictReader(fh)] == ["b.dcm"]
    for folder in ("overlays", "uncertainty"):
        assert sorted(p.name for p in (out / folder).glob("*.png")) == ["0000_b.png"], folder
    assert keep.read_text() == "mine"


def test_predict_does_not_write_among_other_files(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """An --out that holds files of its own and no earlier table is refused, untouched; one that
    a stopped run left (its picture folders, no table yet) is taken up again."""
    drr, model_dir = trained
    data = DrrDataset.load(drr)
    image = write_dx(
        tmp_path / "a.dcm", data.sample(0)["image"], pixel_spacing_mm=float(data.info["pixel_spacing_mm"])
    )
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.docx").write_text("mine")
    result = runner.invoke(app, ["predict", str(image), "--out", str(documents), "--model", str(model_dir)])
    assert result.exit_code == 2
    assert "documents: folder holds other files (thesis.docx) and no predictions.csv" in result.output
    assert sorted(p.name for p in documents.iterdir()) == ["thesis.docx"]
    stopped = tmp_path / "stopped"
    (stopped / "overlays").mkdir(parents=True)
    (stopped / "overlays" / "0000_a.png").write_bytes(b"half")
    (stopped / ".predictions.csv.x1y2.tmp.csv").write_text("half")
    result = runner.invoke(app, ["predict", str(image), "--out", str(stopped), "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert (stopped / "predictions.csv").is_file()


def test_predict_keeps_a_subfolder_it_cannot_read_as_an_error_row(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drr, model_dir = trained
    data = DrrDataset.load(drr)
    spacing = float(data.info["pixel_spacing_mm"])
    images = tmp_path / "images"
    (images / "locked").mkdir(parents=True)
    good = write_dx(images / "drr.dcm", data.sample(0)["image"], pixel_spacing_mm=spacing)
    write_dx(images / "locked" / "hidden.dcm", data.sample(1)["image"], pixel_spacing_mm=spacing)
    # As root no permission bit keeps a folder from being listed, so the refusal is made here.
    locked, scandir = str(images / "locked"), os.scandir

    def refusing(path: str = ".") -> Any:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    result = runner.invoke(
        app, ["predict", str(images), "--model", str(model_dir), "--out", str(tmp_path / "p"),
              "--pixel-spacing", str(spacing)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with (tmp_path / "p" / "predictions.csv").open() as fh:
        listed = [(r["image"], r["status"], r["reason"]) for r in csv.DictReader(fh)]
    assert listed[0] == (str(good), *listed[0][1:]) and listed[0][1] in ("ok", "uncertain")
    assert listed[1:] == [(locked, "error", "folder cannot be read (Permission denied)")]


def test_predict_refuses_a_broken_model(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, model_dir = trained
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model.json").write_text((model_dir / "model.json").read_text())
    result = runner.invoke(app, ["predict", "x.png", "--model", str(broken), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "lacks model.safetensors" in result.output
    result = runner.invoke(
        app,
        [
            "predict",
            "x.png",
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "o"),
            "--pixel-spacing",
            "-1",
        ],
    )
    assert result.exit_code == 2 and "--pixel-spacing must be a positive" in result.output
    assert load_model(model_dir).notice


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _nan_weight(folder: Path) -> None:
    state = load_file(str(folder / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)
    state[name] = state[name].clone()
    state[name].view(-1)[2] = math.nan
    save_file(state, str(folder / "model.safetensors"))


def _other_weights(folder: Path) -> None:
    """Weights that fit the architecture but are not the ones ``model.json`` was written with (as a
    reader finds them between the two renames of a run that writes the folder)."""
    state = load_file(str(folder / "model.safetensors"))
    save_file(
        {k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()},
        str(folder / "model.safetensors"),
    )


def _edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A damage that rewrites ``model.json`` as ``change`` returns it from the original."""

    def edit(folder: Path) -> None:
        meta = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps(change(meta)))

    return edit


def _without(meta: dict, key: str) -> dict:
    return {k: v for k, v in meta.items() if k != key}


def _calibration(meta: dict, **changes: object) -> dict:
    return {**meta, "calibration": {**meta["calibration"], **changes}}


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [
        (_truncate, "model.safetensors", "not a readable safetensors file"),
        (_nan_weight, "model.safetensors", "tensor [a-z0-9_.]+ holds NaN or infinity \\(1 of"),
        (_other_weights, "model.safetensors", "not the weights model.json describes \\(SHA-256 differs\\)"),
        (_edit_json(lambda m: _without(m, "calibration")), "model.json", "calibration is missing"),
        (_edit_json(lambda m: list(m)), "model.json", "holds a JSON list"),
        (_edit_json(lambda m: _without(m, "muscles")), "model.json", "muscles must be a non-empty list"),
        (
            _edit_json(lambda m: _calibration(m, sd_scale=m["calibration"]["sd_scale"][:-1])),
            "model.json",
            "calibration.sd_scale must hold",
        ),
        (
            _edit_json(lambda m: _calibration(m, ood={**m["calibration"]["ood"], "std": [0.0]})),
            "model.json",
            "calibration.ood must give",
        ),
        (
            _edit_json(lambda m: _calibration(m, group_sd_scale={"gluteal_left": -1.0})),
            "model.json",
            "calibration.group_sd_scale must map group names to positive numbers",
        ),
        (
            _edit_json(lambda m: {**m, "architecture": _without(m["architecture"], "depth")}),
            "model.json",
            "architecture cannot be built",
        ),
    ],
)
def test_predict_refuses_a_damaged_model_folder(
    trained: tuple[Path, Path], tmp_path: Path, damage: Callable[[Path], None], file: str, problem: str
) -> None:
    """A model folder cut short, with NaN weights, or whose metadata lacks what inference reads:
    one line naming the file, exit code 2, and no output folder."""
    drr, model_dir = trained
    data = DrrDataset.load(drr)
    image = write_dx(tmp_path / "drr.dcm", data.sample(0)["image"], pixel_spacing_mm=0.9)
    damaged = tmp_path / "model"
    shutil.copytree(model_dir, damaged)
    damage(damaged)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(image), "--model", str(damaged), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert re.search(re.escape(f"{damaged / file}: ") + problem, result.output), result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_non_finite_network_output_is_an_error_not_ok(trained: tuple[Path, Path]) -> None:
    """NaN compares false with every threshold: a row with NaN volumes must not pass as ``ok``."""
    _, model_dir = trained
    model = load_model(model_dir)
    k = len(model.muscles)
    features = np.asarray(model.meta["calibration"]["ood"]["mean"])[None]
    volume = np.full((1, k), 100.0)
    mc = McResult(
        volume,
        volume * 0.01,
        None,
        None,
        np.zeros((1, k, 4, 4)),
        np.zeros((1, k, 4, 4)),
        features,
        volume * 0.01,
    )
    prepared = Prepared("x.dcm", spacing_mm=1.0, spacing_source="user")
    assert prediction_row(prepared, model, (mc, 0, 0.0))["status"] == "ok"
    mc.volume[0, 3] = math.nan
    row = prediction_row(prepared, model, (mc, 0, 0.0))
    assert row["status"] == "error" and "not finite" in row["reason"]


def test_a_groups_sd_takes_the_scale_its_calibration_set(trained: tuple[Path, Path]) -> None:
    """Calibration sets each muscle group's own sd scale on the validation images (pooled with its
    twin); ``predict`` multiplies the group's sd by it, and a model calibrated before groups
    (no scales) reads as scale 1."""
    _, model_dir = trained
    model = load_model(model_dir)
    scales = model.meta["calibration"]["group_sd_scale"]
    assert set(scales) == set(model.groups) == {"gluteal_left", "gluteal_right", "thigh_left", "thigh_right"}
    assert all(v > 0 for v in scales.values()) and scales["gluteal_left"] == scales["gluteal_right"]
    assert set(model.meta["calibration"]["group_mass_sd_scale"]) == set(model.groups)
    k = len(model.muscles)
    volume = np.linspace(100, 400, k)[None]
    mc = McResult(volume, volume * 0.05, None, None, np.zeros((1, k, 4, 4)), np.zeros((1, k, 4, 4)),
                  np.zeros((1, 4)), volume * 0.05, volume_correlation=np.eye(k)[None])  # fmt: skip
    prepared = Prepared("x.dcm", spacing_mm=1.0, spacing_source="user")
    row = prediction_row(prepared, model, (mc, 0, 0.0))
    model.meta["calibration"]["group_sd_scale"] = {}
    del model.meta["calibration"]["group_mass_sd_scale"]
    unscaled = prediction_row(prepared, model, (mc, 0, 0.0))
    for group, scale in scales.items():
        column = f"group_volume_sd_ml__{group}"
        assert float(row[column]) == pytest.approx(scale * float(unscaled[column]), rel=1e-9)


@pytest.fixture(scope="module")
def new_phantom(tmp_path_factory: pytest.TempPathFactory) -> DrrDataset:
    """One new phantom's radiograph, rendered as the shipped model's training cohort was."""
    root = tmp_path_factory.mktemp("new_phantom")
    cohort = make_cohort(1, root / "cohort", seed=7, spacing=3.0, progress=False)
    args = ["--cohort", str(cohort), "--views", "1", "--image-size", "128", "--label-source", "phantom"]
    rendered = runner.invoke(app, ["generate-drr", *args, "--out", str(root / "drr")])
    assert rendered.exit_code == 0, rendered.output
    return DrrDataset.load(root / "drr")


def test_the_shipped_model_works_out_of_the_box(new_phantom: DrrDataset, tmp_path: Path) -> None:
    """Item 7: small, says it was trained on phantoms, and `predict` without --model measures a
    new phantom's radiograph (rendered as the training cohort was) close to its true volumes."""
    folder = default_model_dir()
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 20 * 2**20
    model = load_model(folder)
    assert "phantom" in model.notice.lower() and len(model.muscles) == 14
    data = new_phantom
    pixels, spacing = data.sample(0)["image"], data.info["pixel_spacing_mm"]
    image = write_dx(tmp_path / "drr.dcm", pixels, pixel_spacing_mm=spacing)
    mirror = write_dx(
        tmp_path / "mirror.dcm", np.ascontiguousarray(pixels[:, ::-1]), pixel_spacing_mm=spacing
    )
    # the same mirrored pixels, but the file says so (PatientOrientation R\\F): the same sides
    stored_mirrored = write_dx(
        tmp_path / "stored_mirrored.dcm",
        np.ascontiguousarray(pixels[:, ::-1]),
        pixel_spacing_mm=spacing,
        tags={"PatientOrientation": ["R", "F"]},
    )
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(image), str(mirror), str(stored_mirrored), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as fh:
        row, mirrored, restored = list(csv.DictReader(fh))
    for column in row:
        if column.startswith(("volume_", "mass_")):
            assert float(restored[column]) == pytest.approx(float(row[column]), rel=1e-4), column
    # and the table says how each file was read
    assert "mirrored left-right to the reading orientation (PatientOrientation R\\F)" in restored["notes"]
    assert "PatientOrientation" not in row["notes"]
    assert row["status"] in ("ok", "uncertain") and row["notice"] == model.notice
    truth = data.rows[0]
    # the large muscles, measured to about 6 % on held-out phantoms (README)
    for muscle in ("gluteus_maximus_left", "quadriceps_right"):
        assert float(row[f"volume_ml__{muscle}"]) == pytest.approx(truth[f"volume_ml__{muscle}"], rel=0.15)
    # half its draws are made on the mirrored image: the mirrored radiograph is the same reading
    # with left and right exchanged (the sides of an AP image are only told by its anatomy)
    assert model.twins is not None
    for muscle, twin in zip(model.muscles, [model.muscles[t] for t in model.twins], strict=True):
        for column in ("volume_ml__", "volume_sd_ml__"):
            assert float(mirrored[column + twin]) == pytest.approx(float(row[column + muscle]), rel=1e-4)
    assert mirrored["status"] == row["status"]
    assert float(mirrored["ood_score"]) == pytest.approx(float(row["ood_score"]), rel=1e-4)
    # the groups: each the sum of its muscles, its sd no more than theirs added, and mirrored
    # with the sides exchanged
    for group, members in MuscleCatalog.load().groups.items():
        for value, spread in (("volume_ml__", "volume_sd_ml__"), ("mass_g__", "mass_sd_g__")):
            total = sum(float(row[f"{value}{m}"]) for m in members)
            assert float(row[f"group_{value}{group}"]) == pytest.approx(total, abs=2e-3)
            sds = [float(row[f"{spread}{m}"]) for m in members]
            assert 0 < float(row[f"group_{spread}{group}"]) <= sum(sds) + 1e-3
        twin = (
            group.replace("_left", "_right") if group.endswith("_left") else group.replace("_right", "_left")
        )
        for column in ("group_volume_ml__", "group_volume_sd_ml__", "group_mass_g__", "group_mass_sd_g__"):
            assert float(mirrored[column + twin]) == pytest.approx(float(row[column + group]), rel=1e-4)


def test_the_shipped_model_rejects_what_it_cannot_read(new_phantom: DrrDataset, tmp_path: Path) -> None:
    """Images of the wrong kind that the diagonal score of the bottleneck features let through
    (smoothed noise; a processed clinical-style radiograph, whose volumes it misses by some 40 %)
    are ``rejected`` by the whitened score of all levels, and a phantom radiograph is not. So is a
    radiograph whose grey scale is the wrong way round (bone dark), as a wrong photometric
    interpretation or presentation shape in an archive's file would show it, and one with a lead
    gonad shield over the pubis (which would cost the adductors a fifth of their volume) or a hip
    replacement (which would add more than half to the gluteus medius)."""
    pixels, spacing = new_phantom.sample(0)["image"], float(new_phantom.info["pixel_spacing_mm"])
    rng = np.random.default_rng(0)
    shielded = pixels.copy()  # a lead gonad shield over the pubis: 70 mm wide, 55 mm tall, white
    h, w = pixels.shape
    half, tall, top = round(35 / spacing), round(55 / spacing), round(0.62 * h)
    corners = np.array([[w // 2 - half, top], [w // 2 + half, top], [w // 2, top + tall]], np.int32)
    shield = cv2.fillPoly(np.zeros((h, w), np.uint8), [corners], 1).astype(bool)
    shielded[shield] = pixels.max() * 1.5
    prosthesis = pixels.copy()  # a hip replacement in the right femur: a 48 mm head, a 130 mm stem
    head, radius = (round(0.26 * w), round(0.44 * h)), round(24 / spacing)
    metal = cv2.circle(np.zeros((h, w), np.uint8), head, radius, 1, -1)
    stem = [(-6, 0), (6, 0), (-2, 130), (-8, 130)]  # mm from the head's centre
    points = np.array(
        [[head[0] + round(x / spacing), head[1] + round(y / spacing)] for x, y in stem], np.int32
    )
    prosthesis[cv2.fillPoly(metal, [points], 1).astype(bool)] = pixels.max() * 1.5
    images = {
        "phantom.dcm": pixels,
        "clinical.dcm": clinical_style(pixels, spacing, rng),
        "inverted.dcm": pixels.max() + pixels.min() - pixels,
        "shielded.dcm": shielded,
        "prosthesis.dcm": prosthesis,
        **{f"noise{s}.dcm": cv2.GaussianBlur(rng.normal(size=(128, 128)), (0, 0), s) for s in (1, 3)},
    }
    paths = [write_dx(tmp_path / name, image, pixel_spacing_mm=spacing) for name, image in images.items()]
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as fh:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(fh)}
    assert rows["phantom.dcm"]["status"] in ("ok", "uncertain")
    for name in (
        "clinical.dcm",
        "inverted.dcm",
        "shielded.dcm",
        "prosthesis.dcm",
        "noise1.dcm",
        "noise3.dcm",
    ):
        assert rows[name]["status"] == "rejected" and "not like the radiographs" in rows[name]["reason"], name


def test_a_raw_detector_image_reads_as_the_processed_one(new_phantom: DrrDataset, tmp_path: Path) -> None:
    """The same exposure stored as the detector's raw counts (FOR PROCESSING, linear in the beam's
    intensity, bone dark) is measured as its log-processed picture is, not taken for an image of
    the wrong kind."""
    pixels, spacing = new_phantom.sample(0)["image"], float(new_phantom.info["pixel_spacing_mm"])
    shown = write_dx(tmp_path / "shown.dcm", pixels, pixel_spacing_mm=spacing)
    raw = pydicom.dcmread(write_dx(tmp_path / "raw.dcm", pixels, pixel_spacing_mm=spacing))
    counts = np.round(60000 * np.exp(-(pixels - pixels.min()))).astype(np.uint16)  # pixels: -log(I/I0)
    raw.PixelData, raw.BitsStored, raw.HighBit = counts.tobytes(), 16, 15
    raw.PresentationIntentType = "FOR PROCESSING"
    raw.PixelIntensityRelationship, raw.PixelIntensityRelationshipSign = "LIN", 1
    raw.save_as(tmp_path / "raw.dcm", enforce_file_format=True)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(shown), str(tmp_path / "raw.dcm"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as fh:
        processed, detector = list(csv.DictReader(fh))
    assert detector["status"] == processed["status"] != "rejected", detector["reason"]
    # the same within a small part of the reading's own uncertainty (the processed file is
    # quantised to 12 bits and clipped at its 0.1st and 99.9th percentiles; the raw one is not)
    for column in processed:
        if column.startswith("volume_ml__"):
            sd = float(processed[column.replace("volume_ml__", "volume_sd_ml__")])
            difference = float(detector[column]) - float(processed[column])
            assert abs(difference) <= sd / 2, column  # (0.31 sd at most, measured)


def test_a_given_magnification_divides_a_detector_spacing(new_phantom: DrrDataset, tmp_path: Path) -> None:
    """A file with its spacing at the detector, measured with ``--magnification M``, reads as the
    same file given the spacing at the patient, detector spacing / M; without the option, the
    training geometry's magnification is used."""
    pixels, spacing = new_phantom.sample(0)["image"], float(new_phantom.info["pixel_spacing_mm"])
    magnification = 1.25
    detector = write_dx(tmp_path / "detector.dcm", pixels, pixel_spacing_mm=spacing)
    ds = pydicom.dcmread(detector)
    del ds.PixelSpacing, ds.PixelSpacingCalibrationType
    ds.ImagerPixelSpacing = [f"{spacing * magnification:.6g}"] * 2
    ds.save_as(detector, enforce_file_format=True)
    runs = {
        "given": ["--magnification", str(magnification)],
        "at_patient": ["--pixel-spacing", f"{spacing:.6g}"],
        "training": [],
    }
    tables = {}
    for name, options in runs.items():
        result = runner.invoke(app, ["predict", str(detector), "--out", str(tmp_path / name), *options])
        assert result.exit_code == 0, result.output
        with (tmp_path / name / "predictions.csv").open() as fh:
            tables[name] = next(csv.DictReader(fh))
    given, at_patient, training = tables["given"], tables["at_patient"], tables["training"]
    assert float(given["pixel_spacing_mm"]) == pytest.approx(spacing, rel=1e-3)  # (the table's 4 digits)
    for column in given:
        if column.startswith("volume_ml__"):
            assert float(given[column]) == pytest.approx(float(at_patient[column]), rel=1e-4), column
    geometry = load_model(default_model_dir()).meta["training"]["geometry"]
    trained = float(geometry["sid"]) / float(geometry["sod"])  # divided by the training's instead
    assert abs(trained - magnification) > 0.01
    assert float(training["pixel_spacing_mm"]) == pytest.approx(spacing * magnification / trained, rel=1e-3)


def test_a_given_hip_height_sets_each_films_magnification(new_phantom: DrrDataset, tmp_path: Path) -> None:
    """``--hip-height-mm H``: a film with its source-to-detector distance is divided by
    ``sid / (sid - H)``, one without it by the same at the training geometry's distance; as
    ``--magnification`` and ``--marker-mm`` set the magnification themselves, neither goes with it."""
    pixels, spacing = new_phantom.sample(0)["image"], float(new_phantom.info["pixel_spacing_mm"])
    detector = spacing * 1.2
    files = {}
    for name, sid in (("with_sid", 1150.0), ("without_sid", None)):
        files[name] = write_dx(tmp_path / f"{name}.dcm", pixels, pixel_spacing_mm=spacing)
        ds = pydicom.dcmread(files[name])
        del ds.PixelSpacing, ds.PixelSpacingCalibrationType
        ds.ImagerPixelSpacing = [f"{detector:.6g}"] * 2
        if sid is not None:
            ds.DistanceSourceToDetector = f"{sid:g}"
        ds.save_as(files[name], enforce_file_format=True)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", *map(str, files.values()), "--out", str(out), "--hip-height-mm", "190"]
    )
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as fh:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(fh)}
    trained = float(load_model(default_model_dir()).meta["training"]["geometry"]["sid"])
    expected = {
        "with_sid": detector * (1150 - 190) / 1150,
        "without_sid": detector * (trained - 190) / trained,
    }
    for name, value in expected.items():
        assert float(rows[name]["pixel_spacing_mm"]) == pytest.approx(value, abs=6e-4), name
    assert "the hip 190 mm above the detector as given" in rows["with_sid"]["notes"]
    assert "(the file gives none)" in rows["without_sid"]["notes"]
    again = ["predict", str(files["with_sid"]), "--out", str(tmp_path / "x"), "--hip-height-mm"]
    for other in (["--magnification", "1.2"], ["--marker-mm", "25"]):
        refused = runner.invoke(app, [*again, "190", *other])
        assert refused.exit_code == 2 and "--hip-height-mm sets the magnification" in refused.output
    refused = runner.invoke(app, [*again, "20"])
    assert (
        refused.exit_code == 2 and "--hip-height-mm must be between 50 and 400 mm, not 20.0" in refused.output
    )


def test_a_study_list_gives_each_film_its_hip_height(new_phantom: DrrDataset, tmp_path: Path) -> None:
    """A list's ``hip_height_mm``: that film's magnification from its own hip height and
    source-to-detector distance, the others' as without it; beside ``--magnification`` refused."""
    pixels, spacing = new_phantom.sample(0)["image"], float(new_phantom.info["pixel_spacing_mm"])
    detector = spacing * 1.2
    for name in ("thick", "plain"):
        path = write_dx(tmp_path / f"{name}.dcm", pixels, pixel_spacing_mm=spacing)
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing, ds.PixelSpacingCalibrationType
        ds.ImagerPixelSpacing = [f"{detector:.6g}"] * 2
        ds.DistanceSourceToDetector = "1150"
        ds.save_as(path, enforce_file_format=True)
    listing = tmp_path / "list.csv"
    listing.write_text("path,hip_height_mm\nthick.dcm,230\nplain.dcm,\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(listing), "--out", str(out), "--hip-height-mm", "150"])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as fh:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(fh)}
    assert float(rows["thick"]["pixel_spacing_mm"]) == pytest.approx(detector * (1150 - 230) / 1150, abs=6e-4)
    assert float(rows["plain"]["pixel_spacing_mm"]) == pytest.approx(detector * (1150 - 150) / 1150, abs=6e-4)
    assert "the hip 230 mm above the detector as given" in rows["thick"]["notes"]
    assert (
        rows["thick"]["volume_ml__gluteus_maximus_left"] != rows["plain"]["volume_ml__gluteus_maximus_left"]
    )
    refused = runner.invoke(
        app, ["predict", str(listing), "--out", str(tmp_path / "x"), "--magnification", "1.2"]
    )
    assert refused.exit_code == 2 and "--magnification would overrule" in refused.output


def test_a_spacing_sd_adds_what_the_spacing_moves_each_volume(
    new_phantom: DrrDataset, tmp_path: Path
) -> None:
    """``--spacing-sd-percent P``: each volume's sd gains, in quadrature, what a spacing P % off
    moves it. The reference is ``predict`` itself, run with the spacing 5 % too large and too small
    and many dropout draws: ``P / 5 · sqrt(((V₊ − V₀)² + (V₋ − V₀)²) / 2)``. The status stays the
    model's, and a mirrored film keeps its sds with the sides exchanged."""
    pixels, spacing = new_phantom.sample(0)["image"], float(new_phantom.info["pixel_spacing_mm"])
    film = write_dx(tmp_path / "film.dcm", pixels, pixel_spacing_mm=spacing)
    mirror = write_dx(
        tmp_path / "mirror.dcm", np.ascontiguousarray(pixels[:, ::-1]), pixel_spacing_mm=spacing
    )

    def run(name: str, *options: str, images: tuple[Path, ...] = (film,)) -> list[dict[str, str]]:
        result = runner.invoke(app, ["predict", *map(str, images), "--out", str(tmp_path / name), *options])
        assert result.exit_code == 0, result.output
        with (tmp_path / name / "predictions.csv").open() as fh:
            return list(csv.DictReader(fh))

    plain, mirrored_plain = run("plain", images=(film, mirror))
    widened, mirrored = run("widened", "--spacing-sd-percent", "4", images=(film, mirror))
    many = ("--mc-samples", "200", "--pixel-spacing")
    at = {f: run(f"x{f}", *many, f"{spacing * f:.6g}")[0] for f in (1.0, 1.05, 0.95)}
    assert plain["spacing_sd_percent"] == "" and widened["spacing_sd_percent"] == "4.000"
    assert widened["status"] == plain["status"]
    muscles = [c[len("volume_ml__") :] for c in plain if c.startswith("volume_ml__")]
    added, expected = [], []
    for m in muscles:
        volume = float(plain[f"volume_ml__{m}"])
        assert float(widened[f"volume_ml__{m}"]) == pytest.approx(volume, rel=1e-6)
        sd, wider = float(plain[f"volume_sd_ml__{m}"]), float(widened[f"volume_sd_ml__{m}"])
        assert wider > sd
        assert float(widened[f"mass_sd_g__{m}"]) > float(plain[f"mass_sd_g__{m}"])  # the mass head's too
        steps = [float(at[f][f"volume_ml__{m}"]) - float(at[1.0][f"volume_ml__{m}"]) for f in (1.05, 0.95)]
        added.append(math.sqrt(wider**2 - sd**2))
        expected.append(4 / 5 * math.sqrt((steps[0] ** 2 + steps[1] ** 2) / 2))
    added_, expected_ = np.array(added), np.array(expected)
    assert added_ == pytest.approx(expected_, rel=0.25, abs=1.0)
    assert added_.sum() == pytest.approx(expected_.sum(), rel=0.08)
    # a spacing 4 % off moves these volumes by about 2 to 3 times as much (a body drawn larger)
    big = [muscles.index(m) for m in ("gluteus_maximus_left", "quadriceps_right")]
    volumes = np.array([float(plain[f"volume_ml__{muscles[j]}"]) for j in big])
    assert np.all((added_[big] / volumes > 0.04) & (added_[big] / volumes < 0.16))
    for group in MuscleCatalog.load().groups:  # one spacing error moves a group's muscles together
        for column in (f"group_volume_sd_ml__{group}", f"group_mass_sd_g__{group}"):
            assert float(widened[column]) > float(plain[column])
    twins = load_model(default_model_dir()).twins
    assert twins is not None
    for m, twin in zip(muscles, [muscles[t] for t in twins], strict=True):
        column = "volume_sd_ml__"
        assert float(mirrored[column + twin]) == pytest.approx(float(widened[column + m]), rel=1e-4)
    assert float(mirrored_plain["volume_sd_ml__iliopsoas_left"]) < float(
        mirrored["volume_sd_ml__iliopsoas_left"]
    )
    refused = runner.invoke(
        app, ["predict", str(film), "--out", str(tmp_path / "bad"), "--spacing-sd-percent", "0"]
    )
    assert refused.exit_code == 2 and "--spacing-sd-percent must be more than 0" in refused.output
    assert not (tmp_path / "bad").exists()


def _with_ball(image: np.ndarray, diameter_px: float) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` with the shadow of a steel ball ``diameter_px`` across, laid where the image is
    darkest (in the air beside the body), as a calibration marker is: nearly opaque, so its
    shadow is a flat disc brighter than bone whose rim is sharp (a chord of 2 pixels saturates
    it) and not clipped (a film that clips it at white reads it up to a pixel wider)."""
    radius = diameter_px / 2
    reach = int(2 * radius) + 2
    darkness = cv2.blur(image.astype(np.float32), (reach, reach))[reach:-reach, reach:-reach]
    row, col = np.unravel_index(np.argmin(darkness), darkness.shape)
    row, col = row + reach + 0.3, col + reach + 0.6  # (off the pixel grid)
    # the chord through the ball (pixels), and its shadow, supersampled 4 x 4 per pixel
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    rr = np.arange(image.shape[0])[:, None, None, None] + sub[None, None, :, None]
    cc = np.arange(image.shape[1])[None, :, None, None] + sub[None, None, None, :]
    chord = 2 * np.sqrt(np.clip(radius**2 - (rr - row) ** 2 - (cc - col) ** 2, 0, None))
    shadow = np.clip(chord / 2.0, 0, 1).mean(axis=(2, 3))
    return image + float(image.max()) * shadow, (row, col)


def test_a_calibration_marker_gives_the_spacing_at_the_hip(new_phantom: DrrDataset, tmp_path: Path) -> None:
    """A film with a 25 mm calibration ball at the hip's height and its spacing at the detector,
    measured with ``--marker-mm 25``, reads as the same film without the ball given the spacing at
    the patient: the magnification (1.25 here, not the training's 1.17) comes from the ball. The
    ball itself is painted out; a film without one is ``rejected``."""
    pixels, spacing = new_phantom.sample(0)["image"], float(new_phantom.info["pixel_spacing_mm"])
    fine = spacing / 6  # at the patient, as a film's pixels are finer than the model's grid
    image = cv2.resize(pixels.astype(np.float32), None, fx=6, fy=6, interpolation=cv2.INTER_CUBIC)
    balled, _ = _with_ball(image, 25.0 / fine)
    magnification = 1.25
    files = {
        "ball": write_dx(tmp_path / "ball.dcm", balled, pixel_spacing_mm=fine),
        "plain": tmp_path / "plain.dcm",
    }
    ds = pydicom.dcmread(files["ball"])
    del ds.PixelSpacing, ds.PixelSpacingCalibrationType
    ds.ImagerPixelSpacing = [f"{fine * magnification:.6g}"] * 2
    ds.save_as(files["ball"], enforce_file_format=True)
    # the same film without the ball, its grey levels mapped as the ball's film's were (so the
    # two differ only where the ball lies)
    lo, hi = np.percentile(balled, [0.1, 99.9])
    plain = np.clip((image - lo) / (hi - lo) * 4095.0, 0, 4095).astype(np.uint16)
    away = balled == image
    np.testing.assert_array_equal(plain[away], ds.pixel_array[away])
    ds.PixelData = plain.tobytes()
    ds.save_as(files["plain"], enforce_file_format=True)
    found = {}
    for name in ("ball", "plain"):
        shown = runner.invoke(app, ["inspect", str(files[name]), "--marker-mm", "25"])
        assert shown.exit_code == 0, shown.output
        found[name] = json.loads(shown.output)["marker"]
    assert found["plain"] is None and found["ball"]["diameter_px"] == pytest.approx(25.0 / fine, rel=5e-3)
    draws = ["--mc-samples", "200"]  # (the draws are seeded by the image: many, so both means settle)
    runs = {
        "marker": [str(files["ball"]), "--marker-mm", "25", *draws],
        "at_patient": [str(files["plain"]), "--pixel-spacing", f"{fine:.6g}", *draws],
        "no_marker": [str(files["plain"]), "--marker-mm", "25"],
        "wrong_size": [str(files["ball"]), "--marker-mm", "22"],  # the ball is 25 mm
    }
    tables = {}
    for name, options in runs.items():
        result = runner.invoke(app, ["predict", "--out", str(tmp_path / name), *options])
        assert result.exit_code == 0, result.output
        with (tmp_path / name / "predictions.csv").open() as fh:
            tables[name] = next(csv.DictReader(fh))
    marker, at_patient, no_marker = tables["marker"], tables["at_patient"], tables["no_marker"]
    # a ball taken for a smaller one implies a magnification (1.42) no ball beside a hip has
    assert "a magnification of 1.42" in tables["wrong_size"]["notes"]
    assert "which no ball beside a hip has (1-1.4): is the marker 22 mm" in tables["wrong_size"]["notes"]
    assert "which no ball" not in marker["notes"]
    assert marker["spacing_source"] == "marker:25mm" and marker["status"] == at_patient["status"] == "ok"
    # the shadow's edge is found to a fraction of a pixel: the spacing within 0.5 %
    assert float(marker["pixel_spacing_mm"]) == pytest.approx(fine, rel=5e-3)
    assert "a magnification of 1.2" in marker["notes"]
    ratios = []
    for column in marker:
        if column.startswith("volume_ml__"):
            muscle = column[len("volume_ml__") :]
            sd = float(at_patient[f"volume_sd_ml__{muscle}"])
            assert abs(float(marker[column]) - float(at_patient[column])) < 0.2 * sd, column
            ratios.append(float(marker[column]) / float(at_patient[column]))
    # no bias: the training magnification instead (1.17) reads them 10 % larger on this film
    assert abs(np.mean(ratios) - 1) < 0.01
    assert no_marker["status"] == "rejected" and "no calibration marker of 25 mm found" in no_marker["reason"]
    # screen reads it the same way (its decoding runs in worker processes)
    study = tmp_path / "study"
    study.mkdir()
    shutil.copyfile(files["ball"], study / "ball.dcm")
    screened = runner.invoke(
        app, ["screen", str(study), "--out", str(tmp_path / "screen"), "--marker-mm", "25", "--workers", "1"]
    )
    assert screened.exit_code == 0, screened.output
    with (tmp_path / "screen" / "results.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert row["spacing_source"] == "marker:25mm" and row["pixel_spacing_mm"] == marker["pixel_spacing_mm"]
    both = runner.invoke(
        app,
        [
            "predict",
            str(files["ball"]),
            "--out",
            str(tmp_path / "x"),
            "--marker-mm",
            "25",
            "--pixel-spacing",
            "1",
        ],
    )
    assert both.exit_code == 2 and "--marker-mm gives the spacing from the image" in both.output
    # a study list's marker_mm: only the film that shows a ball takes its spacing from it
    listing = tmp_path / "list.csv"
    listing.write_text("path,marker_mm\nball.dcm,25\nplain.dcm,\n", encoding="utf-8")
    listed = runner.invoke(app, ["predict", str(listing), "--out", str(tmp_path / "listed"), *draws])
    assert listed.exit_code == 0, listed.output
    with (tmp_path / "listed" / "predictions.csv").open() as fh:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(fh)}
    assert {k: rows["ball"][k] for k in marker} == {**marker, "image": rows["ball"]["image"]}
    assert rows["plain"]["spacing_source"].startswith("dicom:") and rows["plain"]["status"] != "rejected"


@pytest.mark.realdata
def test_the_shipped_model_rejects_real_paediatric_radiographs(real_xray_dir: Path, tmp_path: Path) -> None:
    """The shipped model knows adult phantoms only: the ten real children's AP pelvis films (whose
    placeholder spacing is not trusted, so one is given) are ``rejected``, none read as ``ok``."""
    dicoms = sorted((real_xray_dir / "dicom").glob("*.dcm"))
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", *map(str, dicoms), "--out", str(out), "--pixel-spacing", "0.5"])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    assert all(r["status"] == "rejected" and "not like the radiographs" in r["reason"] for r in rows)


def test_pixels_that_are_not_square_are_resampled_per_axis(tmp_path: Path) -> None:
    """Rows 0.6 mm apart and columns 1.2 mm: the image on the model's grid is the square one's."""
    yy, xx = np.mgrid[0:300, 0:300] / 300.0
    square = 0.3 + 0.3 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.02) + 0.1 * np.sin(9 * xx)
    tall = cv2.resize(square, (300, 600), interpolation=cv2.INTER_LINEAR)
    write_dx(tmp_path / "square.dcm", square, pixel_spacing_mm=1.2)
    write_dx(tmp_path / "tall.dcm", tall, pixel_spacing_mm=1.2)
    ds = pydicom.dcmread(tmp_path / "tall.dcm")
    ds.PixelSpacing = ["0.6", "1.2"]  # row spacing, column spacing
    ds.save_as(tmp_path / "tall.dcm")
    target = GridTarget(size=128, spacing_mm=2.68, magnification=1.0)
    a, b = prepare(tmp_path / "square.dcm", target), prepare(tmp_path / "tall.dcm", target)
    assert a.image is not None and b.image is not None, (a.reason, b.reason)
    assert b.spacing_mm == pytest.approx(0.9)
    field = a.image > 0
    assert field.sum() > 100 * 100 and np.array_equal(field, b.image > 0)
    assert np.abs(a.image - b.image)[field].mean() < 0.01
