"""A calibration marker in a radiograph: the metal ball of known diameter laid beside the hip.

Hip radiographs taken for planning an operation often show a metal ball (commonly 25 mm) placed
at the height of the hip, so that lengths can be read at the hip's plane whatever the tube's
distance and the patient's build. Its shadow gives the pixel spacing at that plane directly: the
ball's diameter in mm over its shadow's diameter in pixels. That is the one spacing a volume
measurement needs, where a detector spacing must be divided by a magnification that is only
estimated (README: a spacing 5 % off costs 6-8 points of MAPE).

Finding it: circles of the expected size are proposed on the image (a Hough transform of its
gradient), and the one kept is the shadow of metal: a round disc (its overlap with the circle of
its own area at least ``MIN_ROUNDNESS``) whose inside is as bright as metal (brighter than all
but 1 % of the rest of the image, as no bone is, or among the brightest, where a prosthesis sets
them) and which stands out from the ring around it; of two, the one nearer the usual size.
Its diameter is measured from its area, not from the proposal: the pixels of the disc brighter than
half-way between the disc and the ring around it, counted in the disc's neighbourhood, give ``2 *
sqrt(area / pi)``, which a sub-pixel edge position and a noisy rim hardly move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from xraymuscle.radiograph import Radiograph

__all__ = ["MAGNIFICATION_RANGE", "Marker", "find_marker", "marker_in", "marker_scale", "without_marker"]

# A ball beside a hip on a table lies between the detector and the source: its shadow is larger
# than it by 1.0 (on the detector) to 1.4 (a short distance, a thick patient). A file's spacing
# may already be divided by a magnification estimated for the hip (up to some 1.25), so the
# shadow may also come out smaller than the ball in its pixels: the search allows 0.8 of it.
MAGNIFICATION_RANGE = (1.0, 1.4)
SMALLEST_SHADOW = 0.8  # of the ball, in pixels of the file's spacing
TYPICAL_MAGNIFICATION = 1.15  # only to choose between two shadows that could both be the ball
MIN_DIAMETER_PX = 12  # a shadow smaller than this cannot give its size to a per cent
PROPOSAL_PX = 48  # the smallest shadow allowed, across, on the copy that circles are proposed on
BRIGHT_PERCENTILE = 99.0  # the disc's inside is at least this bright in the image
MIN_CONTRAST = 0.25  # disc against its ring, as a share of the image's 1st-99.9th percentile range
MIN_ROUNDNESS = 0.92  # overlap (intersection over union) of the disc and the circle of its area
# Around a shadow of radius r: its inside (the level of the metal) lies within 0.6 r, the ring it
# is compared with (the level around it) from 1.3 r to 1.7 r, and painting it out covers 1.15 r
# (its rim, blurred, included).
INSIDE, RING, COVER = 0.6, (1.3, 1.7), 1.15


@dataclass(frozen=True)
class Marker:
    """A calibration marker's shadow: centre (row, column), diameter (pixels), its inside's level
    and its contrast (that level over its ring's), in the image's units."""

    row: float
    column: float
    diameter_px: float
    level: float
    contrast: float

    def spacing_mm(self, diameter_mm: float) -> float:
        """The pixel spacing (mm) at the marker's plane."""
        return diameter_mm / self.diameter_px


def _sample_step(image: np.ndarray) -> int:
    """Every how many rows and columns to sample an image's percentiles: a million pixels do."""
    return max(1, int(math.sqrt(image.size / 1e6)))


def _diameter_range_px(
    shape: tuple[int, int], diameter_mm: float, spacing_mm: float | None
) -> tuple[float, float]:
    """The shadow's diameter in pixels that the file's spacing allows; without one, from a 60th
    to a quarter of the image's short side (a 25 mm ball on a film up to 430 mm wide is over a
    20th of it)."""
    if spacing_mm is None:
        return max(MIN_DIAMETER_PX, min(shape) / 60), min(shape) / 4
    high = MAGNIFICATION_RANGE[1]
    return max(
        MIN_DIAMETER_PX, SMALLEST_SHADOW * diameter_mm / spacing_mm
    ), 1.1 * high * diameter_mm / spacing_mm


def _window(shape: tuple[int, ...], row: float, col: float, reach: int) -> tuple[slice, slice, np.ndarray]:
    """The rows and columns within ``reach`` of (row, col), clipped to the image, and each of
    their pixels' distance from it."""
    rows = slice(max(0, int(row) - reach), min(shape[0], int(row) + reach + 1))
    cols = slice(max(0, int(col) - reach), min(shape[1], int(col) + reach + 1))
    rr, cc = np.ogrid[rows, cols]
    return rows, cols, np.hypot(rr - row, cc - col)


def _measure(image: np.ndarray, row: float, col: float, radius: float) -> Marker | None:
    """The disc around a proposed circle, measured by its area; ``None`` unless it is a bright,
    round disc that stands out from its ring."""
    # (the window may meet the image's border; the disc may not)
    rows, cols, distance = _window(image.shape, row, col, int(math.ceil(1.8 * radius)) + 2)
    patch = image[rows, cols]
    ring_pixels = patch[(distance > RING[0] * radius) & (distance < RING[1] * radius)]
    if ring_pixels.size == 0:
        return None
    inside = float(np.median(patch[distance < INSIDE * radius]))
    ring = float(np.median(ring_pixels))
    if inside <= ring:
        return None
    bright = (patch > (inside + ring) / 2).astype(np.uint8)
    _, components = cv2.connectedComponents(bright, connectivity=4)
    centre = components[int(row) - rows.start, int(col) - cols.start]  # the proposal's centre
    if centre == 0:
        return None
    disc = components == centre
    if disc[0].any() or disc[-1].any() or disc[:, 0].any() or disc[:, -1].any():
        return None  # it runs on beyond the window (bone, a poor proposal) or is cut by the border
    area = float(disc.sum())
    in_rows, in_cols = np.nonzero(disc)
    centre_row, centre_col = in_rows.mean() + rows.start, in_cols.mean() + cols.start
    equal = math.sqrt(area / math.pi)
    rr, cc = np.ogrid[rows, cols]
    ideal = np.hypot(rr - centre_row, cc - centre_col) < equal  # the circle of its area
    if np.count_nonzero(disc & ideal) / np.count_nonzero(disc | ideal) < MIN_ROUNDNESS:
        return None  # not round: a square of the same area overlaps its circle by 0.83
    return Marker(
        row=float(centre_row),
        column=float(centre_col),
        diameter_px=2.0 * equal,
        level=inside,
        contrast=inside - ring,
    )


def find_marker(pixels: np.ndarray, diameter_mm: float, *, spacing_mm: float | None = None) -> Marker | None:
    """The calibration marker's shadow in ``pixels`` (bone bright), or ``None`` when there is none.

    Parameters
    ----------
    pixels
        The radiograph, more attenuation brighter.
    diameter_mm
        The marker's true diameter.
    spacing_mm
        The file's pixel spacing (at the detector or the patient), when it has one: it bounds the
        shadow's size to what ``MAGNIFICATION_RANGE`` allows, so that a femoral head (some 50 mm)
        is not proposed for a 25 mm ball.
    """
    image = np.asarray(pixels, dtype=np.float32)
    step = _sample_step(image)
    lo, hi = np.percentile(image[::step, ::step], [1.0, 99.9])
    if not hi > lo:
        return None
    smallest, largest = _diameter_range_px(image.shape, diameter_mm, spacing_mm)
    if largest < smallest:
        return None
    # circles are proposed on a copy shrunk until the smallest shadow allowed is PROPOSAL_PX
    # across: a large shadow keeps a sharp edge there (blurring at full size would soften it
    # below the edge detector's threshold), and a large film costs little
    factor = min(1.0, PROPOSAL_PX / smallest)
    shrunk = (
        image
        if factor == 1.0
        else cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    )
    unit = np.clip((shrunk - lo) / (hi - lo), 0.0, 1.0)
    eight_bit = cv2.GaussianBlur((unit * 255).astype(np.uint8), (0, 0), 1.0)
    circles = cv2.HoughCircles(
        eight_bit,
        cv2.HOUGH_GRADIENT,
        dp=1,
        minDist=smallest * factor,
        param1=60,
        param2=max(8, int(smallest * factor * 0.6)),
        minRadius=int(smallest * factor / 2),
        maxRadius=int(math.ceil(largest * factor / 2)),
    )
    if circles is None:
        return None
    # measured on the image itself: the scaled copy clips at its 99.9th percentile, which a small
    # ball's shadow passes, and a clipped rim would read wider
    found = []
    for col, row, radius in circles[0][:50] / factor:
        marker = _measure(image, float(row), float(col), float(radius))
        if marker is None or marker.contrast < MIN_CONTRAST * (hi - lo):
            continue
        if smallest <= marker.diameter_px <= largest and _like_metal(image, marker, lo + 0.9 * (hi - lo)):
            found.append(marker)
    if spacing_mm is None:
        return max(found, key=lambda m: m.contrast, default=None)
    # two round shadows of metal (a prosthesis's head, say): the one nearer the usual size
    usual = TYPICAL_MAGNIFICATION * diameter_mm / spacing_mm
    return min(found, key=lambda m: abs(math.log(m.diameter_px / usual)), default=None)


def _like_metal(image: np.ndarray, marker: Marker, top: float) -> bool:
    """Whether the disc's inside is as bright as metal: among the brightest of the image (at least
    ``top``, where other metal, as a prosthesis, sets the brightest), or brighter than the
    ``BRIGHT_PERCENTILE`` of the image around it (the disc left out, as a large shadow would set
    that percentile itself), as no bone is."""
    if marker.level >= top:
        return True
    step = _sample_step(image)
    rows, cols = np.ogrid[0 : image.shape[0] : step, 0 : image.shape[1] : step]
    outside = np.hypot(rows - marker.row, cols - marker.column) > 1.2 * marker.diameter_px / 2
    return marker.level >= float(np.percentile(image[::step, ::step][outside], BRIGHT_PERCENTILE))


def marker_in(radiograph: Radiograph, marker_mm: float) -> Marker | None:
    """The calibration marker's shadow in a radiograph, its size bounded by the file's spacing."""
    spacing = radiograph.pixel_spacing
    hint = None if spacing is None else math.sqrt(float(spacing[0]) * float(spacing[1]))
    return find_marker(radiograph.pixels, marker_mm, spacing_mm=hint)


def marker_scale(radiograph: Radiograph, marker: Marker, marker_mm: float) -> float:
    """What the file's pixel spacing is multiplied by for the marker's shadow to have the marker's
    size: its spacing at the marker's plane (mm) where the file has none (square pixels), the
    inverse of the marker's magnification where the file's spacing is at the detector."""
    if radiograph.pixel_spacing is None:
        return marker.spacing_mm(marker_mm)
    rows, cols = (float(v) for v in radiograph.pixel_spacing)
    return marker.spacing_mm(marker_mm) / math.sqrt(rows * cols)


def without_marker(pixels: np.ndarray, marker: Marker) -> np.ndarray:
    """The image with the marker's shadow (and its rim) given the level of the ring around it, or
    of what lies around it at the image's border: the decomposition network never saw one."""
    out = np.array(pixels, dtype=np.float32, copy=True)
    radius = marker.diameter_px / 2
    rows, cols, distance = _window(out.shape, marker.row, marker.column, int(math.ceil(RING[1] * radius)) + 1)
    window = out[rows, cols]  # (a view: filling it fills ``out``)
    ring = (distance > RING[0] * radius) & (distance < RING[1] * radius)
    around = window[ring] if ring.any() else window[distance > COVER * radius]
    if around.size:
        window[distance <= COVER * radius] = np.median(around)
    return out
