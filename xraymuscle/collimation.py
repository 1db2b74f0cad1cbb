"""Collimation borders: the unexposed bands along a radiograph's edges, found and set aside.

A radiograph's field is usually collimated to less than the detector: the bands outside it are
unexposed and, after the system's processing, uniform and bright (as bright as dense bone or
brighter). Left in, they distort an intensity normalisation by percentiles (the bright band
takes the top of the histogram and darkens everything else) and show the network a slab of
"bone" where a DRR has air or anatomy. A DRR has no such bands.

:func:`exposed_field` walks in from each edge while a row (or column) is a collimation band:
nearly all its pixels (``COVERAGE``) within ``TOLERANCE`` of the band's median (a fraction of the
image's robust range), and that median at least the image's 90th percentile, less the same
tolerance. A side marker burned into the band covers less than a tenth of it and does not stop
the walk. At most a third of each side is taken. A dark uniform edge (air outside the body, the
padding of a resampled image) is not collimation and stays.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 0.02  # of the image's 0.5th-99.5th percentile range
COVERAGE = 0.9  # of a band's pixels within the tolerance
BRIGHT_PERCENTILE = 90.0
MAX_FRACTION = 1 / 3  # of each side


def exposed_field(image: np.ndarray) -> tuple[int, int, int, int]:
    """The exposed rectangle ``(top, bottom, left, right)`` (bottom and right exclusive)."""
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    lo, bright, hi = (float(v) for v in np.percentile(image, (0.5, BRIGHT_PERCENTILE, 99.5)))
    tolerance = TOLERANCE * max(hi - lo, 1e-6)

    def band(line: np.ndarray) -> bool:
        median = float(np.median(line))
        return median >= bright - tolerance and float(np.mean(np.abs(line - median) <= tolerance)) >= COVERAGE

    top, bottom, left, right = 0, h, 0, w
    while top < int(h * MAX_FRACTION) and band(image[top]):
        top += 1
    while bottom > h - int(h * MAX_FRACTION) and band(image[bottom - 1]):
        bottom -= 1
    while left < int(w * MAX_FRACTION) and band(image[top:bottom, left]):
        left += 1
    while right > w - int(w * MAX_FRACTION) and band(image[top:bottom, right - 1]):
        right -= 1
    return top, bottom, left, right


def collimation_mask(image: np.ndarray) -> np.ndarray:
    """``True`` on the collimation bands, ``False`` in the exposed field."""
    top, bottom, left, right = exposed_field(image)
    mask = np.ones(np.shape(image), bool)
    mask[top:bottom, left:right] = False
    return mask


def fill_collimation(image: np.ndarray) -> np.ndarray:
    """The image with its collimation bands set to the exposed field's 0.5th percentile.

    For an image about to be padded: padding puts dark pixels outside the bands, so that
    :func:`exposed_field` can no longer reach them from the edge. So filled, the bands become the
    darkest of the field and normalise to 0, as found bands do.
    """
    mask = collimation_mask(image)
    if not mask.any():
        return image
    out = np.array(image, dtype=np.float32)
    out[mask] = np.percentile(out[~mask], 0.5)
    return out
