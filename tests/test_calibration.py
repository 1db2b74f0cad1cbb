"""``calibrate``: a finished model's spread calibrated again on other validation cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tests.conftest import TINY_RECIPE as TINY
from tests.conftest import phantom_drr
from training.config import DecompositionConfig
from training.decomposition import train_decomposition
from xraymuscle.model import METADATA, WEIGHTS, load_model

runner = CliRunner()
# what the calibration sets from the validation cases (the out-of-distribution statistics aside)
SET_BY_VALIDATION = (
    "sd_scale",
    "mass_sd_scale",
    "group_sd_scale",
    "group_mass_sd_scale",
    "cv_threshold",
    "validation_coverage95_raw",
    "validation_coverage95_calibrated",
    "validation_cases",
)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three phantoms the tiny models never learn, two views each, rendered as ``tiny_drr`` is."""
    return phantom_drr(tmp_path_factory.mktemp("held_out"), 3, 17)


@pytest.fixture(scope="module")
def validated(tiny_drr: Path, held_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained with ``--val held_out``: its calibration was made on those cases."""
    model = tmp_path_factory.mktemp("validated") / "model"
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 2})
    train_decomposition(tiny_drr, model, recipe, val_dir=held_out, progress=False, echo=lambda s: None)
    return model


def test_the_same_validation_cases_give_the_training_runs_calibration(
    validated: Path, held_out: Path, tmp_path: Path
) -> None:
    """Recalibrated on the cases training calibrated it on, a model gets the calibration training
    gave it, number for number; its weights are copied byte for byte and its out-of-distribution
    statistics kept."""
    out = tmp_path / "again"
    result = runner.invoke(
        app, ["calibrate", "--model", str(validated), "--val", str(held_out), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "6 validation images" in result.output and "sd scales" in result.output
    before = json.loads((validated / METADATA).read_text())["calibration"]
    after = json.loads((out / METADATA).read_text())["calibration"]
    assert set(SET_BY_VALIDATION) <= set(after)
    for key in SET_BY_VALIDATION:
        assert after[key] == pytest.approx(before[key], rel=1e-6), key
    assert after["ood"] == before["ood"]
    assert after["recalibrated"]["validation"] == str(held_out)
    assert (out / WEIGHTS).read_bytes() == (validated / WEIGHTS).read_bytes()
    load_model(out)
    shown = json.loads(runner.invoke(app, ["inspect", str(out)]).output)["calibration"]
    assert shown["recalibrated"]["validation"] == str(held_out) and shown["group_sd_scale"]


def test_other_validation_cases_set_the_scales_evaluate_finds(
    tiny_drr: Path, held_out: Path, tmp_path: Path
) -> None:
    """A model calibrated on cases held out of its own training data, then again on new cases:
    the stored scales change, and ``evaluate`` on those cases finds the intervals of each muscle
    and its twin together covering at least 11 of every 12 of them (a pair's scale is the 95th
    percentile of their 12 values of |error| / sd, mirrored draws pooling the two sides)."""
    model = tmp_path / "model"
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 2})
    train_decomposition(tiny_drr, model, recipe, progress=False, echo=lambda s: None)
    out = tmp_path / "recalibrated"
    result = runner.invoke(
        app, ["calibrate", "--model", str(model), "--val", str(held_out), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    old = json.loads((model / METADATA).read_text())["calibration"]
    new = json.loads((out / METADATA).read_text())["calibration"]
    assert new["sd_scale"] != pytest.approx(old["sd_scale"])
    assert new["recalibrated"]["replaced"]["sd_scale"] == old["sd_scale"]
    assert f"(were {min(old['sd_scale']):.2f}-{max(old['sd_scale']):.2f})" in result.output
    for name in (model, out):
        evaluated = runner.invoke(
            app,
            [
                "evaluate",
                "--model",
                str(name),
                "--data",
                str(held_out),
                "--out",
                str(tmp_path / name.name / "e"),
            ],
        )
        assert evaluated.exit_code == 0, evaluated.output
        metrics = json.loads((tmp_path / name.name / "e" / "metrics.json").read_text())
    muscles = metrics["muscles"]  # the recalibrated model's
    for left in (m for m in muscles if m.endswith("_left")):
        right = left.replace("_left", "_right")
        assert (muscles[left]["coverage95"] + muscles[right]["coverage95"]) / 2 >= 11 / 12 - 1e-9, left


def test_bad_requests_are_refused_in_one_line(
    validated: Path, tiny_drr: Path, held_out: Path, tmp_path: Path
) -> None:
    def run(*args: str) -> str:
        result = runner.invoke(app, ["calibrate", *args])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        return result.output

    assert "not the model's own" in run(
        "--model", str(validated), "--val", str(held_out), "--out", str(validated)
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "holds files already" in run("--model", str(validated), "--val", str(held_out), "--out", str(busy))
    assert (busy / "notes.txt").read_text() == "mine"
    trained_on = json.loads((validated / METADATA).read_text())["training"]["data"]
    assert "training set" in run("--model", str(validated), "--val", trained_on, "--out", str(tmp_path / "x"))
    assert "no such" in run(
        "--model", str(tmp_path / "none"), "--val", str(held_out), "--out", str(tmp_path / "y")
    )
    manifest = str(held_out / "manifest.csv")
    assert "a file, not a DRR dataset's folder" in run(
        "--model", str(validated), "--val", manifest, "--out", str(tmp_path / "z")
    )
    assert not any((tmp_path / name).exists() for name in "xyz")
