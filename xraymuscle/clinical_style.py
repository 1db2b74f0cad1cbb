"""Clinical-style radiographs from DRRs: a domain gap whose truth is known.

A processed clinical radiograph differs from a DRR in ways the renderer's physics does not model
(and must not: this module stands apart from it, so that a model trained on plain DRRs meets a
real gap). Starting from a DRR's line-integral image ``p`` (the ``−ln`` image), each image gets,
with its own random settings:

1. the detector signal ``I = exp(−p)`` at a varying exposure, with the anode heel effect (a
   linear fall-off of intensity along the anode–cathode axis);
2. scatter haze: a broad blur of the primary signal added at a scatter-to-primary ratio;
3. detector blur (Gaussian, in mm) and quantum noise (Poisson at the exposure's photon count);
4. processing: log, a window from the image's own histogram, an S-shaped display curve (a
   logistic look-up table), and unsharp-mask edge enhancement on a large kernel;
5. collimation: the field outside a random rectangle left unexposed (bright after processing);
6. a burned-in side marker (``L`` or ``R`` in a box) in a corner;
7. 12-bit quantisation.

:func:`stylise_dataset` writes a DRR dataset whose images are so processed (maps unchanged).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from xraymuscle.drr_dataset import DrrDataset, derive_dataset


@dataclass(frozen=True)
class ClinicalStyle:
    """Ranges of the random settings (each image draws its own within them)."""

    photons: tuple[float, float] = (2e4, 2e5)  # per (coarse) pixel, unattenuated
    heel: tuple[float, float] = (0.1, 0.3)  # relative intensity fall-off across the field
    scatter_to_primary: tuple[float, float] = (0.4, 1.2)
    scatter_sigma_mm: tuple[float, float] = (25.0, 60.0)
    blur_sigma_mm: tuple[float, float] = (0.5, 1.5)
    window_percentiles: tuple[float, float] = (1.0, 99.9)
    lut_slope: tuple[float, float] = (2.5, 5.0)  # logistic display curve steepness
    unsharp_sigma_mm: tuple[float, float] = (8.0, 20.0)
    unsharp_amount: tuple[float, float] = (0.6, 1.6)
    collimation: tuple[float, float] = (0.0, 0.12)  # fraction of each side left unexposed
    marker_probability: float = 0.9

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def clinical_style(
    image: np.ndarray, spacing_mm: float, rng: np.random.Generator, style: ClinicalStyle | None = None
) -> np.ndarray:
    """One DRR line-integral image as a processed clinical radiograph, values in [0, 1] (12-bit steps)."""
    style = style or ClinicalStyle()
    p = np.asarray(image, np.float64)
    h, w = p.shape
    # 1. signal, exposure, heel effect along a random axis (anode-cathode along rows or columns)
    photons = _draw(rng, style.photons)
    heel = _draw(rng, style.heel)
    ramp = np.linspace(-0.5, 0.5, h if rng.random() < 0.5 else w)
    profile = 1.0 - heel * ramp * (1 if rng.random() < 0.5 else -1)
    field = profile[:, None] if len(ramp) == h else profile[None, :]
    primary = np.exp(-np.clip(p - np.percentile(p, 1), 0, None)) * field
    # 2. scatter: broad, smooth, a fraction of the mean primary
    sigma = _draw(rng, style.scatter_sigma_mm) / spacing_mm
    scatter = cv2.GaussianBlur(primary, (0, 0), sigma) * _draw(rng, style.scatter_to_primary)
    signal = primary + scatter
    # 3. detector blur and quantum noise
    signal = cv2.GaussianBlur(signal, (0, 0), max(_draw(rng, style.blur_sigma_mm) / spacing_mm, 0.3))
    counts = rng.poisson(np.clip(signal, 0, None) * photons) + 1.0
    # 4. processing: log, window, logistic display curve, unsharp mask
    q = -np.log(counts / photons)
    lo, hi = np.percentile(q, style.window_percentiles)
    x = np.clip((q - lo) / max(hi - lo, 1e-6), 0, 1)
    slope = _draw(rng, style.lut_slope)
    shift = rng.uniform(-0.08, 0.08)
    y = 1 / (1 + np.exp(-slope * (x - 0.5 - shift)))
    y = (y - y.min()) / max(float(np.ptp(y)), 1e-6)
    usm = cv2.GaussianBlur(y, (0, 0), _draw(rng, style.unsharp_sigma_mm) / spacing_mm)
    y = np.clip(y + _draw(rng, style.unsharp_amount) * (y - usm), 0, 1)
    # 5. collimation: unexposed borders are bright on a processed film
    c = [int(_draw(rng, style.collimation) * n) for n in (h, h, w, w)]
    mask = np.zeros((h, w), bool)
    mask[c[0] : h - c[1], c[2] : w - c[3]] = True
    y = np.where(mask, y, 0.97)
    # 6. a burned-in side marker
    if rng.random() < style.marker_probability:
        y = _marker(y, "L" if rng.random() < 0.5 else "R", rng)
    # 7. 12 bits
    return (np.round(y * 4095) / 4095).astype(np.float32)


def _marker(y: np.ndarray, letter: str, rng: np.random.Generator) -> np.ndarray:
    h, w = y.shape
    size = max(8, min(h, w) // 12)
    corner_y = int(rng.integers(0, 2)) * (h - 2 * size) + size // 2
    corner_x = int(rng.integers(0, 2)) * (w - 2 * size) + size // 2
    out = y.copy()
    out[corner_y : corner_y + size, corner_x : corner_x + size] = 0.05
    scale = size / 28
    org = (corner_x + max(1, size // 6), corner_y + size - max(1, size // 6))
    ink = np.zeros((h, w), np.uint8)
    cv2.putText(ink, letter, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, size // 12), cv2.LINE_AA)
    alpha = ink.astype(np.float64) / 255
    return out * (1 - alpha) + alpha


def stylise_dataset(
    data_dir: Path,
    out: Path,
    *,
    seed: int = 0,
    style: ClinicalStyle | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Path:
    """A DRR dataset whose images look like processed clinical radiographs (maps unchanged)."""
    style = style or ClinicalStyle()
    data = DrrDataset.load(data_dir)
    spacing = float(data.info.get("pixel_spacing_mm") or 1.0)

    def transform(image: np.ndarray, sample_id: str) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(sample_id.encode())])
        return clinical_style(image, spacing, rng, style)

    provenance = {"source_dataset": str(Path(data_dir).resolve()), "seed": seed, "style": style.to_dict()}
    made, total = derive_dataset(
        data, Path(out), transform, "clinical_style", provenance, progress=progress, desc="styling"
    )
    echo(f"{made} images styled, {total - made} already there; dataset: {out}")
    return Path(out)
