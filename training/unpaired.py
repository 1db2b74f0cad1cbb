"""The two image domains of the CycleGAN: DRRs and real radiographs, unpaired, as random crops.

Both domains are brought to the DRR dataset's pixel spacing (at the isocentre plane) and to one
intensity range: each image's 0.5th–99.5th percentiles map to [−1, 1] (collimation bands, left
out of the percentiles, to −1: :func:`xraymuscle.model_grid.normalise`). A real radiograph whose
spacing is known (DICOM) is resampled to the DRRs' spacing (a detector-plane spacing first
divided by the DRR geometry's magnification); one whose spacing is unknown (PNG, JPEG, TIFF) is
assumed to show the same field as a DRR: its shorter side is scaled to the DRRs' shorter side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from xraymuscle.calibration_marker import marker_in, marker_scale, without_marker
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.model_grid import normalise
from xraymuscle.radiograph import read_radiograph
from xraymuscle.study import find_inputs, left_out_line

MIN_REAL = 2


def to_unit(image: np.ndarray) -> np.ndarray:
    """Percentile-normalised to [−1, 1], float32."""
    return normalise(image) * 2.0 - 1.0


def drr_geometry(data: DrrDataset) -> tuple[float, float]:
    """The DRR dataset's pixel spacing (mm, isocentre plane) and its geometry's magnification."""
    spacing = float(data.info.get("pixel_spacing_mm") or 0.0)
    if spacing <= 0:
        raise InputError("dataset.json gives no pixel_spacing_mm", data.root / "dataset.json")
    geometry = data.info.get("geometry") or {}
    sid, sod = geometry.get("sid"), geometry.get("sod")
    return spacing, (float(sid) / float(sod) if sid and sod else 1.0)


def drr_images(data: DrrDataset, limit: int | None = None) -> list[np.ndarray]:
    """The dataset's images in [−1, 1] (every sample, or an even spread of ``limit``)."""
    n = len(data)
    picks = range(n) if limit is None or limit >= n else np.linspace(0, n - 1, limit).round().astype(int)
    return [to_unit(data.sample(int(i), keys=("image",))["image"]) for i in picks]


@dataclass
class RealDomain:
    """The real radiographs read, and the ones that could not be (file: problem)."""

    images: list[np.ndarray] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # earlier runs' output folders, not searched


def real_images(
    source: Path,
    spacing_mm: float,
    magnification: float,
    reference_side: int,
    *,
    marker_mm: float | None = None,
) -> RealDomain:
    """Read every radiograph of ``source`` (a folder or a CSV list) onto the DRRs' grid.

    With ``marker_mm``, each film's spacing comes from its calibration marker of that diameter,
    and the marker is painted out (the DRRs hold none, so the translation would learn to draw
    balls); a film without one is skipped.

    Raises :class:`InputError` when fewer than two can be used: a domain of one image is no
    distribution to learn.
    """
    domain = RealDomain()
    for item in find_inputs(source, on_output_folder=lambda f: domain.left_out.append(left_out_line(f))):
        if item.problem:
            domain.skipped.append(f"{item.name}: {item.problem}")
            continue
        try:
            radiograph = read_radiograph(item.path)
        except InputError as exc:
            domain.skipped.append(f"{item.name}: {exc.problem}")
            continue
        if radiograph.is_colour:
            domain.skipped.append(f"{item.name}: a colour image, not a radiograph")
            continue
        pixels = radiograph.pixels
        if marker_mm is not None:
            marker = marker_in(radiograph, marker_mm)
            if marker is None:
                domain.skipped.append(f"{item.name}: no calibration marker of {marker_mm:g} mm found")
                continue
            pixels = without_marker(pixels, marker)
            file_spacing = (
                1.0 if radiograph.pixel_spacing is None else float(np.mean(radiograph.pixel_spacing))
            )
            scale = file_spacing * marker_scale(radiograph, marker, marker_mm) / spacing_mm
        elif radiograph.pixel_spacing is not None:
            spacing = float(np.mean(radiograph.pixel_spacing))
            if radiograph.spacing_plane == "detector":
                spacing /= magnification
            scale = spacing / spacing_mm
        else:
            scale = reference_side / min(pixels.shape)
        h, w = pixels.shape
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        domain.images.append(to_unit(cv2.resize(pixels.astype(np.float32), size, interpolation=method)))
        domain.paths.append(item.name)
    if len(domain.images) < MIN_REAL:
        raise InputError(
            f"the real domain needs at least {MIN_REAL} readable radiographs, found {len(domain.images)}"
            + (f" ({len(domain.skipped)} skipped; the first: {domain.skipped[0]})" if domain.skipped else ""),
            source,
        )
    return domain


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Pad (edge values) so both sides are at least ``size``."""
    h, w = image.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return image
    return np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="edge")


def random_crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``size``-pixel crops ``(n, 1, size, size)``, each flipped left-right half the time."""
    out = np.empty((n, 1, size, size), np.float32)
    for k in range(n):
        image = pad_to(images[int(rng.integers(len(images)))], size)
        y = int(rng.integers(image.shape[0] - size + 1))
        x = int(rng.integers(image.shape[1] - size + 1))
        crop = image[y : y + size, x : x + size]
        out[k, 0] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out
