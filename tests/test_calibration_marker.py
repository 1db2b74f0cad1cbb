"""Finding a calibration ball's shadow, and measuring it, against shadows drawn exactly."""

from __future__ import annotations

import numpy as np
import pytest

from xraymuscle.calibration_marker import find_marker


def _disc(shape: tuple[int, int], row: float, col: float, diameter: float, level: float) -> np.ndarray:
    """A ball's shadow: each pixel the share of it the disc covers (4 x 4 samples) times ``level``."""
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    rr = np.arange(shape[0])[:, None, None, None] + sub[None, None, :, None]
    cc = np.arange(shape[1])[None, :, None, None] + sub[None, None, None, :]
    inside = (rr - row) ** 2 + (cc - col) ** 2 < (diameter / 2) ** 2
    return level * inside.mean(axis=(2, 3))


def _film(shape: tuple[int, int] = (400, 500), seed: int = 0) -> np.ndarray:
    """A film without a ball: a soft-tissue slope, two bone bars and noise (bone bright)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = 0.3 + 0.2 * np.sin(cols / shape[1] * np.pi)
    image[:, 150:190] += 0.4  # a femur
    image[120:150, :] += 0.3  # and a ramus across it
    return (image + rng.normal(0, 0.01, shape)).astype(np.float32)


@pytest.mark.parametrize("diameter", [20.0, 57.3, 140.0])
@pytest.mark.parametrize("hint", [True, False])
def test_the_shadow_is_measured_to_half_a_per_cent(diameter: float, hint: bool) -> None:
    film = _film((600, 700))
    row, col = 470.3, 560.7
    image = film + _disc(film.shape, row, col, diameter, level=1.5)
    spacing = 25.0 * 1.2 / diameter  # a 25 mm ball magnified 1.2 times
    marker = find_marker(image, 25.0, spacing_mm=spacing if hint else None)
    assert marker is not None
    assert marker.diameter_px == pytest.approx(diameter, rel=5e-3)
    assert (marker.row, marker.column) == (pytest.approx(row, abs=0.2), pytest.approx(col, abs=0.2))
    assert marker.spacing_mm(25.0) == pytest.approx(25.0 / diameter, rel=5e-3)


def test_a_film_without_a_ball_has_no_marker() -> None:
    for seed in range(3):
        assert find_marker(_film(seed=seed), 25.0) is None
        assert find_marker(_film(seed=seed), 25.0, spacing_mm=0.2) is None


def test_round_things_that_are_no_marker_are_passed_over() -> None:
    film = _film((600, 700))
    # a femoral head: round, but as bright as bone, not as metal
    head = film + _disc(film.shape, 300.0, 170.0, 110.0, level=0.4)
    assert find_marker(head, 25.0) is None
    # a ball too large for the file's spacing: a 50 mm disc where a 25 mm ball is asked for
    spacing = 0.25
    big = film + _disc(film.shape, 300.0, 450.0, 50.0 * 1.2 / spacing, level=1.5)
    assert find_marker(big, 25.0, spacing_mm=spacing) is None
    assert find_marker(big, 50.0, spacing_mm=spacing) is not None
    # a ball cut by the border: its size cannot be read
    cut = film + _disc(film.shape, 20.0, 300.0, 80.0, level=1.5)
    assert find_marker(cut, 25.0) is None
    # a flat image
    assert find_marker(np.zeros((300, 300), np.float32), 25.0) is None


def test_the_ball_is_told_from_a_prosthesis_and_found_near_the_border() -> None:
    """A hip prosthesis is metal too, with a round head (28 mm here) on a stem: the ball is the
    round shadow on its own, also where the prosthesis sets the image's brightest level and the
    ball lies closer to the border than the ring the search compares it with."""
    film = _film((800, 900))
    spacing, magnification = 0.15, 1.15
    head = _disc(film.shape, 300.0, 300.0, 28 * magnification / spacing, 1.5)
    stem = np.zeros_like(film)
    stem[300:700, 290:330] = 1.5
    prosthesis = np.clip(head + stem, 0, 1.5)
    assert find_marker(film + prosthesis, 25.0, spacing_mm=spacing) is None
    diameter = 25 * magnification / spacing
    ball = _disc(film.shape, 800 - diameter / 2 - 4, 700.7, diameter, 1.5)  # 4 px from the border
    marker = find_marker(film + prosthesis + ball, 25.0, spacing_mm=spacing)
    assert marker is not None and marker.diameter_px == pytest.approx(diameter, rel=5e-3)
    # a loose round head beside the ball: the one nearer the usual size is taken
    marker = find_marker(film + head + ball, 25.0, spacing_mm=spacing)
    assert marker is not None and marker.diameter_px == pytest.approx(diameter, rel=5e-3)


def test_a_large_shadow_on_a_fine_film_is_found() -> None:
    """At fine pixels the ball's shadow is hundreds of pixels across: circles are proposed on a
    shrunk copy, where its edge stays sharp (blurred at full size, the edge fell below the edge
    detector's threshold and the ball was missed), and measured at full size."""
    spacing, magnification = 0.05, 1.15
    diameter = 25 * magnification / spacing  # 575 pixels
    film = np.full((3000, 3000), 0.4, np.float32)
    film[:, 750:980] += 0.4  # a femur
    rows, cols = np.ogrid[:3000, :3000]
    film[(rows - 2160.3) ** 2 + (cols - 1860.6) ** 2 < (diameter / 2) ** 2] += 1.5
    for hint in (spacing, None):
        marker = find_marker(film, 25.0, spacing_mm=hint)
        assert marker is not None, hint
        assert marker.diameter_px == pytest.approx(diameter, rel=2e-3)
