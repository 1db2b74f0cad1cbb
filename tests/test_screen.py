"""``screen``: every input once, bad files recorded, kill -9 and resume, metadata, report, Ray."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli import app
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.journal import Journal
from xraymuscle.model import load_model
from xraymuscle.paths import default_model_dir
from xraymuscle.predict import numeric_columns
from xraymuscle.screen import screen_study
from xraymuscle.study import StudyInput, age_years, find_inputs
from xraymuscle.synthetic_study import write_study

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def study(
    tiny_drr: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, tuple[str, ...]]]:
    """A study of 12 good radiographs (six patients) and one of every bad file."""
    data = DrrDataset.load(tiny_drr)
    spacing = float(data.info["pixel_spacing_mm"])
    images = [(data.sample(i)["image"], spacing) for i in range(len(data))]
    folder = tmp_path_factory.mktemp("study") / "study"
    return folder, write_study(folder, images, 12, seed=4)


@pytest.fixture(scope="module")
def screened(study, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    folder, _ = study
    out = tmp_path_factory.mktemp("screened") / "out"
    screen_study(folder, out, workers=1, batch=5, progress=False, echo=lambda s: None)
    return out, _rows(out / "results.csv")


def test_every_input_gets_one_row_with_the_right_status(study, screened) -> None:
    _, expected = study
    out, rows = screened
    assert sorted(r["image"] for r in rows) == sorted(expected)
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)  # stable order
    for row in rows:
        assert row["status"] in expected[row["image"]], (row["image"], row["status"], row["reason"])
        if row["status"] in ("error", "rejected"):
            assert row["reason"], row
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["image"] for r in table] == [r["image"] for r in rows]
    measured = [r for r in table if r["status"] in ("ok", "uncertain")]
    assert measured and all(r["volume_ml__gluteus_medius_left"] > 0 for r in measured)
    reasons = {Path(r["image"]).name: r["reason"] for r in rows}
    assert "too large" in reasons["huge.png"] and "no pixel data" in reasons["no_pixels.dcm"]
    assert "CT" in reasons["ct_slice.dcm"] and "colour" in reasons["photo.png"]
    assert "spacing" in reasons["film16.png"]
    # the column that says how each file was read
    assert all("notes" in r for r in rows) and all("notes" in r for r in table)


def test_parquet_numbers_are_numbers(screened) -> None:
    """Every number of the table (volumes, masses, group sums, spacings, sds) is a float in
    Parquet, the CSV's to its rounding, with null where the CSV cell is empty; text stays text."""
    import pyarrow as pa

    out, rows = screened
    table = pq.read_table(out / "results.parquet")
    model = load_model(default_model_dir())
    numeric = numeric_columns(model) | {"age_years"}
    assert any(c.startswith("group_volume_ml__") for c in numeric) and "spacing_sd_percent" in numeric
    for column in table.column_names:
        kind = table.schema.field(column).type
        assert kind == (pa.float64() if column in numeric else pa.string()), (column, kind)
    values = table.to_pylist()
    for row, parquet_row in zip(rows, values, strict=True):
        for column in numeric & set(table.column_names):
            cell = row[column]  # rounded to 3 decimals
            expected = None if cell == "" else pytest.approx(float(cell), abs=6e-4)
            assert parquet_row[column] == expected, column
    measured = [r for r in values if r["status"] in ("ok", "uncertain")]
    assert measured and all(r["group_volume_ml__gluteal_left"] > 0 for r in measured)


def test_duplicates_are_named_and_agree_exactly(screened) -> None:
    _, rows = screened
    by_name = {Path(r["image"]).name: r for r in rows}
    copies = sorted(
        (by_name[n] for n in ("xr_00000.dcm", "duplicate.dcm", "hüfte ap 1.dcm")), key=lambda r: r["image"]
    )
    first, others = copies[0], copies[1:]  # the first in the study's order is the original
    assert first["duplicate_of"] == ""
    for copy in others:
        assert copy["duplicate_of"] == first["image"]
        # per-image seeded draws: the same content gives the same numbers in any batch
        assert copy["volume_ml__gluteus_maximus_left"] == first["volume_ml__gluteus_maximus_left"]
        assert copy["status"] == first["status"]
    assert sum(1 for r in rows if r["duplicate_of"]) == 2


