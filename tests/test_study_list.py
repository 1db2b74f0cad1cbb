"""A study list's per-file values: read, bounded, refused per file, and kept apart from options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from xraymuscle.errors import InputError
from xraymuscle.study import find_inputs
from xraymuscle.study_list import Listed, check_listed


def test_each_files_values_are_read_or_refused_for_that_file(tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    lines = [
        "file,spacing_sd_percent,PIXEL_SPACING_MM,Hip_Height_mm",
        "a.dcm,2.5,0.143,",
        "b.dcm,,,",
        "a.dcm,2.5,0.143,",  # listed twice alike: one input
        "c.dcm,25,,",  # over the most a spacing sd may be
        "d.dcm,,-0.1,",
        "e.dcm,nan,,",
        "f.dcm,,1e999,",
        "g.dcm,3,,180",
        "h.dcm,,,20",  # no hip lies 20 mm above the detector
        "i.dcm,,0.14,180",  # a spacing at the hip needs no hip height
        "b.dcm,,0.15,",  # b again, with a spacing
    ]
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = {Path(i.path).name: i for i in find_inputs(listing)}
    assert sorted(found) == [f"{c}.dcm" for c in "abcdefghi"]
    assert found["a.dcm"].listed == Listed(0.143, 2.5) and not found["a.dcm"].problem
    assert found["g.dcm"].listed == Listed(None, 3.0, 180.0) and not found["g.dcm"].problem
    assert found["c.dcm"].problem == (
        "list.csv line 5: spacing_sd_percent '25' is not a number more than 0 and at most 20 (%)"
    )
    assert found["d.dcm"].problem.startswith("list.csv line 6: pixel_spacing_mm '-0.1' is not a number")
    assert "line 7" in found["e.dcm"].problem and "line 8" in found["f.dcm"].problem
    assert found["h.dcm"].problem == (
        "list.csv line 10: hip_height_mm '20' is not a number at least 50 and at most 400 (mm)"
    )
    assert found["i.dcm"].problem == (
        "list.csv line 11: gives pixel_spacing_mm and hip_height_mm, which each set the spacing; "
        "leave all but one empty"
    )
    assert found["b.dcm"].problem == "list.csv lines 3 and 12 give it different values"
    # a calibration ball's size, for the films that show one
    listing.write_text("path,marker_mm,hip_height_mm\nj.dcm,25,\nk.dcm,2,\nl.dcm,25,180\n", encoding="utf-8")
    found = {Path(i.path).name: i for i in find_inputs(listing)}
    assert found["j.dcm"].listed == Listed(marker_mm=25.0) and not found["j.dcm"].problem
    assert "marker_mm '2' is not a number at least 5 and at most 100 (mm)" in found["k.dcm"].problem
    assert "gives hip_height_mm and marker_mm, which each set the spacing" in found["l.dcm"].problem
    # without the columns, or as a bare list, nothing is listed
    for text in ("path\na.dcm\nb.dcm\n", "a.dcm\nb.dcm\n"):
        listing.write_text(text, encoding="utf-8")
        assert [i.listed for i in find_inputs(listing)] == [Listed(), Listed()]


def test_a_decimal_comma_and_the_journals_form() -> None:
    from xraymuscle.study_list import _number

    assert _number(["0,143"], 0, "pixel_spacing_mm", 0.0, 10.0, "mm") == (0.143, "")
    assert _number(["1,234,5"], 0, "pixel_spacing_mm", 0.0, 10.0, "mm")[0] is None
    values = Listed(0.2, None, None)
    assert Listed.from_list(values.as_list()) == values
    assert Listed.from_list(None) == Listed() and Listed.from_list([0.2]) == values  # an older journal


def test_options_that_would_overrule_the_list_are_refused() -> None:
    spacing, height = [Listed(pixel_spacing=0.14)], [Listed(hip_height_mm=180.0)]
    check_listed(spacing, marker_mm=None, magnification=1.2)  # a spacing at the hip is not magnified
    check_listed([Listed()], marker_mm=25.0, magnification=None)
    with pytest.raises(InputError, match="gives pixel_spacing_mm, which --marker-mm would overrule"):
        check_listed(spacing, marker_mm=25.0, magnification=None)
    with pytest.raises(InputError, match="gives hip_height_mm, which --marker-mm"):
        check_listed(height, marker_mm=25.0, magnification=None)
    with pytest.raises(InputError, match="gives hip_height_mm, which --magnification would overrule"):
        check_listed(height, marker_mm=None, magnification=1.2)


def test_inspect_says_what_a_list_holds(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"x")
    listing = tmp_path / "study.csv"
    lines = ["path;pixel_spacing_mm;hip_height_mm", "a.dcm;0,15;", "b.dcm;;180", "c.dcm;x;", "d.dcm;0,2;"]
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["inspect", str(listing)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["kind"] == "study_list" and info["files"] == 4 and info["missing"] == 3
    assert info["values"]["pixel_spacing_mm"] == {"files": 2, "range": [0.15, 0.2]}
    assert info["values"]["hip_height_mm"] == {"files": 1, "range": [180.0, 180.0]}
    assert info["values"]["spacing_sd_percent"] == {"files": 0, "range": None}
    assert info["values"]["marker_mm"] == {"files": 0, "range": None}
    assert list(info["problems"].values()) == [
        "study.csv line 4: pixel_spacing_mm 'x' is not a number more than 0 (mm)"
    ]
    listing.write_text("name,age\nx,1\n", encoding="utf-8")
    refused = CliRunner().invoke(app, ["inspect", str(listing)])
    assert refused.exit_code == 2 and "no column named one of path, image, file" in refused.output


def test_the_spacing_probes_are_made_only_where_a_spacing_sd_needs_them(tmp_path: Path) -> None:
    import numpy as np

    from xraymuscle.decoding import prepare_input
    from xraymuscle.dicom_writer import write_dx
    from xraymuscle.prepare import GridTarget
    from xraymuscle.study import StudyInput

    yy, xx = np.mgrid[0:200, 0:200] / 200.0
    film = write_dx(
        tmp_path / "film.dcm",
        0.3 + 0.4 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.05),
        pixel_spacing_mm=1.5,
    )
    target = GridTarget(size=64, spacing_mm=5.0, magnification=1.0, spacing_probes=True)
    plain, _ = prepare_input(StudyInput(0, str(film)), target)
    listed, _ = prepare_input(StudyInput(1, str(film), listed=Listed(spacing_sd_percent=3.0)), target)
    run_wide, _ = prepare_input(StudyInput(2, str(film)), target, spacing_sd_percent=5.0)
    assert plain.probes is None and plain.spacing_sd_percent is None
    assert (
        listed.probes is not None and listed.probes.shape == (2, 64, 64) and listed.spacing_sd_percent == 3.0
    )
    assert run_wide.probes is not None and run_wide.spacing_sd_percent == 5.0
    np.testing.assert_array_equal(listed.image, plain.image)
