"""The phantom cohort: deterministic, anatomically layered, volumes realistic and varying."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from drr.materials import density_from_hu
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.errors import InputError
from xraymuscle.phantom.anatomy import MUSCLE_LABELS, OTHER_LABELS, build_phantom, sample_params
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.volume import read_ct_and_labels

SPACING = 4.0  # coarse: keeps the suite fast; the shapes are the same as at 2 mm


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def case():
    params = sample_params(np.random.default_rng([7, 0]))
    return params, *build_phantom(params, SPACING)


def test_deterministic_for_a_seed() -> None:
    a = build_phantom(sample_params(np.random.default_rng([3, 1])), SPACING)
    b = build_phantom(sample_params(np.random.default_rng([3, 1])), SPACING)
    c = build_phantom(sample_params(np.random.default_rng([4, 1])), SPACING)
    np.testing.assert_array_equal(a[0].array, b[0].array)
    np.testing.assert_array_equal(a[1].array, b[1].array)
    assert a[1].array.shape != c[1].array.shape or not np.array_equal(a[1].array, c[1].array)


def test_every_structure_present(case) -> None:
    _, ct, labels = case
    present = set(np.unique(labels.array).tolist())
    for left, right in MUSCLE_LABELS.values():
        assert left in present and right in present
    for name in (
        "femur_left",
        "femur_right",
        "hip_left",
        "hip_right",
        "sacrum",
        "bowel_gas",
        "subcutaneous_fat",
        "skin",
        "intermuscular_fat",
    ):
        assert OTHER_LABELS[name] in present, name


def test_muscles_never_touch_without_a_fat_plane(case) -> None:
    """Two different muscles are always parted by fat: no voxel faces a voxel of another muscle."""
    params, ct, labels = case
    lab = labels.array
    muscle_values = [v for pair in MUSCLE_LABELS.values() for v in pair] + [OTHER_LABELS["other_muscle"]]
    is_muscle = np.isin(lab, muscle_values)
    # the pose resamples the labels (nearest neighbour), so look along the grid axes of the result
    touching = 0
    for axis in range(3):
        a = np.moveaxis(lab, axis, 0)
        m = np.moveaxis(is_muscle, axis, 0)
        touching += int((m[1:] & m[:-1] & (a[1:] != a[:-1])).sum())
    planes = lab == OTHER_LABELS["intermuscular_fat"]
    assert touching < 0.05 * planes.sum()  # a few corners cut by the posing rotation
    assert float(np.median(ct.array[planes])) < params.muscle_hu - 40


def test_tissue_values_realistic(case) -> None:
    params, ct, labels = case
    hu, lab = ct.array, labels.array
    muscle = np.isin(lab, list(range(1, 15)))
    assert abs(float(np.median(hu[muscle])) - params.muscle_hu) < 15
    assert float(np.median(hu[lab == OTHER_LABELS["subcutaneous_fat"]])) < -60
    assert float(np.median(hu[lab == OTHER_LABELS["bowel_gas"]])) < -700
    femur = lab == OTHER_LABELS["femur_left"]
    assert float(hu[femur].max()) > 900  # cortex
    assert 50 < float(np.median(hu[femur])) < params.cortical_hu  # cancellous interior and marrow
    assert float(hu[lab == 0].mean()) < -900  # air around the body


def test_left_right_and_ap_layout(case) -> None:
    """Left muscles lie at +x (LPS), gluteus maximus posterior to iliopsoas, quadriceps anterior."""
    _, ct, labels = case
    lab = labels.array
    ijk = np.argwhere(lab > 0)  # voxel index (k, j, i)

    def centroid(value: int) -> np.ndarray:
        idx = np.argwhere(lab == value)[:, ::-1].astype(float)
        return (ct.index_to_world @ np.c_[idx, np.ones(len(idx))].T).T[:, :3].mean(0)

    assert len(ijk)
    gmax_l, gmax_r = centroid(1), centroid(2)
    assert gmax_l[0] > 20 and gmax_r[0] < -20
    assert gmax_l[1] > centroid(7)[1] + 30  # posterior to the iliopsoas
    assert centroid(9)[1] < centroid(11)[1] - 30  # quadriceps anterior to the hamstrings
    assert centroid(3)[2] > centroid(9)[2] + 100  # gluteus medius above the thigh


def test_volumes_match_voxels_and_vary(tmp_path: Path) -> None:
    csv_path = make_cohort(3, tmp_path / "c", seed=11, spacing=SPACING, progress=False)
    rows = read_rows(csv_path)
    assert [r["case_id"] for r in rows] == ["phantom_0000", "phantom_0001", "phantom_0002"]
    cat = MuscleCatalog.load()
    for row in rows:
        ct, labels = read_ct_and_labels(csv_path.parent / row["ct"], csv_path.parent / row["labels"])
        assert labels.same_grid(ct)
        for value, muscle in enumerate(cat.muscles, start=1):
            count = int((labels.array == value).sum())
            assert float(row[f"volume_ml__{muscle}"]) == pytest.approx(count * SPACING**3 / 1000, rel=1e-6)
            mass = float(density_from_hu(ct.array[labels.array == value]).sum()) * SPACING**3 / 1000
            assert float(row[f"mass_g__{muscle}"]) == pytest.approx(mass, rel=1e-4)
        assert "param__fat_mm" in row and row["label_source"] == "phantom"
    medius = [float(r["volume_ml__gluteus_medius_left"]) for r in rows]
    assert max(medius) > 1.1 * min(medius)
    names = json.loads((csv_path.parent / "label_names.json").read_text())
    assert names["1"] == "gluteus_maximus_left"


def test_cohort_resumes_without_redrawing(tmp_path: Path) -> None:
    out = tmp_path / "c"
    make_cohort(2, out, seed=5, spacing=SPACING, progress=False)
    first = (out / "phantom_0000" / "ct.nii.gz").stat().st_mtime_ns
    # a half-written case (killed run) is redone; a complete one is kept
    (out / "phantom_0001" / "case.json").unlink()
    (out / ".phantom_0002.abc.tmp").mkdir()
    make_cohort(3, out, seed=5, spacing=SPACING, progress=False)
    assert (out / "phantom_0000" / "ct.nii.gz").stat().st_mtime_ns == first
    assert (out / "phantom_0001" / "case.json").is_file()
    rows = read_rows(out / "cohort.csv")
    assert len(rows) == 3 and len({r["case_id"] for r in rows}) == 3
    # a case folder is replaced whole when drawn again: one holding other files is refused, kept
    (out / "phantom_0003").mkdir()
    (out / "phantom_0003" / "mine.txt").write_text("mine")
    with pytest.raises(
        InputError, match=r"phantom_0003: holds files that are not a phantom case's \(mine.txt\)"
    ):
        make_cohort(4, out, seed=5, spacing=SPACING, progress=False)
    assert (out / "phantom_0003" / "mine.txt").read_text() == "mine"


def _muscle_ml(labels, value: int | list[int]) -> float:
    return float(np.isin(labels.array, value).sum()) * SPACING**3 / 1000


def test_additive_layering_adds_a_deep_muscles_growth() -> None:
    """Growing the gluteus minimus: carving takes part of it from the medius; additive layering does not."""
    params = sample_params(np.random.default_rng([7, 0]))
    grown = copy.deepcopy(params)
    grown.muscle_scale["gluteus_minimus_left"] *= 1.3
    minimus, medius = MUSCLE_LABELS["gluteus_minimus"][0], MUSCLE_LABELS["gluteus_medius"][0]
    every = [v for pair in MUSCLE_LABELS.values() for v in pair]
    change = {}
    for layering in ("carve", "additive"):
        before, after = (
            build_phantom(params, SPACING, layering)[1],
            build_phantom(grown, SPACING, layering)[1],
        )
        change[layering] = {
            name: _muscle_ml(after, value) - _muscle_ml(before, value)
            for name, value in (("minimus", minimus), ("medius", medius), ("all", every))
        }
    for layering, d in change.items():
        assert d["minimus"] > 10, layering  # the minimus itself grows either way
    carve, additive = change["carve"], change["additive"]
    assert carve["medius"] < -0.2 * carve["minimus"]  # carved out of the medius
    assert carve["all"] < 0.8 * carve["minimus"]
    assert abs(additive["medius"]) < 0.05 * additive["minimus"]  # the medius pushed out, kept
    assert additive["all"] == pytest.approx(additive["minimus"], rel=0.05)


def test_additive_layering_keeps_the_anatomy(tmp_path: Path) -> None:
    """The same case, additive: same skeleton, every muscle at least as large, recorded and resumable."""
    params = sample_params(np.random.default_rng([7, 0]))
    carved = build_phantom(params, SPACING, "carve")[1]
    additive = build_phantom(params, SPACING)[1]  # the default
    assert additive.array.shape == carved.array.shape
    for name in ("femur_left", "hip_right", "sacrum"):
        value = OTHER_LABELS[name]
        np.testing.assert_array_equal(additive.array == value, carved.array == value)
    for left, right in MUSCLE_LABELS.values():
        for value in (left, right):  # a muscle only loses voxels to the fat planes, as before
            assert _muscle_ml(additive, value) >= 0.97 * _muscle_ml(carved, value)
    out = tmp_path / "c"
    make_cohort(1, out, seed=7, spacing=SPACING, progress=False)
    first = (out / "phantom_0000" / "ct.nii.gz").stat().st_mtime_ns
    assert read_rows(out / "cohort.csv")[0]["layering"] == "additive"  # the default
    make_cohort(1, out, seed=7, spacing=SPACING, progress=False, layering="additive")
    assert (out / "phantom_0000" / "ct.nii.gz").stat().st_mtime_ns == first  # kept
    make_cohort(1, out, seed=7, spacing=SPACING, progress=False, layering="carve")  # redrawn
    assert read_rows(out / "cohort.csv")[0]["layering"] == "carve"
    # a case written before the column existed is a carved one, kept beside new cases
    case_json = out / "phantom_0000" / "case.json"
    old_row = json.loads(case_json.read_text())
    del old_row["layering"]
    case_json.write_text(json.dumps(old_row))
    kept = (out / "phantom_0000" / "ct.nii.gz").stat().st_mtime_ns
    make_cohort(2, out, seed=7, spacing=SPACING, progress=False, layering="carve")
    assert (out / "phantom_0000" / "ct.nii.gz").stat().st_mtime_ns == kept
    assert [r["layering"] for r in read_rows(out / "cohort.csv")] == ["carve", "carve"]
    with pytest.raises(InputError, match="--layering"):
        make_cohort(1, out, seed=7, spacing=SPACING, progress=False, layering="overlap")
    with pytest.raises(ValueError, match="layering"):
        build_phantom(params, SPACING, "overlap")


@pytest.mark.slow
def test_volume_ranges_across_seeds() -> None:
    """At 2 mm, across 20 seeds: each muscle varies by at least ±30 % around a realistic mean."""
    cat = MuscleCatalog.load()
    vols = {m: [] for m in cat.muscles}
    for seed in range(20):
        _, labels = build_phantom(sample_params(np.random.default_rng([seed, 0])), 2.0)
        counts = np.bincount(labels.array.ravel(), minlength=15) * 8 / 1000
        for value, muscle in enumerate(cat.muscles, start=1):
            vols[muscle].append(counts[value])
    medius = np.array(vols["gluteus_medius_left"])
    assert 150 < medius.mean() < 350
    for muscle, v in vols.items():
        v = np.array(v)
        assert v.max() / v.mean() > 1.25 and v.min() / v.mean() < 0.75, muscle


def test_a_spacing_too_fine_for_the_memory_is_refused() -> None:
    from xraymuscle.phantom.cohort import _check_memory

    _check_memory(0.75, total_gb=16)  # 9.5 GB of 16: fits
    message = r"--spacing 0.75 mm needs about 9 GB .* has 8 GB; use 0.86 mm or more"
    with pytest.raises(InputError, match=message):
        _check_memory(0.75, total_gb=8)
    _check_memory(0.86, total_gb=8)  # the spacing it proposes is accepted