def test_study_metadata_pseudonymised_and_names_never_written(screened) -> None:
    out, rows = screened
    good = [r for r in rows if "/good/" in r["image"]]
    assert all(r["sex"] in ("F", "M") and 20 <= float(r["age_years"]) < 95 for r in good)
    assert all(r["study_date"].startswith("2026") and r["manufacturer"].startswith("Vendor") for r in good)
    assert all(len(r["patient_pseudonym"]) == 16 for r in good)
    assert good[0]["patient_pseudonym"] == good[1]["patient_pseudonym"]  # two radiographs per patient
    assert good[0]["patient_pseudonym"] != good[2]["patient_pseudonym"]
    assert "patient_id" not in rows[0]
    for name in ("results.csv", "results.parquet", "journal.jsonl", "report.html"):
        blob = (out / name).read_bytes()
        assert b"Synthetic^Person" not in blob and b"SYN00000" not in blob, name
    assert (out / "pseudonym_salt.txt").read_text().strip()


def test_keep_identifiers_and_the_salt_is_per_study(study, screened, tmp_path: Path) -> None:
    folder, _ = study
    _, first = screened
    keep = tmp_path / "keep"
    screen_study(
        folder / "good", keep, workers=0, keep_identifiers=True, report=False, progress=False, echo=str
    )
    rows = _rows(keep / "results.csv")
    assert rows[0]["patient_id"] == "SYN000000"
    # another output folder has another salt, so pseudonyms do not link studies
    earlier = {r["image"]: r["patient_pseudonym"] for r in first}
    assert all(r["patient_pseudonym"] != earlier[r["image"]] for r in rows)


def test_age_strings() -> None:
    assert age_years("045Y") == 45 and age_years("006M") == 0.5 and age_years("012W") == pytest.approx(0.23)
    assert age_years("") is None and age_years("abc") is None


def test_inputs_from_a_csv_and_unreadable_folders(study, tmp_path: Path, monkeypatch) -> None:
    folder, expected = study
    listing = tmp_path / "list.csv"
    good = sorted(p for p in expected if "/good/" in p)[:3]
    rel = os.path.relpath(good[0], tmp_path)
    listing.write_text(f"path\n{rel}\n{good[1]}\n{good[2]}\n{tmp_path / 'gone.dcm'}\n", encoding="utf-8")
    found = find_inputs(listing)
    assert [i.path for i in found] == sorted([*good, str(tmp_path / "gone.dcm")])
    # as a spreadsheet exports it: a byte-order mark, semicolons, more columns; or tabs
    for sep in (";", "\t"):
        lines = [f"age{sep}Path{sep}sex", *(f"61{sep}{p}{sep}F" for p in good)]
        listing.write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
        assert [i.path for i in find_inputs(listing)] == good
    # a suffix-less DICOM file is found by its content
    bare = tmp_path / "tree" / "IM0001"
    bare.parent.mkdir()
    shutil.copyfile(good[0], bare)
    (tmp_path / "tree" / "README").write_text("not an image")
    shutil.copyfile(good[0], tmp_path / "tree" / "DICOMDIR")  # a medium's index (DICM, no pixels)
    (tmp_path / "tree" / "._IM0001.dcm").write_bytes(b"\x00\x05\x16\x07" + bytes(200))  # a copy's stub
    locked = tmp_path / "tree" / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path=".") -> object:  # the operating system refusing one folder
        if os.path.abspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = find_inputs(tmp_path / "tree")
    assert [(Path(i.path).name, bool(i.problem)) for i in found] == [("IM0001", False), ("locked", True)]
    out = tmp_path / "out"
    screen_study(tmp_path / "tree", out, workers=0, report=False, progress=False, echo=str)
    rows = _rows(out / "results.csv")
    assert rows[1]["status"] == "error" and "cannot be read" in rows[1]["reason"]


