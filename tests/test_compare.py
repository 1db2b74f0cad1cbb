"""``compare``: predictions joined with reference volumes, and the figures checked by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.phantom.cohort import make_cohort

runner = CliRunner()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, DrrDataset]:
    """Three new phantoms, two views each, as DICOM in two folders, measured by the shipped model;
    and the reference: each radiograph's volumes and masses in its field of view."""
    root = tmp_path_factory.mktemp("compare")
    cohort = make_cohort(3, root / "cohort", seed=11, spacing=3.0, progress=False)
    args = ["--cohort", str(cohort), "--views", "2", "--image-size", "128", "--label-source", "phantom"]
    rendered = runner.invoke(app, ["generate-drr", *args, "--out", str(root / "drr")])
    assert rendered.exit_code == 0, rendered.output
    data = DrrDataset.load(root / "drr")
    spacing = float(data.info["pixel_spacing_mm"])
    for i, row in enumerate(data.rows):
        folder = root / "films" / f"view_{i % 2}"
        write_dx(folder / f"{row['sample_id']}.dcm", data.sample(i)["image"], pixel_spacing_mm=spacing)
    result = runner.invoke(app, ["predict", str(root / "films"), "--out", str(root / "pred")])
    assert result.exit_code == 0, result.output
    return root / "pred" / "predictions.csv", root, data


def _compare(  # type: ignore[no-untyped-def]
    predictions: Path, truth: Path, out: Path, *options: str, statuses: str | None = "ok,uncertain,rejected"
):
    """``compare`` run on the tables, every row with volumes compared (``statuses=None``: the
    command's default)."""
    chosen = [] if statuses is None else ["--statuses", statuses]
    return runner.invoke(
        app, ["compare", str(predictions), "--truth", str(truth), "--out", str(out), *chosen, *options]
    )


