"""The command line through Typer's runner: help, version, commands, and one-line errors (exit 2)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from xraymuscle import __version__
from xraymuscle.paths import default_model_dir
from xraymuscle.phantom.anatomy import DEFAULT_LAYERING
from xraymuscle.volume import Volume

runner = CliRunner()


def test_help_and_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "phantom", "generate-drr", "train", "evaluate", "predict", "screen", "train-cyclegan", "adapt",
        "clinical-style", "demo", "inspect", "catalog",
    ):  # fmt: skip
        assert command in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_phantom_command(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    result = runner.invoke(
        app,
        ["phantom", "--n", "2", "--out", str(out), "--seed", "3", "--spacing", "5", "--preview"],
    )
    assert result.exit_code == 0, result.output
    with (out / "cohort.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert (out / rows[0]["ct"]).is_file() and (out / "phantom_0001" / "preview.png").is_file()
    assert {r["layering"] for r in rows} == {DEFAULT_LAYERING}  # the command's default is the library's


def test_inspect_radiograph_and_volume(tmp_path: Path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((20, 30), np.uint16))
    result = runner.invoke(app, ["inspect", str(tmp_path / "x.png"), "--pixel-spacing", "0.2"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["spacing_source"] == "user" and info["shape"] == [20, 30] and info["bits_stored"] == 16
    ct = Volume(np.full((4, 5, 6), -1000.0, np.float32), (1.0, 2.0, 3.0))  # air, in HU
    ct.array[:, :, 2:] = 40.0  # and muscle
    ct.save(tmp_path / "ct.nii.gz")
    lab = Volume(np.zeros((4, 5, 6), np.uint8), (1.0, 2.0, 3.0))
    lab.array[1, 1, 1] = 3
    lab.save(tmp_path / "lab.nii.gz")
    result = runner.invoke(
        app,
        [
            "inspect",
            str(tmp_path / "ct.nii.gz"),
            "--labels",
            str(tmp_path / "lab.nii.gz"),
            "--label-source",
            "phantom",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["spacing_mm"] == [1.0, 2.0, 3.0] and info["labels"] == [3]
    assert info["muscles"]["gluteus_medius_left"]["volume_ml"] == pytest.approx(0.006)
    # a label map on another grid is resampled with a warning, which the command shows as one line
    Volume(lab.array, (1.0, 2.0, 3.0), (0.5, 0.0, 0.0)).save(tmp_path / "shifted.nii.gz")
    args = ["inspect", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "shifted.nii.gz")]
    plain = warnings.formatwarning
    try:
        with pytest.warns(UserWarning, match="shifted.nii.gz: label map grid differs") as caught:
            result = runner.invoke(app, [*args, "--label-source", "phantom"])
        assert result.exit_code == 0, result.output
        shown = warnings.formatwarning(
            caught[0].message, caught[0].category, caught[0].filename, caught[0].lineno
        )
    finally:
        warnings.formatwarning = plain
    assert shown == f"warning: {caught[0].message}\n"  # not the file, line and source of the call
    assert str(caught[0].message).startswith(f"{tmp_path / 'shifted.nii.gz'}: label map grid differs")


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "text.nii.gz").write_text("not an image")
    (tmp / "note.dcm").write_text("not a dicom" * 30)
    body = np.full((3, 3, 3), -1000.0, np.float32)  # air, in HU,
    body[:, :, 1:] = 40.0  # and muscle
    Volume(body, (1, 1, 1)).save(tmp / "ct.nii.gz")
    Volume(np.full((3, 3, 3), 0.5, np.float32), (1, 1, 1)).save(tmp / "frac.nii.gz")
    return [
        (["inspect", str(tmp / "missing.nii.gz")], "missing.nii.gz: no such file"),
        (["inspect", str(tmp / "text.nii.gz")], "text.nii.gz: not a readable image"),
        (["inspect", str(tmp / "note.dcm")], "note.dcm: not a readable DICOM"),
        (
            ["inspect", str(tmp)],
            "folder holds no DICOM series, DRR dataset (dataset.json) or model (model.json)",
        ),
        (
            ["inspect", str(tmp / "ct.nii.gz"), "--labels", str(tmp / "frac.nii.gz")],
            "frac.nii.gz: label map holds non-integer",
        ),
        (["inspect", str(tmp / "frac.nii.gz")], "frac.nii.gz: values do not look like Hounsfield units"),
        (
            ["catalog", "--label-source", "atlas"],
            "known sources: ['phantom', 'totalsegmentator_v2']",
        ),
        (["catalog", "knee"], "unknown muscles preset 'knee'"),
        (["phantom", "--n", "0", "--out", str(tmp / "o")], "--n must be at least 1"),
        (
            ["phantom", "--n", "1", "--spacing", "-2", "--out", str(tmp / "o")],
            "--spacing must be in",
        ),
        (
            ["phantom", "--n", "1", "--spacing", "0.1", "--out", str(tmp / "o")],
            "--spacing 0.1 mm needs about 4000 GB of memory per phantom",
        ),
        (
            ["adapt", "--cyclegan", str(tmp), "--data", str(tmp), "--out", str(tmp / "o")]
            + ["--direction", "sideways"],
            "--direction must be one of drr-to-real, real-to-drr, not 'sideways'",
        ),
        (
            ["phantom", "--n", "1", "--seed", "-1", "--out", str(tmp / "o")],
            "--seed must be from 0 to 4294967295, not -1",
        ),
        (
            ["demo", "--seed", str(2**32), "--out", str(tmp / "o")],
            f"--seed must be from 0 to 4294967295, not {2**32}",
        ),
        (
            ["predict", str(tmp / "x.png"), "--out", str(tmp / "o"), "--mc-samples", "1"],
            "from 2 to 1000, not 1",
        ),
        (
            ["screen", str(tmp), "--out", str(tmp / "o"), "--mc-samples", "100000"],
            "from 2 to 1000, not 100000",
        ),
        (
            ["evaluate", "--model", str(default_model_dir()), "--data", str(tmp), "--out", str(tmp / "o")]
            + ["--mc-samples", "1"],
            "--mc-samples must be from 2 to 1000, not 1",
        ),
        (
            ["evaluate", "--model", str(default_model_dir()), "--data", str(tmp), "--out", str(tmp)],
            "--out must be a folder of its own, not the model's or the dataset's",
        ),
    ]


def test_user_mistakes_are_one_line_exit_2(tmp_path: Path) -> None:
    for args, expected in _bad_inputs(tmp_path):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert expected in lines[0], (args, lines[0])
        assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
