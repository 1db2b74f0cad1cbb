"""CT and label-map readers: every format keeps origin, spacing and direction; bad input is refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from xraymuscle.catalog import MuscleCatalog
from xraymuscle.errors import InputError
from xraymuscle.measure import muscle_volumes
from xraymuscle.volume import (
    Volume,
    labels_at_scan_ends,
    read_ct,
    read_ct_and_labels,
    read_labels,
    read_volume,
    sides_cut_off,
)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_formats_keep_geometry(tmp_path: Path, tiny_ct: Volume, suffix: str) -> None:
    path = tmp_path / f"ct{suffix}"
    tiny_ct.save(path)
    vol = read_ct(path)
    np.testing.assert_array_equal(vol.array, tiny_ct.array.astype(np.float32))
    np.testing.assert_allclose(vol.spacing, tiny_ct.spacing, rtol=1e-6)
    np.testing.assert_allclose(vol.origin, tiny_ct.origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction, tiny_ct.direction, atol=1e-5)
    assert vol.array.dtype == np.float32


def _write_series(folder: Path, volume: Volume, *, sideways_mm: float = 0.0) -> None:
    """One DICOM file per slice; ``sideways_mm`` shifts each slice along y by that much more than
    the one before (a gantry tilt)."""
    image = Volume(volume.array, volume.spacing, volume.origin).to_sitk()
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        position = np.add(image.TransformIndexToPhysicalPoint((0, 0, k)), (0.0, k * sideways_mm, 0.0))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.3.4",
            "0020|000e": "1.2.3.4.5",
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k),
            "0008|0018": f"1.2.3.4.5.{k}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path: Path, tiny_ct: Volume) -> None:
    _write_series(tmp_path, tiny_ct)
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.array, tiny_ct.array)
    np.testing.assert_allclose(vol.spacing, tiny_ct.spacing, rtol=1e-5)
    np.testing.assert_allclose(vol.origin, tiny_ct.origin, atol=1e-4)


def test_a_series_that_is_not_a_regular_grid_is_refused(tmp_path: Path, tiny_ct: Volume) -> None:
    """Read as a grid, a series with a missing slice takes the mean gap as its spacing (every
    length along it then wrong by that much), and a tilted one is stacked unsheared."""
    assert tiny_ct.array.shape[0] >= 4
    _write_series(tmp_path / "missing", tiny_ct)
    (tmp_path / "missing" / "slice002.dcm").unlink()
    with pytest.raises(InputError, match=r"missing: the slices are not evenly spaced \(gaps from"):
        read_ct(tmp_path / "missing")
    gap = tiny_ct.spacing[2]
    _write_series(tmp_path / "tilted", tiny_ct, sideways_mm=gap * np.tan(np.radians(15)))
    with pytest.raises(InputError, match=r"tilted: the slices are sheared by 15.0 degrees"):
        read_ct(tmp_path / "tilted")
    _write_series(tmp_path / "slight", tiny_ct, sideways_mm=gap * np.tan(np.radians(0.2)))
    np.testing.assert_array_equal(read_ct(tmp_path / "slight").array, tiny_ct.array)


def test_a_series_file_name_that_is_not_utf8_is_named(tmp_path: Path, tiny_ct: Volume) -> None:
    _write_series(tmp_path, tiny_ct)
    os.rename(tmp_path / "slice001.dcm", os.fsencode(tmp_path) + b"/sch\xe4del.dcm")
    with pytest.raises(InputError, match=r"sch\\xe4del.dcm: the path is not valid UTF-8"):
        read_ct(tmp_path)


def test_a_ct_not_in_hounsfield_units_is_refused(tmp_path: Path, tiny_ct: Volume) -> None:
    """A CT whose rescale intercept was lost reads air as about 0 rather than -1000: projected
    as it is, its air would attenuate as tissue. It is refused; the same CT in HU is read."""
    stored = Volume((tiny_ct.array.astype(np.int32) + 1024).astype(np.int16), tiny_ct.spacing, tiny_ct.origin)
    stored.save(tmp_path / "stored.nii.gz")
    with pytest.raises(InputError, match=r"stored.nii.gz: values do not look like Hounsfield units"):
        read_ct(tmp_path / "stored.nii.gz")
    # nor one whose rescale intercept was applied twice: every value 1024 too low, air at -2024
    z, y, x = np.mgrid[:6, :24, :24]
    r = np.hypot(y - 11.5, x - 11.5)
    body = np.where(r < 10, np.where(r < 7, 40, -100), -1000)  # muscle inside fat, in air
    body = np.where(np.hypot(y - 11.5, x - 8) < 2, 1300, body).astype(np.int16)  # and a bone
    Volume(body, (1.0, 1.0, 1.0)).save(tmp_path / "body.nii.gz")
    assert read_ct(tmp_path / "body.nii.gz").array.max() == 1300
    Volume(body - 1024, (1.0, 1.0, 1.0)).save(tmp_path / "twice.nii.gz")
    with pytest.raises(InputError, match=r"twice.nii.gz: values do not look like Hounsfield units: 0.0% "):
        read_ct(tmp_path / "twice.nii.gz")
    tiny_ct.save(tmp_path / "hu.nii.gz")
    assert read_ct(tmp_path / "hu.nii.gz").array.min() < -200


def _split_into_masks(labels: Volume, folder: Path, names: dict[str, int]) -> None:
    """One binary mask per named value, as segmentation tools write them by default."""
    folder.mkdir()
    for name, value in names.items():
        Volume(
            (labels.array == value).astype(np.uint8), labels.spacing, labels.origin, labels.direction
        ).save(folder / f"{name}.nii.gz")


def test_a_folder_of_masks_named_after_muscles_is_one_label_map(tmp_path: Path, tiny_ct: Volume) -> None:
    rng = np.random.default_rng(3)
    labels = Volume(rng.integers(0, 4, size=tiny_ct.array.shape).astype(np.uint16), *_grid(tiny_ct))
    names = {"gluteus_medius_left": 1, "gluteus_medius_right": 2, "iliopsoas_left": 3}
    _split_into_masks(labels, tmp_path / "masks", {**names, "liver": 0})  # (a structure of no muscle)
    (tmp_path / "masks" / "notes.txt").write_text("other files are left alone")
    with pytest.raises(InputError, match=r"masks: .* a folder of masks, it needs a label source"):
        read_labels(tmp_path / "masks", reference=tiny_ct)  # no names to read the masks by
    read = read_labels(tmp_path / "masks", reference=tiny_ct, masks=names)
    np.testing.assert_array_equal(read.array, labels.array)
    assert read.same_grid(tiny_ct)
    # labelled with the source's values, whatever the file order
    values = {name: 10 * v for name, v in names.items()}
    np.testing.assert_array_equal(read_labels(tmp_path / "masks", masks=values).array, labels.array * 10)
    # two masks that claim one voxel are refused, naming both
    Volume(np.ones(tiny_ct.array.shape, np.uint8), *_grid(tiny_ct)).save(
        tmp_path / "masks" / "iliopsoas_left.nii.gz"
    )
    with pytest.raises(
        InputError, match=r"iliopsoas_left.nii.gz: mask shares voxels with gluteus_medius_left"
    ):
        read_labels(tmp_path / "masks", masks=names)
    (tmp_path / "other").mkdir()
    Volume(labels.array, *_grid(tiny_ct)).save(tmp_path / "other" / "spleen.nii.gz")
    with pytest.raises(
        InputError, match=r"other: folder holds no DICOM series and no mask named after a muscle"
    ):
        read_labels(tmp_path / "other", masks=names)


def _grid(volume: Volume) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    return volume.spacing, volume.origin, volume.direction


def test_sides_cut_off_counts_slices_where_the_body_reaches_the_side_borders() -> None:
    """A body wider than the field of view on half the slices (axial slices along k), and the
    same CT stored with its axes in another order (sagittal slices: i runs head-feet, k
    left-right): the share follows the patient's axes, not the array's."""
    arr = np.full((10, 30, 12), -1000.0, np.float32)  # [k, j, i]: k head-feet, j front-back, i left-right
    arr[:, 2:27, 3:9] = 40.0  # a body inside the field, 50 mm deep
    arr[:5, 2:27, :] = 40.0  # wider than the field in the lower five slices
    arr[:, 28:30, :] = 200.0  # a table at the back, 4 mm thick, reaching both sides: not the body
    axial = Volume(arr, (1.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    assert sides_cut_off(axial) == pytest.approx(0.5)
    sagittal = np.transpose(arr, (2, 1, 0))  # [k', j, i'] with k' = i (left-right), i' = k
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: i', j, k'
    assert sides_cut_off(Volume(sagittal, (2.0, 2.0, 1.0), (0.0, 0.0, 0.0), direction)) == pytest.approx(0.5)
    arr[:5, 2:27, :] = -1000.0
    arr[:5, 2:27, 3:9] = 40.0
    assert sides_cut_off(Volume(arr, (1.0, 2.0, 2.0), (0.0, 0.0, 0.0))) == 0.0


def test_labels_at_scan_ends_are_those_the_scan_range_cuts() -> None:
    labels = np.zeros((6, 4, 5), np.uint16)  # [k, j, i], k head-feet
    labels[0, 1, 1] = 3  # reaches the first slice
    labels[2:4, 1, 1] = 4  # inside
    labels[5, 2, 2] = 7  # reaches the last
    labels[2, 0, 0] = 9  # at the side, not at an end
    assert labels_at_scan_ends(Volume(labels, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))) == {3, 7}
    sagittal = np.transpose(labels, (2, 1, 0))  # stored with i running head-feet
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert labels_at_scan_ends(Volume(sagittal, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)) == {3, 7}


def test_missing_path() -> None:
    with pytest.raises(InputError, match="nope.nii.gz: no such file"):
        read_ct("nope.nii.gz")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "text.nii.gz"
    path.write_text("hello")
    with pytest.raises(InputError, match="text.nii.gz: not a readable image"):
        read_ct(path)


def test_a_path_that_is_not_utf8_is_refused_not_a_crash(tmp_path: Path, tiny_ct: Volume) -> None:
    latin = os.fsdecode(os.fsencode(tmp_path) + b"/t\xe4st.nii.gz")  # the library aborts on such a path
    tiny_ct.save(tmp_path / "plain.nii.gz")
    shutil.copyfile(tmp_path / "plain.nii.gz", latin)
    for call in (lambda: read_ct(latin), lambda: tiny_ct.save(latin + ".mha")):
        with pytest.raises(InputError, match=r"t\\xe4st.nii.gz.*: the path is not valid UTF-8"):
            call()


def test_a_pipe_or_a_device_is_refused_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ct.nii")  # the library would wait on it for ever
    for path in (tmp_path / "ct.nii", Path("/dev/zero")):
        with pytest.raises(InputError, match="not a regular file"):
            read_ct(path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no DICOM series"):
        read_ct(tmp_path)


def test_2d_and_4d_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="flat.nii.gz: expected a 3D image, got 2D"):
        read_ct(tmp_path / "flat.nii.gz")
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(tmp_path / "time.nii.gz"))
    with pytest.raises(InputError, match="time.nii.gz: expected a 3D image, got 4D"):
        read_ct(tmp_path / "time.nii.gz")
    sitk.WriteImage(sitk.Image([4, 4, 1], sitk.sitkInt16), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InputError, match="single slice"):
        read_volume(tmp_path / "slice.nii.gz")


def test_labels_values_checked(tmp_path: Path, tiny_ct: Volume) -> None:
    frac = Volume(np.full((3, 3, 3), 1.5, np.float32), (1, 1, 1))
    frac.save(tmp_path / "frac.nii.gz")
    with pytest.raises(InputError, match="frac.nii.gz: label map holds non-integer values"):
        read_labels(tmp_path / "frac.nii.gz")
    neg = Volume(np.full((3, 3, 3), -2, np.int16), (1, 1, 1))
    neg.save(tmp_path / "neg.nii.gz")
    with pytest.raises(InputError, match="neg.nii.gz: label map holds negative values"):
        read_labels(tmp_path / "neg.nii.gz")
    whole = Volume(np.full((3, 3, 3), 7.0, np.float32), (1, 1, 1))
    whole.save(tmp_path / "whole.nii.gz")
    assert read_labels(tmp_path / "whole.nii.gz").array.dtype == np.uint16


def test_labels_resampled_onto_ct_grid(tmp_path: Path) -> None:
    ct = Volume(np.zeros((10, 10, 10), np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fine = np.zeros((20, 20, 20), np.uint16)
    fine[4:12, 4:12, 4:12] = 3  # a 8 mm cube at 1 mm spacing: 64 voxels of 8 mm³ at 2 mm
    Volume(fine, (1.0, 1.0, 1.0), (-0.5, -0.5, -0.5)).save(tmp_path / "fine.nii.gz")
    with pytest.warns(UserWarning, match="resampling"):
        lab = read_labels(tmp_path / "fine.nii.gz", reference=ct)
    assert lab.same_grid(ct)
    assert int((lab.array == 3).sum()) * 8 == pytest.approx(512, rel=0.5)


def test_labels_not_overlapping(tmp_path: Path) -> None:
    ct = Volume(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    far = Volume(np.ones((4, 4, 4), np.uint8), (1.0, 1.0, 1.0), (500.0, 0.0, 0.0))
    far.save(tmp_path / "far.nii.gz")
    with pytest.raises(InputError, match="far.nii.gz: label map does not overlap its CT"):
        read_labels(tmp_path / "far.nii.gz", reference=ct)


def test_volume_validation() -> None:
    with pytest.raises(ValueError, match="spacing must be three positive numbers"):
        Volume(np.zeros((2, 2, 2)), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="must be 3D"):
        Volume(np.zeros((2, 2)), (1.0, 1.0, 1.0))
    with pytest.raises(TypeError, match="numpy array"):
        Volume([[[0]]], (1.0, 1.0, 1.0))  # type: ignore[arg-type]


@pytest.mark.realdata
def test_real_ct_and_totalsegmentator_labels(real_ct_dir: Path) -> None:
    ct, labels = read_ct_and_labels(real_ct_dir / "ct.nii.gz", real_ct_dir / "labels_total_v2.nii.gz")
    assert ct.size_ijk == (122, 101, 112)
    assert ct.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(np.diag(ct.direction), [-1, -1, 1])  # LPS, as read
    assert ct.array.max() > 1800  # the metal implant is kept
    volumes = muscle_volumes(ct, labels, MuscleCatalog.load(), "totalsegmentator_v2")
    # voxel counts of the data README: gluteus medius 239/241 ml, minimus 69/72 ml
    assert volumes["gluteus_medius_left"]["volume_ml"] == pytest.approx(239, abs=1)
    assert volumes["gluteus_medius_right"]["volume_ml"] == pytest.approx(241, abs=1)
    assert volumes["gluteus_minimus_left"]["volume_ml"] == pytest.approx(69, abs=1)
    assert volumes["iliopsoas_right"]["volume_ml"] == pytest.approx(267, abs=1)
    for v in volumes.values():
        assert 1.0 < v["mass_g"] / v["volume_ml"] < 1.1  # muscle density, g/ml
    assert "quadriceps_left" not in volumes
    assert 0.3 < sides_cut_off(ct) < 0.6  # the pelvis is wider than the field of view (0.39)


@pytest.mark.realdata
def test_real_labels_as_a_folder_of_masks(real_ct_dir: Path, tmp_path: Path) -> None:
    """The segmentation tool's default output, one mask per structure named after it (written here
    from the shared label map and its names, one for each of the 61 structures present), measures
    as the label map does."""
    import json

    ct, labels = read_ct_and_labels(real_ct_dir / "ct.nii.gz", real_ct_dir / "labels_total_v2.nii.gz")
    names = json.loads((real_ct_dir / "label_names_total_v2.json").read_text())
    present = {int(v) for v in np.unique(labels.array)} - {0}
    _split_into_masks(labels, tmp_path / "segmentations", {names[str(v)]: v for v in sorted(present)})
    catalog = MuscleCatalog.load()
    from_masks = read_labels(
        tmp_path / "segmentations", reference=ct, masks=catalog.mask_values("totalsegmentator_v2")
    )
    source = "totalsegmentator_v2"
    assert muscle_volumes(ct, from_masks, catalog, source) == muscle_volumes(ct, labels, catalog, source)
    assert len(list((tmp_path / "segmentations").iterdir())) == len(present) > 8