def test_names_that_are_not_utf8_and_outputs_inside_the_study(study, tmp_path: Path) -> None:
    _, expected = study
    good = sorted(p for p in expected if "/good/" in p)[:1]
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copyfile(good[0], tree / "plain.dcm")
    latin = os.fsdecode(os.fsencode(tree) + b"/h\xfcfte.dcm")  # an old archive's Latin-1 name
    shutil.copyfile(good[0], latin)
    out = tree / "results"  # this run's output, inside the study
    for _ in range(2):
        screen_study(tree, out, workers=1, overlays="all", progress=False, echo=str)
    rows = _rows(out / "results.csv")
    assert [r["image"] for r in rows] == [f"{tree}/h\\xfcfte.dcm", f"{tree}/plain.dcm"]
    # the file under the Latin-1 name was read: its copy gives exactly its numbers
    assert rows[1]["duplicate_of"] == rows[0]["image"] and rows[0]["status"] in expected[good[0]]
    assert rows[0]["volume_ml__gluteus_medius_left"] == rows[1]["volume_ml__gluteus_medius_left"] != ""
    assert len((out / "journal.jsonl").read_text(encoding="utf-8").splitlines()) == 2  # none redone
    assert "h\\xfcfte.dcm" in (out / "report.html").read_text(encoding="utf-8")
    # predict finds the same two, not the pictures of its own first run nor the screen's, and
    # says that it left the screen's folder out (its overlays were once read as radiographs)
    assert list(out.rglob("*.png"))
    for _ in range(2):
        result = runner.invoke(app, ["predict", str(tree), "--out", str(tree / "predicted")])
        assert result.exit_code == 0, result.output
        assert f"left out {out}: written by an earlier run" in result.output
        assert "left out" not in result.output.replace(f"left out {out}", "")
    predicted = [r["image"] for r in _rows(tree / "predicted" / "predictions.csv")]
    assert predicted == [r["image"] for r in rows]
    # a folder that merely holds pictures, written by nothing of ours, is searched
    shutil.copytree(out / "overlays", tree / "pictures")
    assert len(find_inputs(tree, skip=tree / "predicted")) == 2 + len(list(out.glob("overlays/*.png")))
    with pytest.raises(InputError, match="a folder of its own"):
        screen_study(tree, tree, progress=False, echo=str)
    refused = runner.invoke(app, ["predict", str(tree), "--out", str(tree)])
    assert refused.exit_code == 2 and "--out must be a folder of its own" in refused.output
    assert not (tree / ".xraymuscle.lock").exists()  # the refused runs left nothing behind


def test_pipes_and_devices_in_a_study_are_error_rows_not_a_hang(study, tmp_path: Path) -> None:
    """A named pipe blocks whoever opens it and ``/dev/zero`` never ends: listing, hashing and
    reading must not open them. Each is an ``error`` row and the run goes on (it hung before)."""
    _, expected = study
    good = sorted(p for p in expected if "/good/" in p)[0]
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copyfile(good, tree / "plain.dcm")
    os.mkfifo(tree / "pipe.dcm")
    os.mkfifo(tree / "pipe")  # no suffix: looked into for a DICOM preamble
    (tree / "zero.dcm").symlink_to("/dev/zero")
    out = tmp_path / "out"

    class Hung(BaseException):  # not an OSError or an Exception, which the run would catch
        pass

    def hung(*_: object) -> None:
        raise Hung("the run hung on a pipe or a device")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        screen_study(tree, out, workers=1, progress=False, echo=str)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    rows = {Path(r["image"]).name: r for r in _rows(out / "results.csv")}
    assert sorted(rows) == ["pipe.dcm", "plain.dcm", "zero.dcm"]
    assert rows["plain.dcm"]["status"] in expected[good]
    for name in ("pipe.dcm", "zero.dcm"):
        assert rows[name]["status"] == "error" and "not a regular file" in rows[name]["reason"], rows[name]


def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_goes_on(
    study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, expected = study
    tree = tmp_path / "tree"
    tree.mkdir()
    for path in sorted(p for p in expected if "/good/" in p)[:3]:
        shutil.copyfile(path, tree / Path(path).name)
    out = tmp_path / "out"
    args = ["screen", str(tree), "--out", str(out), "--batch", "1", "--workers", "0", "--overlays", "none"]
    append, calls = Journal.append, []

    def filling(self: Journal, rows: object) -> None:  # the disk fills up at the second batch
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "append", filling)
    full = runner.invoke(app, args)
    assert full.exit_code == 2
    assert full.output.strip().splitlines()[-1].startswith("error: no space left on the device;")
    monkeypatch.setattr(Journal, "append", append)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "2 screened by this run" in again.output
    assert sorted(r["image"] for r in _rows(out / "results.csv")) == sorted(str(p) for p in tree.iterdir())


