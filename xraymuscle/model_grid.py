"""The network's grid: how an image (and its maps) is brought to the size, pixel spacing and
intensity range a model reads. Shared by training and inference; needs only NumPy and OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from xraymuscle.collimation import collimation_mask

NORMALISE_PERCENTILES = (0.5, 99.5)


def normalise(image: np.ndarray) -> np.ndarray:
    """Map the exposed field's 0.5th–99.5th percentiles to 0–1 (clipped), float32.

    Collimation bands (:mod:`xraymuscle.collimation`) take no part in the percentiles and are set
    to 0, the value of air: what lies under them is unknown, and a DRR shows nothing bright
    there. An image without such bands (a DRR has none) is normalised over all its pixels.
    """
    image = np.asarray(image, dtype=np.float32)
    outside = collimation_mask(image)
    lo, hi = np.percentile(image[~outside], NORMALISE_PERCENTILES)
    out = np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    out[outside] = 0.0
    return out


def resample(array: np.ndarray, scale: float | tuple[float, float]) -> np.ndarray:
    """Resample ``(C, H, W)`` by ``scale`` (new pixels per old pixel; a ``(row, column)`` pair for
    pixels that are not square); unchanged within 0.1 %.

    Values are resampled as intensities (area averaging when shrinking), which keeps map
    thicknesses; the caller accounts for the changed pixel area.
    """
    sy, sx = (scale, scale) if isinstance(scale, int | float) else scale
    if abs(sy - 1.0) <= 1e-3 and abs(sx - 1.0) <= 1e-3:
        return array
    if min(sy, sx) < 1 < max(sy, sx):  # one axis shrinks, the other grows: each its own method
        return resample(resample(array, (sy, 1.0)), (1.0, sx))
    _, h, w = array.shape
    new_h, new_w = max(1, round(h * sy)), max(1, round(w * sx))
    method = cv2.INTER_AREA if min(sy, sx) < 1 else cv2.INTER_LINEAR  # (both shrink, or both grow)
    return np.stack([cv2.resize(ch, (new_w, new_h), interpolation=method) for ch in array])


def fit_to_grid(array: np.ndarray, scale: float, size: int) -> np.ndarray:
    """:func:`resample` ``(C, H, W)`` by ``scale`` and centre-crop or pad (zeros) to ``size``."""
    array = resample(array, scale)
    c, h, w = array.shape
    out = np.zeros((c, size, size), np.float32)
    sy, sx = max(0, (h - size) // 2), max(0, (w - size) // 2)
    dy, dx = max(0, (size - h) // 2), max(0, (size - w) // 2)
    hh, ww = min(h, size), min(w, size)
    out[:, dy : dy + hh, dx : dx + ww] = array[:, sy : sy + hh, sx : sx + ww]
    return out


@dataclass(frozen=True)
class GridSpec:
    """The network's grid: ``size`` pixels per side of ``spacing_mm`` (at the isocentre plane)."""

    size: int
    spacing_mm: float

    @property
    def pixel_area_mm2(self) -> float:
        return self.spacing_mm**2