def _reference(data: DrrDataset, path: Path, *, delimiter: str = ",", drop: int | None = None) -> Path:
    """The in-field volumes (ml) and masses (g) of every radiograph, with its case."""
    muscles = data.muscles
    head = ["image", "case_id", *(f"volume_ml__{m}" for m in muscles), *(f"mass_g__{m}" for m in muscles)]
    lines = [delimiter.join(head)]
    for i, row in enumerate(data.rows):
        sample = data.sample(i, keys=("maps", "mass_maps"))
        area = float(row["pixel_area_mm2"])
        volumes = sample["maps"].sum(axis=(1, 2)) * area / 1000
        masses = sample["mass_maps"].sum(axis=(1, 2)) * area / 1000
        cells = [f"{row['sample_id']}.dcm", row["case_id"], *(f"{v:.3f}" for v in volumes)]
        cells += [f"{v:.3f}" for v in masses]
        if drop is not None:
            cells[2 + drop] = ""  # no reference for that muscle on this radiograph
        lines.append(delimiter.join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    return path


def test_compare_gives_the_figures_of_the_joined_rows(measured, tmp_path: Path) -> None:
    """Matched by file name, every radiograph with a status of ok or uncertain is compared; the
    MAE, bias and coverage are those of the two tables, computed here by hand."""
    predictions, _, data = measured
    truth = _reference(data, tmp_path / "truth.csv")
    out = tmp_path / "out"
    result = _compare(predictions, truth, out)
    assert result.exit_code == 0, result.output
    assert "6 radiographs compared (3 cases), 0 left out by status" in result.output
    assert "mean over muscles: r " in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["matching"]["compared"] == 6 and metrics["intervals"]["cases"] == 3
    predicted = {Path(r["image"]).name: r for r in _rows(predictions)}
    reference = {r["image"]: r for r in _rows(truth)}
    for m in data.muscles:
        pred = np.array([float(predicted[k][f"volume_ml__{m}"]) for k in reference])
        sd = np.array([float(predicted[k][f"volume_sd_ml__{m}"]) for k in reference])
        true = np.array([float(reference[k][f"volume_ml__{m}"]) for k in reference])
        row = metrics["muscles"][m]
        assert row["n"] == 6
        assert row["mae_ml"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-3, abs=1e-3)
        assert row["bias_ml"] == pytest.approx(np.mean(pred - true), rel=1e-3, abs=1e-3)
        assert row["coverage95"] == pytest.approx(np.mean(np.abs(pred - true) <= 1.96 * sd))
    masses = json.loads((out / "mass_metrics.json").read_text())
    assert set(masses["muscles"]) == set(data.muscles)
    for m in data.muscles:
        pred = np.array([float(predicted[k][f"mass_g__{m}"]) for k in reference])
        true = np.array([float(reference[k][f"mass_g__{m}"]) for k in reference])
        assert masses["muscles"][m]["mae_ml"] == pytest.approx(
            np.mean(np.abs(pred - true)), rel=1e-3, abs=1e-3
        )
    groups = json.loads((out / "group_metrics.json").read_text())
    for group, members in groups["groups"].items():
        pred = np.array([float(predicted[k][f"group_volume_ml__{group}"]) for k in reference])
        true = np.array([sum(float(reference[k][f"volume_ml__{m}"]) for m in members) for k in reference])
        assert groups["muscles"][group]["n"] == 6
        assert groups["muscles"][group]["mae_ml"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-3)
    assert set(groups["groups"]) == {"gluteal_left", "gluteal_right", "thigh_left", "thigh_right"}
    joined = _rows(out / "matched.csv")
    assert len(joined) == 6 and {r["case_id"] for r in joined} == {r["case_id"] for r in data.rows}
    with (out / "metrics.csv").open() as fh:
        assert [r["muscle"] for r in csv.DictReader(fh)] == [*data.muscles, "mean"]
    for plot in ("predicted_vs_true.png", "bland_altman.png", "uncertainty_vs_error.png"):
        assert (out / plot).stat().st_size > 1000


def test_a_hand_made_reference_with_gaps_and_extra_rows(measured, tmp_path: Path) -> None:
    """Semicolons, a byte-order mark and a capital in a column's name (a spreadsheet's export), an
    empty cell, a radiograph the predictions do not hold, and a muscle with no reference at all."""
    predictions, _, data = measured
    truth = _reference(data, tmp_path / "truth.csv", delimiter=";", drop=0)
    lines = truth.read_text(encoding="utf-8-sig").splitlines()
    head = lines[0].split(";")
    gone = head.index("volume_ml__adductors_right")
    rows = [";".join(c for i, c in enumerate(line.split(";")) if i != gone) for line in lines]
    rows.append(";".join(["elsewhere.dcm", "case_x", *["100"] * (len(head) - 3)]))
    rows[0] = rows[0].replace("image;", "Image;", 1)  # a spreadsheet's capital
    truth.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    out = tmp_path / "out"
    result = _compare(predictions, truth, out)
    assert result.exit_code == 0, result.output
    assert "1 only in the reference" in result.output and "no reference for adductors_right" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["matching"]["only_in_truth"] == 1
    assert "adductors_right" not in metrics["muscles"]
    first = data.muscles[0]
    assert metrics["muscles"][first]["n"] == 0 and metrics["muscles"][data.muscles[1]]["n"] == 6
    groups = json.loads((out / "group_metrics.json").read_text())
    # a group is compared where the reference holds all its muscles: not the left gluteal group (no
    # gluteus maximus) nor the right thigh (no adductors)
    assert set(groups["groups"]) == {"gluteal_right", "thigh_left"}
    assert groups["muscles"]["gluteal_right"]["n"] == 6
    assert math.isnan(metrics["muscles"][first]["mae_ml"] or math.nan)


def test_statuses_decide_which_rows_are_compared(measured, tmp_path: Path) -> None:
    """By default the rows with status ok or uncertain; ``--statuses`` adds rejected ones (which
    carry volumes); an error row, without volumes, is never compared."""
    predictions, _, data = measured
    truth = _reference(data, tmp_path / "truth.csv")
    rows = _rows(predictions)
    rows[0]["status"], rows[1]["status"] = "rejected", "error"
    for column in rows[1]:
        if column.startswith(("volume_", "mass_")):
            rows[1][column] = ""
    edited = tmp_path / "predictions.csv"
    with edited.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plain = _compare(edited, truth, tmp_path / "a", statuses=None)
    assert plain.exit_code == 0, plain.output
    assert "4 radiographs compared (3 cases), 2 left out by status" in plain.output
    more = _compare(edited, truth, tmp_path / "b")
    assert more.exit_code == 0, more.output
    assert "5 radiographs compared (3 cases), 1 left out by status" in more.output
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["muscles"][data.muscles[0]]["n"] == 5


def test_two_films_of_one_name_need_matching_by_path(measured, tmp_path: Path) -> None:
    """Films of the same name in two folders cannot be told apart by name: refused, with the way
    out; matched by path, each gets its own reference."""
    _, root, data = measured
    films = tmp_path / "films"
    source = next((root / "films").rglob("*.dcm"))
    for folder in ("a", "b"):
        (films / folder).mkdir(parents=True)
        (films / folder / "film.dcm").write_bytes(source.read_bytes())
    result = runner.invoke(app, ["predict", str(films), "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    predictions = tmp_path / "pred" / "predictions.csv"
    images = [r["image"] for r in _rows(predictions)]
    columns = ",".join(f"volume_ml__{m}" for m in data.muscles)
    truth = tmp_path / "truth.csv"
    truth.write_text(
        f"image,{columns}\n"
        + "".join(f"{image},{','.join(['300'] * len(data.muscles))}\n" for image in images)
    )
    by_name = _compare(predictions, truth, tmp_path / "o1")
    assert (
        by_name.exit_code == 2 and "has the file name of" in by_name.output and "film.dcm" in by_name.output
    )
    assert "--match path" in by_name.output and not (tmp_path / "o1").exists()
    # the predictions alone, with a reference naming one of the two, are refused as well
    one = tmp_path / "one.csv"
    one.write_text(f"image,{columns}\nfilm.dcm,{','.join(['300'] * len(data.muscles))}\n")
    ambiguous = _compare(predictions, one, tmp_path / "o5")
    assert ambiguous.exit_code == 2 and "two radiographs share the file name film.dcm" in ambiguous.output
    by_path = _compare(predictions, truth, tmp_path / "o2", "--match", "path")
    assert by_path.exit_code == 0, by_path.output
    assert "2 radiographs compared (2 cases)" in by_path.output
    # matched by name, a path in the reference stands for its file name
    single = tmp_path / "single.csv"
    single.write_text(f"image,{columns}\n{images[0]},{','.join(['300'] * len(data.muscles))}\n")
    lone = tmp_path / "lone.csv"
    with lone.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(_rows(predictions)[0]))
        writer.writeheader()
        writer.writerow(_rows(predictions)[0])
    by_its_name = _compare(lone, single, tmp_path / "o3")
    assert by_its_name.exit_code == 0 and "1 radiographs compared" in by_its_name.output
    twice = tmp_path / "twice.csv"
    twice.write_text(single.read_text() + single.read_text().splitlines()[1] + "\n")
    refused = _compare(lone, twice, tmp_path / "o4")
    assert refused.exit_code == 2 and "film.dcm is already on line 2" in refused.output


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: t.replace("image,", "film,", 1), "no 'image' column naming the radiographs"),
        (lambda t: t + t.splitlines()[1] + "\n", "is already on line 2"),
        (lambda t: _cell(t, "x1"), "'x1' is not a number"),
        (lambda t: _cell(t, "-5"), "-5 is not a volume or mass"),
        (lambda t: t.replace(".dcm", ".png"), "none of its 6 radiographs is in"),
        (lambda t: "image\n", "no volume_ml__<muscle> column with values"),
        (lambda t: _without_volumes(t), "no volume_ml__<muscle> column with values"),
        (lambda t: _without_volumes(t) + "elsewhere.dcm,x" + ",1" * 28 + "\n",
         "no volume_ml__<muscle> value for any matched"),
    ],
)  # fmt: skip
def test_a_bad_reference_is_one_line_and_writes_nothing(measured, tmp_path: Path, edit, problem) -> None:
    predictions, _, data = measured
    truth = _reference(data, tmp_path / "truth.csv")
    truth.write_text(edit(truth.read_text(encoding="utf-8-sig")), encoding="utf-8")
    out = tmp_path / "out"
    result = _compare(predictions, truth, out)
    assert result.exit_code == 2, result.output
    assert problem in result.output and str(truth.name) in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def _without_volumes(text: str) -> str:
    """The reference with its volume cells emptied (its masses kept)."""
    lines = text.splitlines()
    head = lines[0].split(",")
    rows = [
        [("" if head[i].startswith("volume_ml__") else c) for i, c in enumerate(line.split(","))]
        for line in lines[1:]
    ]
    return "\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n"


def _cell(text: str, value: str) -> str:
    """The reference with its first row's first volume set to ``value``."""
    lines = text.splitlines()
    cells = lines[1].split(",")
    cells[2] = value
    lines[1] = ",".join(cells)
    return "\n".join(lines) + "\n"


def test_bad_tables_and_options(measured, tmp_path: Path) -> None:
    predictions, _, data = measured
    truth = _reference(data, tmp_path / "truth.csv")
    not_predictions = tmp_path / "other.csv"
    not_predictions.write_text("a,b\n1,2\n")
    cases = [
        ([str(not_predictions), "--truth", str(truth)], "not a predictions table"),
        ([str(tmp_path / "none.csv"), "--truth", str(truth)], "no such file"),
        ([str(predictions), "--truth", str(tmp_path / "none.csv")], "no such file"),
        ([str(predictions), "--truth", str(truth), "--match", "stem"], "--match must be one of name, path"),
        ([str(predictions), "--truth", str(truth), "--statuses", "error"], "--statuses takes ok, uncertain"),
    ]
    for args, problem in cases:
        result = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and problem in result.output, (args, result.output)
        assert not (tmp_path / "out").exists()
