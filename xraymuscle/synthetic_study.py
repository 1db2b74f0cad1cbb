"""A study folder with known content, for testing and benchmarking ``screen``.

Good radiographs are DRRs (from any DRR dataset) written as DICOM DX files with patient, study
and device tags, a little noise and an exposure change each. ``bad=True`` mixes in one of every
kind of file a real study throws at a reader, each with the status it must get:

========================  ==========================================  ==========
file                      what it is                                  status
========================  ==========================================  ==========
``truncated.dcm``         a good DICOM cut in half                    error
``empty.dcm``             zero bytes                                  error
``notes.dcm``             a text file named ``.dcm``                  error
``no_pixels.dcm``         a DICOM data set without pixel data         error
``huge.png``              20000 × 20000 pixels                        error
``ct_slice.dcm``          a CT image                                  rejected
``photo.png``             a colour photograph                         rejected
``film16.png``            a 16-bit PNG radiograph (no pixel spacing)  rejected
``duplicate.dcm``         a byte copy of the first good file          as the original
``Ünïcode dir/…``         a good file under spaces and non-ASCII      ok or uncertain
========================  ==========================================  ==========

The expected statuses are returned, so a test or a benchmark can check every row.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom

from xraymuscle.dicom_writer import write_dx

READ = ("ok", "uncertain", "rejected")  # a good file is read; what the model makes of it may vary


def _patient(rng: np.random.Generator, i: int) -> dict[str, str]:
    return {
        "PatientID": f"SYN{i // 2:06d}",  # two radiographs per patient
        "PatientName": f"Synthetic^Person{i // 2}",
        "PatientAge": f"{int(rng.integers(20, 95)):03d}Y",
        "PatientSex": str(rng.choice(["F", "M"])),
        "StudyDate": f"2026{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "Manufacturer": str(rng.choice(["Vendor A", "Vendor B"])),
    }


def write_study(
    folder: Path,
    images: list[tuple[np.ndarray, float]],
    n_good: int,
    *,
    bad: bool = True,
    seed: int = 0,
    upsample: int = 1,
) -> dict[str, tuple[str, ...]]:
    """Write ``n_good`` radiographs (cycling through ``images``: (image, spacing mm)) and, with
    ``bad``, the bad files of the module's table. ``upsample`` enlarges each good image (finer
    spacing, same field), for realistic file sizes. Returns each file's allowed statuses.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    good_dir = folder / "good"
    good_dir.mkdir(parents=True, exist_ok=True)
    expected: dict[str, tuple[str, ...]] = {}
    first = None
    for i in range(n_good):
        image, spacing = images[i % len(images)]
        image = np.asarray(image, np.float64)
        if upsample > 1:
            image = cv2.resize(image, None, fx=upsample, fy=upsample, interpolation=cv2.INTER_LINEAR)
        image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 0.01 * float(image.std()), image.shape)
        sub = good_dir / f"batch_{i // 100:03d}"
        path = write_dx(
            sub / f"xr_{i:05d}.dcm", image, pixel_spacing_mm=spacing / upsample, tags=_patient(rng, i)
        )
        expected[str(path)] = READ
        first = first or path
    if not bad:
        return expected
    assert first is not None
    weird = folder / "Ünïcode dir" / "hüfte ap 1.dcm"
    weird.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(first, weird)
    expected[str(weird)] = READ
    bad_dir = folder / "bad"
    bad_dir.mkdir(exist_ok=True)
    data = first.read_bytes()
    (bad_dir / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (bad_dir / "empty.dcm").write_bytes(b"")
    (bad_dir / "notes.dcm").write_text("radiology notes, not an image\n", encoding="utf-8")
    ds = pydicom.dcmread(first)
    del ds.PixelData
    ds.save_as(bad_dir / "no_pixels.dcm")
    ct = pydicom.dcmread(first)
    ct.Modality = "CT"
    ct.save_as(bad_dir / "ct_slice.dcm")
    cv2.imwrite(str(bad_dir / "photo.png"), rng.integers(0, 255, (300, 400, 3)).astype(np.uint8))
    film = pydicom.dcmread(first).pixel_array.astype(np.uint16) * 16
    cv2.imwrite(str(bad_dir / "film16.png"), film)
    huge = np.zeros((20000, 20000), np.uint8)
    cv2.imwrite(str(bad_dir / "huge.png"), huge)
    del huge
    shutil.copyfile(first, bad_dir / "duplicate.dcm")
    for name, status in (
        ("truncated.dcm", ("error",)),
        ("empty.dcm", ("error",)),
        ("notes.dcm", ("error",)),
        ("no_pixels.dcm", ("error",)),
        ("huge.png", ("error",)),
        ("ct_slice.dcm", ("rejected",)),
        ("photo.png", ("rejected",)),
        ("film16.png", ("rejected",)),
        ("duplicate.dcm", READ),
    ):
        expected[str(bad_dir / name)] = status
    return {os.path.abspath(k): v for k, v in expected.items()}
