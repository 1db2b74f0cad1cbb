"""``xraymuscle generate-drr``: the dataset contract, resuming (also after kill -9), and bad input."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from drr.poses import Pose
from drr.presets import load_preset
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.drr_dataset import DiskFullError, DrrDataset, read_sample
from xraymuscle.errors import InputError
from xraymuscle.generate import GenerateOptions, generate_drr, read_cohort
from xraymuscle.paths import config_file
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.volume import Volume, read_ct, read_labels

runner = CliRunner()
FAST = ["--geometry", "hip_ap_fast"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(2, tmp_path_factory.mktemp("cohort"), seed=1, spacing=5.0, progress=False)


def generate(*args: str) -> object:
    return runner.invoke(app, ["generate-drr", *args])


def test_dataset_follows_the_contract(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "drr"
    result = generate("--cohort", str(cohort), "--out", str(out), "--views", "2", "--preview", *FAST)
    assert result.exit_code == 0, result.output
    assert "4 views rendered" in result.output
    data = DrrDataset.load(out)
    muscles = list(MuscleCatalog.load().muscles)
    assert data.muscles == muscles and len(data) == 4
    assert data.info["geometry"]["rows"] == 128 and data.info["format"] == "xraymuscle-drr"
    assert [c["case_id"] for c in data.info["source_cases"]] == ["phantom_0000", "phantom_0001"]
    preset = load_preset(config_file("geometry", "hip_ap_fast"))
    checked = 0
    for i, row in enumerate(data.rows):
        sample = data.sample(i, keys=("image", "maps", "mass_maps", "materials", "projection"))
        assert sample["image"].shape == (128, 128) and sample["image"].dtype == np.float32
        assert sample["maps"].shape == (len(muscles), 128, 128) and sample["maps"].dtype == np.float32
        assert sample["materials"].shape == (3, 128, 128)
        assert "adipose" not in np.load(out / row["file"]).files  # written with --adipose only
        assert row["pixel_area_mm2"] == pytest.approx(preset.geometry.iso_pixel_area_mm2)
        for k, m in enumerate(muscles):
            if row[f"offdetector__{m}"] == 0.0:
                volume = sample["maps"][k].sum() * row["pixel_area_mm2"] / 1000
                mass = sample["mass_maps"][k].sum() * row["pixel_area_mm2"] / 1000
                assert volume == pytest.approx(row[f"volume_ml__{m}"], rel=5e-3), m
                assert mass == pytest.approx(row[f"mass_g__{m}"], rel=5e-3), m
                checked += 1
        # The stored matrix is reproduced from the geometry, the pose and the isocentre.
        pose = Pose(**{k: row[f"pose_{k}"] for k in ("rx", "ry", "rz", "tx", "ty", "tz")})
        centre = np.array([row["isocentre_x"], row["isocentre_y"], row["isocentre_z"]])
        np.testing.assert_allclose(
            sample["projection"], preset.geometry.projection_matrix(centre, pose.matrix(centre)), rtol=1e-5
        )
        assert (out / "previews" / f"{row['sample_id']}.png").is_file()
    assert checked >= 8
    # Truth volumes equal the cohort's own voxel counts.
    with cohort.open() as fh:
        truth = {r["case_id"]: r for r in csv.DictReader(fh)}
    first = data.rows[0]
    assert first["volume_ml__gluteus_medius_left"] == pytest.approx(
        float(truth[first["case_id"]]["volume_ml__gluteus_medius_left"]), rel=1e-3
    )
    # Different views of one case have different poses.
    assert data.rows[0]["pose_rx"] != data.rows[1]["pose_rx"]


def test_source_cases_record_absolute_paths(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(cohort.parent.parent)  # the cohort given relative to where the run starts
    relative = Path(cohort.parent.name) / cohort.name
    out = tmp_path / "drr"
    result = generate("--cohort", str(relative), "--out", str(out), "--views", "1", *FAST)
    assert result.exit_code == 0, result.output
    for case in DrrDataset.load(out).info["source_cases"]:
        for key in ("ct", "labels"):
            assert Path(case[key]).is_absolute() and Path(case[key]).is_file(), case
            assert Path(case[key]).parent.parent == cohort.parent.resolve()


def test_a_folder_of_masks_renders_as_its_label_map(cohort: Path, tmp_path: Path) -> None:
    """Labels given as one mask per muscle, named after it (a segmentation tool's default output),
    give the samples the label map gives."""
    with cohort.open() as fh:
        case = next(csv.DictReader(fh))
    labels = read_labels(cohort.parent / case["labels"])
    masks = tmp_path / "masks"
    masks.mkdir()
    for muscle, value in MuscleCatalog.load().mask_values("phantom").items():
        mask = Volume(
            (labels.array == value).astype(np.uint8), labels.spacing, labels.origin, labels.direction
        )
        mask.save(masks / f"{muscle}.nii.gz")
    ct = str(cohort.parent / case["ct"])
    common = ["--ct", ct, "--label-source", "phantom", "--views", "1", *FAST]
    for name, given in (("map", cohort.parent / case["labels"]), ("masks", masks)):
        result = generate(*common, "--labels", str(given), "--out", str(tmp_path / f"drr_{name}"))
        assert result.exit_code == 0, result.output
    from_map, from_masks = DrrDataset.load(tmp_path / "drr_map"), DrrDataset.load(tmp_path / "drr_masks")
    np.testing.assert_array_equal(from_masks.sample(0)["maps"], from_map.sample(0)["maps"])
    for column, value in from_map.rows[0].items():
        if column.startswith(("volume_ml__", "mass_g__")):
            assert from_masks.rows[0][column] == value, column


def test_rerun_skips_finished_samples_and_redoes_missing_ones(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "drr"
    assert generate("--cohort", str(cohort), "--out", str(out), "--views", "2", *FAST).exit_code == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    again = generate("--cohort", str(cohort), "--out", str(out), "--views", "2", *FAST)
    assert again.exit_code == 0 and "0 views rendered, 4 already there" in again.output
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    # A finished case is not read again: its CT, now unreadable, is not opened.
    with cohort.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a volume")
    for row in rows:
        row["ct"], row["labels"] = str(cohort.parent / row["ct"]), str(cohort.parent / row["labels"])
    rows[0]["ct"] = str(garbage)
    moved = tmp_path / "moved.csv"
    with moved.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    finished = generate("--cohort", str(moved), "--out", str(out), "--views", "2", *FAST)
    assert finished.exit_code == 0 and "0 views rendered, 4 already there" in finished.output, finished.output
    # Lose one sample and a case record, as a killed run would; leave a temporary file behind.
    (out / "samples" / "phantom_0001_v001.npz").unlink()
    (out / "cases" / "phantom_0001.json").unlink()
    (out / "samples" / ".phantom_0001_v001.npz.abc.tmp.npz").write_bytes(b"half")
    before = read_sample(out / "samples" / "phantom_0001_v000.npz")
    third = generate("--cohort", str(cohort), "--out", str(out), "--views", "2", *FAST)
    assert third.exit_code == 0 and "1 views rendered, 3 already there" in third.output
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted(stamps)
    # The re-rendered case gives the same sample as before (poses come from fixed streams).
    np.testing.assert_array_equal(
        read_sample(out / "samples" / "phantom_0001_v000.npz")["maps"], before["maps"]
    )
    assert len(DrrDataset.load(out)) == 4


def test_workers_give_the_same_samples(cohort: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert generate("--cohort", str(cohort), "--out", str(one), "--views", "2", *FAST).exit_code == 0
    result = generate("--cohort", str(cohort), "--out", str(two), "--views", "2", "--workers", "2", *FAST)
    assert result.exit_code == 0, result.output
    assert "4 views rendered" in result.output
    for path in sorted((one / "samples").iterdir()):
        a, b = read_sample(path), read_sample(two / "samples" / path.name)
        np.testing.assert_array_equal(a["maps"], b["maps"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert (one / "manifest.csv").read_text() == (two / "manifest.csv").read_text()


def test_killed_run_resumes_without_loss_or_duplicates(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "drr"
    cmd = [sys.executable, "-c", "from cli import app; app()", "generate-drr", "--cohort", str(cohort)]
    cmd += ["--out", str(out), "--views", "5", *FAST]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "samples").glob("*.npz"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "samples").glob("*.npz")))
    assert 2 <= done_before < 10
    result = generate("--cohort", str(cohort), "--out", str(out), "--views", "5", *FAST)
    assert result.exit_code == 0, result.output
    data = DrrDataset.load(out)
    ids = [r["sample_id"] for r in data.rows]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted(f"{i}.npz" for i in ids)
    for i in range(len(data)):
        assert np.isfinite(data.sample(i)["maps"]).all()


def test_single_ct_without_muscles_renders_with_a_note(tmp_path: Path, cohort: Path) -> None:
    ct = read_ct(cohort.parent / "phantom_0000" / "ct.nii.gz")
    empty = ct.__class__(np.zeros(ct.shape, np.uint8), ct.spacing, ct.origin, ct.direction)
    empty.save(tmp_path / "empty_labels.nii.gz")
    out = tmp_path / "drr"
    ct_path, labels_path = cohort.parent / "phantom_0000" / "ct.nii.gz", tmp_path / "empty_labels.nii.gz"
    result = generate(
        "--ct",
        str(ct_path),
        "--labels",
        str(labels_path),
        "--label-source",
        "phantom",
        "--out",
        str(out),
        *FAST,
    )
    assert result.exit_code == 0, result.output
    assert "no voxels for" in result.output and "gluteus_maximus_left" in result.output
    data = DrrDataset.load(out)
    assert data.rows[0]["case_id"] == "ct" and np.isnan(data.volumes_ml()).all()
    assert not data.sample(0)["maps"].any()


def test_labels_of_another_numbering_get_a_hint(tmp_path: Path, cohort: Path) -> None:
    """A label map whose values are none of the label source's muscles (another tool's numbering,
    or the wrong --label-source) renders empty; the note says what the map holds instead."""
    case = cohort.parent / "phantom_0000"
    labels = read_labels(case / "labels.nii.gz")
    other = labels.__class__(
        np.where(labels.array > 0, labels.array.astype(np.int32) + 200, 0).astype(np.int32),
        labels.spacing, labels.origin, labels.direction,
    )  # fmt: skip
    other.save(tmp_path / "other.nii.gz")
    result = generate(
        "--ct", str(case / "ct.nii.gz"), "--labels", str(tmp_path / "other.nii.gz"),
        "--label-source", "phantom", "--out", str(tmp_path / "drr"), *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    values = np.unique(other.array[other.array > 0])
    assert f"the label map holds values {values[0]}, {values[1]}," in result.output
    assert "but none of the muscles of label source 'phantom'; is that its label source?" in result.output


def test_labels_that_do_not_lie_on_muscle_get_a_note(tmp_path: Path, cohort: Path) -> None:
    """Labels of another scan, or of this one flipped, lie on fat, air or bone: the mean density
    of a muscle's voxels says so. A CT whose orientation was lost flips CT and labels together:
    they lie on muscle, but the wrong way round along that axis, which the muscles' centres say
    (left twins on the right, the gluteus maximus in front of the iliopsoas, the medius below
    the maximus). Both in generate-drr's notes and in inspect's."""
    case = cohort.parent / "phantom_0000"
    ct, labels = read_ct(case / "ct.nii.gz"), read_labels(case / "labels.nii.gz")
    assert np.allclose(labels.direction, np.eye(3))  # array axes (k, j, i) run along LPS (z, y, x)
    density = "do the labels lie on this CT's muscles"
    axes = {
        "left_to_right": "lie on the patient's right of their right twins",
        "front_to_back": "the gluteus maximus does not lie behind the iliopsoas: front and back",
        "head_to_feet": "the gluteus medius does not lie above the gluteus maximus: head and feet",
    }
    inputs = {"own": (case / "ct.nii.gz", case / "labels.nii.gz")}
    alone = tmp_path / "labels_front_to_back.nii.gz"  # the labels alone flipped front to back
    flipped = np.flip(labels.array, 1).copy()
    labels.__class__(flipped, labels.spacing, labels.origin, labels.direction).save(alone)
    inputs["labels_front_to_back"] = (case / "ct.nii.gz", alone)
    for name, axis in (("left_to_right", 2), ("front_to_back", 1), ("head_to_feet", 0)):  # both
        paths = (tmp_path / f"ct_{name}.nii.gz", tmp_path / f"both_{name}.nii.gz")
        for volume, path in zip((ct, labels), paths, strict=True):
            flipped = np.flip(volume.array, axis).copy()
            volume.__class__(flipped, volume.spacing, volume.origin, volume.direction).save(path)
        inputs[f"both_{name}"] = paths
    notes = {}
    for name, (ct_path, labels_path) in inputs.items():
        shown = runner.invoke(
            app, ["inspect", str(ct_path), "--labels", str(labels_path), "--label-source", "phantom"]
        )
        assert shown.exit_code == 0, shown.output
        notes[name] = json.loads(shown.output)["notes"]
    assert notes["own"] == []
    for name, sign in axes.items():  # the orientation lost: on muscle, each axis named alone
        (line,) = notes[f"both_{name}"]
        assert sign in line, name
    (dense, fb) = notes["labels_front_to_back"]  # the labels alone flipped: off muscle too
    assert (
        dense.startswith("the voxels labelled gluteus_maximus_left 0.") and "muscle reads 0.96-1.15" in dense
    )
    assert axes["front_to_back"] in fb
    lefts = [m for m in MuscleCatalog.load("hip").muscles if m.endswith("_left")]
    assert notes["both_left_to_right"][0].startswith(f"{', '.join(lefts)} {axes['left_to_right']}")
    # generate-drr says the same
    for name in ("own", "both_left_to_right", "labels_front_to_back"):
        ct_path, labels_path = inputs[name]
        result = generate(
            "--ct", str(ct_path), "--labels", str(labels_path), "--label-source", "phantom",
            "--out", str(tmp_path / f"drr_{name}"), *FAST,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        said = [n for n in [density, *axes.values()] if n in result.output.replace("\n", " ")]
        expected = {"own": [], "both_left_to_right": [axes["left_to_right"]]}
        assert said == expected.get(name, [density, axes["front_to_back"]]), name


def test_one_ct_under_two_case_ids_is_refused_once(cohort: Path, tmp_path: Path) -> None:
    """A body listed twice (here once by a relative path, once through a link) would be split
    into training and validation both; the later row is refused and the first kept."""
    plain, _ = read_cohort(cohort)
    first = plain[0]
    (tmp_path / "link").symlink_to(first.ct.parent)
    listing = tmp_path / "cohort.csv"
    listing.write_text(
        "case_id,ct,labels\n"
        f"a,{first.ct},{first.labels}\n"
        f"b,link/{first.ct.name},{first.labels}\n"
        f"c,{plain[1].ct},{plain[1].labels}\n"
    )
    cases, problems = read_cohort(listing)
    assert [c.case_id for c in cases] == ["a", "c"]
    assert problems == [
        f"{listing}: row 3 (case b): the same CT as case a; one body under two case_ids would be "
        "split into training and validation both"
    ]


def test_a_cohort_as_a_spreadsheet_exports_it(cohort: Path, tmp_path: Path) -> None:
    """A byte-order mark and semicolons (where the decimal separator is a comma) are read as the
    plain file is; they once gave "lacks column(s) ['case_id']"."""
    plain, _ = read_cohort(cohort)
    exported = cohort.parent / "exported.csv"  # beside it: the paths are relative to the CSV's folder
    text = cohort.read_text(encoding="utf-8").replace(",", ";")
    exported.write_text("\ufeff" + text.replace("\n", "\r\n"), encoding="utf-8")
    cases, problems = read_cohort(exported)
    assert cases == plain and not problems


def test_cohort_without_columns_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "cohort.csv"
    bad.write_text("case,image\nx,y\n")
    result = generate("--cohort", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    needed = "['case_id', 'ct', 'labels']"
    assert result.output.strip() == f"error: {bad}: cohort CSV lacks column(s) {needed} (needs {needed})"
    with pytest.raises(InputError, match="no such file"):
        read_cohort(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-size", "0"], "--image-size: image size must be 1 to 4096 pixels a side, not 0"),
        (["--image-size", "100000"], "image size must be 1 to 4096 pixels a side, not 100000"),
        (["--pixel-spacing", "-1"], "--pixel-spacing: pixel_spacing must be a positive number"),
        (["--sid", "100"], "--sid: sid 100 mm leaves no room for the patient"),
        (["--sid", "nan"], "--sid: sid must be a finite number of mm, not nan"),
        (["--sid", "170"], "lies inside the volume"),
        (["--backend", "deepdrr"], "deepdrr backend needs"),
        (["--backend", "deepdr"], "did you mean 'deepdrr'"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--views", "0"], "--views must be at least 1"),
        (["--label-source", "nope"], "label source 'nope' is not in catalogue"),
        (["--geometry", "hip_lat"], "unknown geometry preset 'hip_lat'"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(
    cohort: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    if "--device" in extra and "cuda" in extra:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
    ct = cohort.parent / "phantom_0000"
    args = [
        "--ct",
        str(ct / "ct.nii.gz"),
        "--labels",
        str(ct / "labels.nii.gz"),
        "--out",
        str(tmp_path / "o"),
    ]
    if "--label-source" not in extra:
        args += ["--label-source", "phantom"]
    result = generate(*args, *FAST, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("error:") == 1


def test_a_broken_geometry_file_is_named(cohort: Path, tmp_path: Path) -> None:
    broken = tmp_path / "mine.yaml"
    broken.write_text("sid: [1000,\n")
    result = generate("--cohort", str(cohort), "--out", str(tmp_path / "o"), "--geometry", str(broken))
    assert result.exit_code == 2 and f"error: {broken}: not valid YAML at line 2" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_existing_dataset_with_other_settings_is_refused(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "drr"
    assert generate("--cohort", str(cohort), "--out", str(out), *FAST).exit_code == 0
    result = generate("--cohort", str(cohort), "--out", str(out), "--seed", "9", *FAST)
    assert result.exit_code == 2 and "other settings (seed)" in result.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = generate("--cohort", str(cohort), "--out", str(tmp_path / "busy"), *FAST)
    assert result.exit_code == 2 and "not empty" in result.output
    with pytest.raises(InputError, match="not a DRR dataset"):
        DrrDataset.load(tmp_path / "busy")


def test_full_disk_stops_cleanly(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases, _ = read_cohort(cohort)
    preset = load_preset(config_file("geometry", "hip_ap_fast"))
    options = GenerateOptions(MuscleCatalog.load(), "phantom", preset, views=2)

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", no_space)
    out = tmp_path / "drr"
    with pytest.raises(DiskFullError, match="no space left"):
        generate_drr(cases, out, options, progress=False)
    assert list((out / "samples").iterdir()) == []  # nothing half-written
    assert json.loads((out / "dataset.json").read_text())["source_cases"] == []


@pytest.mark.realdata
def test_the_real_ct_renders_with_a_note_on_its_cut_off_sides(real_ct_dir: Path, tmp_path: Path) -> None:
    """The shared CT is narrower than the pelvis it holds: its DRRs lack the tissue beyond the
    field of view, and the run says so; its muscles are measured all the same."""
    args = ["--ct", str(real_ct_dir / "ct.nii.gz"), "--labels", str(real_ct_dir / "labels_total_v2.nii.gz")]
    result = generate(
        *args, "--label-source", "totalsegmentator_v2", "--views", "1", *FAST, "--out", str(tmp_path / "d")
    )
    assert result.exit_code == 0, result.output
    assert "reaches the CT's left or right border on 39% of its slices" in result.output
    # its label source has no thigh muscles: said so, not taken for muscles this CT lacks
    assert "label source 'totalsegmentator_v2' has no ['quadriceps_left'" in result.output
    assert "no voxels for" not in result.output
    # and its scan range cuts the gluteus maximus (below) and the iliopsoas (above): the data's README
    cut = "['gluteus_maximus_left', 'gluteus_maximus_right', 'iliopsoas_left', 'iliopsoas_right'] reach"
    assert cut in result.output
    row = DrrDataset.load(tmp_path / "d").rows[0]
    assert row["volume_ml__gluteus_medius_left"] == pytest.approx(239, abs=1)  # the data's README
    assert "do the labels lie on this CT's muscles" not in result.output  # its labels read as muscle


def test_the_real_labels_flipped_do_not_lie_on_muscle(real_ct_dir: Path, tmp_path: Path) -> None:
    """The shared label map flipped front to back puts the gluteus maximus in the air behind the
    patient, and mirrored it puts every muscle on the other side: inspect says so, and names them."""
    labels = read_labels(real_ct_dir / "labels_total_v2.nii.gz")
    flipped = labels.__class__(labels.array[:, ::-1].copy(), labels.spacing, labels.origin, labels.direction)
    flipped.save(tmp_path / "flipped.nii.gz")
    # and mirrored left to right: the CT's axes run to the patient's right, so the mirror is read
    # through its direction
    assert labels.direction[0, 0] == -1
    mirrored = labels.__class__(
        labels.array[:, :, ::-1].copy(), labels.spacing, labels.origin, labels.direction
    )
    mirrored.save(tmp_path / "mirrored.nii.gz")
    notes = []
    for path in (
        real_ct_dir / "labels_total_v2.nii.gz",
        tmp_path / "flipped.nii.gz",
        tmp_path / "mirrored.nii.gz",
    ):
        shown = runner.invoke(
            app,
            [
                "inspect",
                str(real_ct_dir / "ct.nii.gz"),
                "--labels",
                str(path),
                "--label-source",
                "totalsegmentator_v2",
            ],
        )
        assert shown.exit_code == 0, shown.output
        notes.append(json.loads(shown.output)["notes"])
    assert notes[0] == []
    dense, front_to_back = notes[1]
    assert "gluteus_maximus_left 0.06 g/ml, gluteus_maximus_right 0.11 g/ml" in dense
    assert "the gluteus maximus does not lie behind the iliopsoas" in front_to_back
    (line,) = notes[2]
    assert line.startswith(
        "gluteus_maximus_left, gluteus_medius_left, gluteus_minimus_left, iliopsoas_left lie on"
    )
