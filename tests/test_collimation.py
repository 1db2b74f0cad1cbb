"""Collimation bands: found exactly, kept out of the normalisation, and never found in a DRR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xraymuscle.clinical_style import ClinicalStyle, clinical_style
from xraymuscle.collimation import collimation_mask, exposed_field
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.model_grid import normalise
from xraymuscle.prepare import GridTarget, prepare


def anatomy(h: int = 120, w: int = 100, seed: int = 0) -> np.ndarray:
    """A smooth, varied image in [0.1, 0.8]: a body-like ramp with blobs and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    image = 0.3 + 0.2 * np.sin(6 * xx) * np.cos(4 * yy)
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        image += 0.2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    image += rng.normal(0, 0.01, image.shape)
    return np.clip(image, 0.1, 0.8).astype(np.float32)


def collimate(image: np.ndarray, t: int, b: int, left: int, r: int, value: float = 0.97) -> np.ndarray:
    out = np.full_like(image, value)
    h, w = image.shape
    out[t : h - b, left : w - r] = image[t : h - b, left : w - r]
    return out


@pytest.mark.parametrize("bands", [(7, 3, 11, 0), (0, 0, 5, 9), (12, 12, 12, 12)])
def test_bands_are_found_exactly(bands: tuple[int, int, int, int]) -> None:
    t, b, left, r = bands
    image = collimate(anatomy(), *bands)
    image += np.random.default_rng(1).normal(0, 0.003, image.shape).astype(np.float32)  # a noisy band
    image[1:9, 2:10] = 0.05  # a side marker burned into a corner
    h, w = image.shape
    assert exposed_field(image) == (t, h - b, left, w - r)
    assert collimation_mask(image).sum() == h * w - (h - t - b) * (w - left - r)


def test_dark_or_no_edges_are_not_collimation() -> None:
    image = anatomy()
    h, w = image.shape
    assert exposed_field(image) == (0, h, 0, w)
    padded = np.pad(image, 10)  # zero padding of a resampled image, or air beside the body
    assert exposed_field(padded) == (0, h + 20, 0, w + 20)
    flat = exposed_field(np.full((16, 16), 0.5, np.float32))  # uniform and "bright": a third at most
    assert flat == (5, 11, 5, 11)
    assert normalise(np.full((16, 16), 0.5, np.float32)).shape == (16, 16)


def test_normalise_ignores_the_bands() -> None:
    inner = anatomy()
    image = collimate(inner, 9, 4, 6, 13)
    h, w = image.shape
    out = normalise(image)
    assert np.all(out[:9] == 0) and np.all(out[:, :6] == 0) and np.all(out[h - 4 :] == 0)
    # the field is normalised as if the bands were not there
    np.testing.assert_allclose(out[9 : h - 4, 6 : w - 13], normalise(inner[9 : h - 4, 6 : w - 13]), atol=1e-6)
    # and without bands nothing changes: the 0.5th-99.5th percentiles map to 0-1 over the whole image
    lo, hi = np.percentile(inner, (0.5, 99.5))
    np.testing.assert_allclose(normalise(inner), np.clip((inner - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_the_clinical_style_simulators_collimation_is_found(tiny_drr: Path) -> None:
    data = DrrDataset.load(tiny_drr)
    spacing = float(data.info["pixel_spacing_mm"])
    style = ClinicalStyle(collimation=(0.1, 0.1))
    for i in range(3):
        image = data.sample(i)["image"]
        h, w = image.shape
        styled = clinical_style(image, spacing, np.random.default_rng(i), style)
        c_h, c_w = int(0.1 * h), int(0.1 * w)
        assert exposed_field(styled) == (c_h, h - c_h, c_w, w - c_w)
        assert exposed_field(image) == (0, h, 0, w)  # the DRR itself has none


def test_prepare_fills_bands_before_a_small_field_is_padded(tmp_path: Path) -> None:
    """A field smaller than the grid is padded with dark pixels, which would hide the bands."""
    inner = anatomy(100, 90, seed=3)
    banded = collimate(inner, 8, 0, 7, 0)
    target = GridTarget(size=128, spacing_mm=2.68, magnification=1.0)
    images = {}
    for name, image in (("clean", inner), ("banded", banded)):
        write_dx(tmp_path / f"{name}.dcm", image, pixel_spacing_mm=2.0)
        prepared = prepare(tmp_path / f"{name}.dcm", target)
        assert prepared.status == "ok" and prepared.image is not None, prepared.reason
        images[name] = prepared.image
    clean, banded_grid = images["clean"], images["banded"]
    # the field (75 x 67 pixels on the grid) sits in dark padding; the bands add no bright pixels
    assert (banded_grid >= 0.99).sum() <= (clean >= 0.99).sum() + 10
    assert np.median(banded_grid[:, 30:97][26 : 26 + 5]) < 0.05  # the top band, now as dark as air
    inside = (clean > 0) & (banded_grid > 0.05)  # the exposed field
    assert inside.sum() > 3000
    assert np.mean(np.abs(clean[inside] - banded_grid[inside])) < 0.03