def test_kill_and_resume_every_input_exactly_once(study, screened, tmp_path: Path) -> None:
    folder, expected = study
    _, reference = screened
    out = tmp_path / "out"
    command = [
        sys.executable, "-c", "from cli import app; app()", "screen", str(folder), "--out", str(out),
        "--batch", "2", "--workers", "0", "--no-report", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines_at_kill = journal.read_bytes().count(b"\n")
    assert 4 <= lines_at_kill < len(expected), "the run must be killed midway"
    with journal.open("ab") as fh:  # as if killed in the middle of a write
        fh.write(b'{"image": "/half')
    # the child's output is UTF-8 (progress bars) whatever this shell's locale says
    result = subprocess.run(command, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr
    rows = _rows(out / "results.csv")
    assert len(rows) == len(expected) == len({r["image"] for r in rows})
    lines = journal.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(expected)  # nothing done twice, the torn line dropped
    assert f"{len(expected) - lines_at_kill} screened by this run" in result.stdout
    keys = ("image", "status", "volume_ml__gluteus_maximus_left", "volume_sd_ml__iliopsoas_right")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in reference]


def test_retry_errors_screens_again_what_could_not_be_read(study, tmp_path: Path) -> None:
    """A file missing at the first run is an ``error`` row; once it is there, a plain rerun keeps
    the row (the journal holds it), ``--retry-errors`` reads it and replaces the row, the others
    untouched."""
    _, expected = study
    good = sorted(name for name in expected if "/good/" in name)[:2]
    late = tmp_path / "late.dcm"
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "\n".join([*good, str(late)]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    options = {"workers": 0, "report": False, "progress": False, "echo": str}
    screen_study(listing, out, **options)  # type: ignore[arg-type]
    before = {r["image"]: r for r in _rows(out / "results.csv")}
    assert before[str(late)]["status"] == "error" and "no such file" in before[str(late)]["reason"]
    shutil.copyfile(good[0], late)
    assert screen_study(listing, out, **options).processed == 0  # type: ignore[arg-type]
    result = runner.invoke(app, ["screen", str(listing), "--out", str(out), "--retry-errors", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "screening again 1 file(s) recorded as error" in result.output
    after = {r["image"]: r for r in _rows(out / "results.csv")}
    assert after[str(late)]["status"] != "error"
    assert (
        after[str(late)]["volume_ml__gluteus_maximus_left"]
        == before[good[0]]["volume_ml__gluteus_maximus_left"]
    )
    # (a copy of good[0] now, it names it or is named by it as a duplicate)
    assert all({**after[n], "duplicate_of": ""} == {**before[n], "duplicate_of": ""} for n in good)


def test_torn_journal_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path, "image")
    journal.append([{"image": "a", "v": 1}, {"image": "b", "v": 2}])
    with path.open("ab") as fh:
        fh.write(b'{"image": "c", "v"')
    again = Journal(path, "image")
    assert set(again.rows) == {"a", "b"}
    again.append([{"image": "c", "v": 3}, {"image": "a", "v": 4}])
    last = Journal(path, "image")
    assert last.rows["a"]["v"] == 4 and last.rows["c"]["v"] == 3 and len(last) == 3


def test_bad_command_lines(study, screened, tmp_path: Path) -> None:
    folder, _ = study
    out, _ = screened
    result = runner.invoke(app, ["screen", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["screen", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no radiographs found" in result.output
    result = runner.invoke(app, ["screen", str(folder), "--out", str(out), "--mc-samples", "3"])
    assert result.exit_code == 2 and "other mc_samples" in result.output
    result = runner.invoke(app, ["screen", str(folder), "--out", str(out), "--magnification", "1.3"])
    assert result.exit_code == 2 and "other magnification" in result.output
    result = runner.invoke(
        app, ["screen", str(folder), "--out", str(tmp_path / "o"), "--magnification", "nan"]
    )
    assert result.exit_code == 2 and "--magnification must be between 1 and 3, not nan" in result.output
    result = runner.invoke(app, ["screen", str(folder), "--out", str(out), "--marker-mm", "25"])
    assert result.exit_code == 2 and "other marker_mm" in result.output
    result = runner.invoke(app, ["screen", str(folder), "--out", str(out), "--hip-height-mm", "190"])
    assert result.exit_code == 2 and "other hip_height_mm" in result.output
    result = runner.invoke(app, ["screen", str(folder), "--out", str(out), "--spacing-sd-percent", "3"])
    assert result.exit_code == 2 and "other spacing_sd_percent" in result.output
    for value in ("0", "-2", "25", "nan"):
        result = runner.invoke(
            app, ["screen", str(folder), "--out", str(tmp_path / "o"), "--spacing-sd-percent", value]
        )
        assert (
            result.exit_code == 2
            and "--spacing-sd-percent must be more than 0 and at most 20" in result.output
        )
    for marker, problem in (("3", "--marker-mm must be between 5 and 100 mm, not 3.0"), ("inf", "not inf")):
        result = runner.invoke(
            app, ["screen", str(folder), "--out", str(tmp_path / "o"), "--marker-mm", marker]
        )
        assert result.exit_code == 2 and problem in result.output
    both = ["--marker-mm", "25", "--magnification", "1.2"]
    result = runner.invoke(app, ["screen", str(folder), "--out", str(tmp_path / "o"), *both])
    assert result.exit_code == 2 and "leave out --pixel-spacing and --magnification" in result.output
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["screen", str(folder), "--out", str(tmp_path / "o"), "--overlays", "some"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["screen", str(folder), "--out", str(tmp_path / "o"), "--workers", "-1"])
    assert result.exit_code == 2 and "--workers must be 0 (decode here) or more, not -1" in result.output
    assert not (tmp_path / "o").exists()
    (empty / "notes.txt").write_text("mine")  # a folder of something else: not written into
    result = runner.invoke(app, ["screen", str(folder), "--out", str(empty)])
    assert result.exit_code == 2 and "not empty and holds no screening run" in result.output
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]


def test_the_report_counts_how_the_files_were_read() -> None:
    from xraymuscle.report import _qc_section

    mirrored = "mirrored left-right to the reading orientation (PatientOrientation R\\F)"
    rows = [
        {
            "status": "ok",
            "notes": f"{mirrored}; detector spacing divided by the training magnification 1.167",
        },
        {"status": "ok", "notes": "detector spacing divided by the training magnification 1.167"},
        {
            "status": "rejected",
            "reason": "x",
            "notes": "12% of the pixels lie behind the display shutter, set to air",
        },
        {"status": "ok", "notes": ""},
    ]
    section = _qc_section(rows)
    assert "How the files were read" in section
    assert "divided by the training magnification #</td><td>2<" in section  # numbers folded, counted
    assert f"{mirrored}</td><td>1<" in section
    assert "#% of the pixels lie behind the display shutter, set to air</td><td>1<" in section
    assert "How the files were read" not in _qc_section([{"status": "ok", "notes": ""}])


def test_the_report_shows_the_spacing_each_source_gave() -> None:
    from xraymuscle.report import _qc_section

    rows = [
        *(
            {"status": "ok", "pixel_spacing_mm": v, "spacing_source": "marker:25mm"}
            for v in (0.14, 0.15, 0.13)
        ),
        {"status": "ok", "pixel_spacing_mm": 0.2, "spacing_source": "dicom:ImagerPixelSpacing"},
        {"status": "error", "pixel_spacing_mm": None, "spacing_source": ""},
    ]
    section = _qc_section(rows)
    assert "<td>marker:25mm</td><td>3</td><td>0.1400</td><td>0.1300 – 0.1500</td>" in section
    assert "<td>dicom:ImagerPixelSpacing</td><td>1</td><td>0.2000</td>" in section
    assert section.index("marker:25mm") < section.index("dicom:ImagerPixelSpacing")  # most first
    assert "by where it came from" not in _qc_section([rows[-1]])
    assert "sds take the pixel spacing as exact" in section
    widened = _qc_section([{**r, "spacing_sd_percent": 4.0} for r in rows])
    assert "sds include a pixel spacing sd of 4 %" in widened
    # a study list's per-file sds: which, for how many, and how many measured radiographs have none
    measured = [{**r, "ood_score": 1.0} for r in rows[:4]]
    listed = [{**r, "spacing_sd_percent": sd} for r, sd in zip(measured, (4.0, 4.0, 2.5, ""), strict=True)]
    line = _qc_section(listed)
    assert "sds of 3 radiographs include a pixel spacing sd (2.5 %: 1, 4 %: 2;" in line
    assert "those of the other 1 take the spacing as exact" in line


def test_the_report_says_how_precisely_each_muscle_is_measured() -> None:
    """Per muscle: the median sd, the median sd over the volume, and the reliability
    ``1 − mean(sd²) / variance`` of the volumes between radiographs (by hand: volumes 100, 200
    and 300 ml have a variance of 10 000 ml²; sds of 10 ml leave 0.99 of it, sds of 100 ml none)."""
    import matplotlib

    from xraymuscle.report import _distribution_section

    matplotlib.use("Agg")
    rows = [
        {"volume_ml__a": v, "volume_sd_ml__a": 10.0, "volume_ml__b": v, "volume_sd_ml__b": 100.0}
        for v in (100.0, 200.0, 300.0)
    ]
    section = _distribution_section(rows, ["a", "b"])
    assert (
        "<td>a</td><td>3</td><td>200</td><td>150–250</td><td>10.0</td><td>5.0 %</td><td>0.99</td>" in section
    )
    assert (
        "<td>b</td><td>3</td><td>200</td><td>150–250</td><td>100.0</td><td>50.0 %</td><td>0.00</td>"
        in section
    )
    grouped = [
        {**r, "group_volume_ml__ab": 2 * r["volume_ml__a"], "group_volume_sd_ml__ab": 15.0} for r in rows
    ]
    with_group = _distribution_section(grouped, ["a", "b"])
    assert (
        "<td>ab (group)</td><td>3</td><td>400</td><td>300–500</td><td>15.0</td><td>3.8 %</td><td>0.99</td>"
        in with_group
    )
    two = _distribution_section(rows[:2], ["a"])
    assert "<td>10.0</td><td>7.5 %</td><td></td>" in two  # too few radiographs for a variance


def test_report_renders_every_figure(screened, tmp_path: Path) -> None:
    out, rows = screened
    html = (out / "report.html").read_text(encoding="utf-8")
    n_img = html.count("<img ")
    flagged = sum(1 for r in rows if r["status"] != "ok" and r["overlay"])
    assert n_img == 4 + flagged  # distributions, asymmetry, by sex, by age band, and the gallery
    assert 'src="http' not in html and "src='http" not in html  # self-contained
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", str(out / "report.html")],
        capture_output=True, encoding="utf-8", errors="replace", timeout=120,
    ).stdout  # fmt: skip
    assert f'data-figures-loaded="{n_img}/{n_img}"' in dom


def test_ray_gives_the_same_table_and_resumes(study, screened, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an extra: pip install '.[ray]'")
    folder, expected = study
    _, reference = screened
    out = tmp_path / "ray"
    # half the study is already done, as after a stopped run
    first = sorted(expected)[: len(expected) // 2]
    subset = tmp_path / "half.csv"
    subset.write_text("path\n" + "\n".join(first) + "\n", encoding="utf-8")
    screen_study(subset, out, workers=0, report=False, progress=False, echo=str)
    summary = screen_study(folder, out, ray=True, batch=4, report=False, progress=False, echo=str)
    assert summary.processed == len(expected) - len(first)
    rows = _rows(out / "results.csv")
    keys = ("image", "status", "reason")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in reference]
    # the same numbers up to the last printed digit: batches of other sizes may sum in another order
    volume = "volume_ml__gluteus_medius_right"
    for got, want in zip(rows, reference, strict=True):
        assert (got[volume] == want[volume] == "") or float(got[volume]) == pytest.approx(
            float(want[volume]), abs=2e-3
        )
    assert len({r["patient_pseudonym"] for r in rows if r["patient_pseudonym"]}) == 6  # one salt


def test_a_spacing_sd_is_added_alike_by_screen_ray_and_predict(study, tmp_path: Path) -> None:
    """``--spacing-sd-percent``: the probes are made in the decoding workers (and travel to Ray's
    model actors), and give each volume the sd ``predict`` gives it; a rerun into the same
    folder with another value is refused."""
    pytest.importorskip("ray", reason="Ray is an extra: pip install '.[ray]'")
    folder, expected = study
    good = sorted(name for name in expected if "/good/" in name)[:3]
    subset = tmp_path / "three.csv"
    subset.write_text("path\n" + "\n".join(good) + "\n", encoding="utf-8")
    options = {"spacing_sd_percent": 4.0, "report": False, "progress": False, "echo": str}
    screen_study(subset, tmp_path / "local", workers=1, batch=2, **options)  # type: ignore[arg-type]
    screen_study(subset, tmp_path / "ray", ray=True, batch=2, **options)  # type: ignore[arg-type]
    result = runner.invoke(
        app, ["predict", *good, "--out", str(tmp_path / "predict"), "--spacing-sd-percent", "4"]
    )
    assert result.exit_code == 0, result.output
    plain = runner.invoke(app, ["predict", *good, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    tables = [_rows(tmp_path / name / "results.csv") for name in ("local", "ray")]
    predicted, unwidened = (_rows(tmp_path / name / "predictions.csv") for name in ("predict", "plain"))
    sds = [c for c in predicted[0] if c.startswith("volume_sd_ml__")]
    for rows in tables:
        assert [r["image"] for r in rows] == [r["image"] for r in predicted]
        for got, want, narrower in zip(rows, predicted, unwidened, strict=True):
            assert got["spacing_sd_percent"] == "4.000" and got["status"] == want["status"]
            for column in sds:
                assert float(got[column]) == pytest.approx(float(want[column]), abs=2e-3), column
                assert float(got[column]) > float(narrower[column])
    again = runner.invoke(app, ["screen", str(subset), "--out", str(tmp_path / "local")])
    assert again.exit_code == 2 and "other spacing_sd_percent" in again.output


@pytest.fixture(scope="module")
def listed_study(study, screened, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A study list as a spreadsheet in a decimal-comma language exports it (semicolons, a
    byte-order mark, a decimal comma): per-file spacings and spacing sds, and cells that are wrong."""
    folder, expected = study
    _, reference = screened
    good = sorted(name for name in expected if "/good/" in name)[:3]
    film = next(name for name in expected if name.endswith("film16.png"))  # a PNG without spacing
    photo = next(name for name in expected if name.endswith("photo.png"))
    spacing = float(next(r for r in reference if r["image"] == good[0])["pixel_spacing_mm"])
    root = tmp_path_factory.mktemp("listed")
    lines = [
        "Path;Pixel_Spacing_mm;spacing_sd_percent",
        f"{good[0]};;4",
        f"{good[1]};;",
        f"{film};{f'{spacing:.3f}'.replace('.', ',')};",
        f"{photo};abc;",  # line 5
        f"{good[2]};;3",
        f"{good[2]};;5",  # line 7: the same file with another sd
    ]
    listing = root / "list.csv"
    listing.write_text("\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    references = {}
    for name, args in (
        ("widened", [good[0], "--spacing-sd-percent", "4"]),
        ("plain", [good[1]]),
        ("film", [film, "--pixel-spacing", f"{spacing:.3f}"]),
    ):
        result = runner.invoke(app, ["predict", *args, "--out", str(root / name)])
        assert result.exit_code == 0, result.output
        references[f"{name}_row"] = _rows(root / name / "predictions.csv")[0]
    return {"list": listing, "good": good, "film": film, "photo": photo, "spacing": spacing, **references}


def _check_listed(rows: list[dict[str, str]], listed: dict[str, Any]) -> None:
    by_image = {r["image"]: r for r in rows}
    good, film = listed["good"], listed["film"]
    sds = [c for c in rows[0] if c.startswith(("volume_sd_ml__", "group_volume_sd_ml__"))]
    # the listed sd for the first file, none for the second: each as predict gives it
    for name, key, percent in ((good[0], "widened_row", "4.000"), (good[1], "plain_row", "")):
        got, want = by_image[name], listed[key]
        assert got["spacing_sd_percent"] == percent and got["status"] == want["status"]
        for column in sds:
            assert float(got[column]) == pytest.approx(float(want[column]), abs=2e-3), (name, column)
    # a PNG without spacing is measured at the listed one, as with --pixel-spacing
    got, want = by_image[film], listed["film_row"]
    assert got["status"] == want["status"] and got["spacing_source"] == "study list"
    assert float(got["pixel_spacing_mm"]) == pytest.approx(listed["spacing"], abs=1e-3)
    for column in (c for c in rows[0] if c.startswith("volume_ml__")):
        assert float(got[column]) == pytest.approx(float(want[column]), abs=2e-3), column
    photo, twice = by_image[listed["photo"]], by_image[good[2]]
    assert photo["status"] == "error" and photo["reason"] == (
        "list.csv line 5: pixel_spacing_mm 'abc' is not a number more than 0 (mm)"
    )
    assert twice["status"] == "error" and "lines 6 and 7" in twice["reason"]


def test_a_study_list_gives_each_file_its_spacing_and_sd(listed_study, tmp_path: Path) -> None:
    """A list's ``pixel_spacing_mm`` and ``spacing_sd_percent`` columns: each file measured as
    ``predict`` measures it with those options; a bad cell costs its file's row; a rerun with
    other values for some files screens those again; ``--marker-mm`` beside listed spacings is
    refused (by ``predict`` too)."""
    out = tmp_path / "out"
    screen_study(listed_study["list"], out, workers=1, batch=2, report=False, progress=False, echo=str)
    rows = _rows(out / "results.csv")
    assert len(rows) == 5
    _check_listed(rows, listed_study)
    # resumed with the same list and one more file: only that one is screened
    listing = listed_study["list"]
    longer = tmp_path / "longer.csv"
    extra = listed_study["good"][0].replace("xr_00000", "xr_00003")
    assert Path(extra).is_file()
    longer.write_text(listing.read_text(encoding="utf-8-sig") + f"{extra};;\r\n", encoding="utf-8")
    summary = screen_study(longer, out, workers=0, report=False, progress=False, echo=str)
    assert summary.processed == 1 and len(_rows(out / "results.csv")) == 6
    # a file already screened given another sd: that one is screened again, its row replaced
    before = {r["image"]: r for r in _rows(out / "results.csv")}
    changed = tmp_path / "changed.csv"
    changed.write_text(longer.read_text(encoding="utf-8").replace(";;4", ";;2"), encoding="utf-8")
    said: list[str] = []
    summary = screen_study(changed, out, workers=0, report=False, progress=False, echo=said.append)
    assert summary.processed == 1 and "screening again 1 file(s)" in said[0]
    after = {r["image"]: r for r in _rows(out / "results.csv")}
    assert list(after) == list(before)
    first = listed_study["good"][0]
    assert after[first]["spacing_sd_percent"] == "2.000"
    column = "volume_sd_ml__gluteus_maximus_left"
    assert float(after[first][column]) < float(before[first][column])  # half the spacing sd
    assert all(after[name] == row for name, row in before.items() if name != first)
    for command in ("screen", "predict"):
        marker = runner.invoke(
            app, [command, str(listing), "--out", str(tmp_path / "m"), "--marker-mm", "25"]
        )
        assert marker.exit_code == 2 and "--marker-mm would overrule" in marker.output
        assert not (tmp_path / "m").exists()


def test_predict_reads_a_study_list_as_screen_does(listed_study, tmp_path: Path) -> None:
    """``predict list.csv``: the listed files, each with its listed spacing and spacing sd."""
    result = runner.invoke(app, ["predict", str(listed_study["list"]), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "p" / "predictions.csv")
    assert len(rows) == 5
    _check_listed(rows, listed_study)


def test_a_study_lists_values_travel_to_ray(listed_study, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an extra: pip install '.[ray]'")
    out = tmp_path / "ray"
    screen_study(listed_study["list"], out, ray=True, batch=2, report=False, progress=False, echo=str)
    _check_listed(_rows(out / "results.csv"), listed_study)


def test_compare_reads_a_screens_results(screened, tmp_path: Path) -> None:
    """``compare`` takes a ``screen`` table as it takes ``predict``'s: the measured rows of the
    study against a reference that names them by file name."""
    out, rows = screened
    measured = [r for r in rows if r["status"] in ("ok", "uncertain") and r["volume_ml__iliopsoas_left"]]
    assert measured
    reference = tmp_path / "reference.csv"
    lines = ["image,case_id,volume_ml__iliopsoas_left,volume_ml__iliopsoas_right"]
    lines += [f"{Path(r['image']).name},{r['patient_pseudonym']},150,155" for r in measured]
    reference.write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app, ["compare", str(out / "results.csv"), "--truth", str(reference), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["muscles"]["iliopsoas_left"]["n"] == len(measured)
    volumes = np.array([float(r["volume_ml__iliopsoas_left"]) for r in measured])
    assert metrics["muscles"]["iliopsoas_left"]["bias_ml"] == pytest.approx(np.mean(volumes - 150), rel=1e-3)
    assert metrics["intervals"]["cases"] == len({r["patient_pseudonym"] for r in measured})


def test_generate_drr_on_ray_matches_local(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an extra: pip install '.[ray]'")
    from xraymuscle.phantom.cohort import make_cohort

    cohort = make_cohort(2, tmp_path / "c", seed=8, spacing=8.0, progress=False)
    outs = {}
    for name, extra in (("local", []), ("ray", ["--ray"])):
        outs[name] = tmp_path / name
        args = ["generate-drr", "--cohort", str(cohort), "--out", str(outs[name]), "--views", "2"]
        result = runner.invoke(app, [*args, "--geometry", "hip_ap_fast", *extra])
        assert result.exit_code == 0, result.output
    local, ray = (_rows(outs[n] / "manifest.csv") for n in ("local", "ray"))
    assert [r["sample_id"] for r in local] == [r["sample_id"] for r in ray] and len(local) == 4
    for a, b in zip(local, ray, strict=True):
        np.testing.assert_allclose(
            np.load(outs["local"] / a["file"])["maps"], np.load(outs["ray"] / b["file"])["maps"], rtol=1e-5
        )


class _Crashing(StudyInput):
    """An input whose decoding kills the worker process (as a decoder's segmentation fault would)."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os._exit, (3,))


def test_a_crashing_decoder_costs_one_row(study) -> None:
    from xraymuscle.decoding import DecodeSettings, decoded_stream
    from xraymuscle.model import load_model
    from xraymuscle.paths import default_model_dir
    from xraymuscle.prepare import GridTarget

    folder, expected = study
    good = sorted(p for p in expected if "/good/" in p)[:3]
    items = [StudyInput(0, good[0]), _Crashing(1, good[1]), StudyInput(2, good[2])]
    settings = DecodeSettings(GridTarget.of(load_model(default_model_dir())), None, "salt", False)
    decoded = list(decoded_stream(items, settings, workers=1))
    assert [d.index for d in decoded] == [0, 1, 2]
    assert decoded[1].prepared.status == "error" and "crashed the decoder" in decoded[1].prepared.reason
    assert decoded[0].prepared.image is not None and decoded[2].prepared.image is not None
