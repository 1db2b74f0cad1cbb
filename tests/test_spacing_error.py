"""The spacing's part of the sd: the probes, and what the network makes of them.

The end-to-end check, against ``predict`` run at the spacing 5 % too large and too small, is in
``test_predict.py``; these check the parts on their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.unet import BayesianUNet
from xraymuscle.dicom_writer import write_dx
from xraymuscle.errors import InputError
from xraymuscle.model import load_model
from xraymuscle.paths import default_model_dir
from xraymuscle.prepare import GridTarget, prepare
from xraymuscle.spacing_error import PROBE_FACTORS, check_spacing_sd, spacing_sds


def _network(mass_head: bool) -> BayesianUNet:
    torch.manual_seed(0)
    return BayesianUNet(4, base_channels=4, depth=3, dropout=0.2, mass_head=mass_head).eval()


def _film(tmp_path: Path) -> tuple[Path, float]:
    """A round body with a bright bone in it, 200 × 180 pixels of 1.5 mm."""
    yy, xx = np.mgrid[:200, :180].astype(np.float64)
    body = (((yy - 100) / 80) ** 2 + ((xx - 90) / 70) ** 2 < 1) * 1.0
    bone = (((yy - 90) / 15) ** 2 + ((xx - 60) / 10) ** 2 < 1) * 1.5
    return write_dx(tmp_path / "film.dcm", body + bone, pixel_spacing_mm=1.5), 1.5


def test_the_probes_are_the_image_read_at_the_other_spacings(tmp_path: Path) -> None:
    """Probe ``i`` is exactly what ``prepare`` makes of the file given a spacing of
    ``PROBE_FACTORS[i]`` times its own, and the image is the one made without probes."""
    film, spacing = _film(tmp_path)
    target = GridTarget(size=64, spacing_mm=4.0, magnification=1.0, spacing_probes=True)
    prepared = prepare(film, target)
    assert prepared.status == "ok" and prepared.probes is not None
    assert prepared.probes.shape == (len(PROBE_FACTORS), 64, 64)
    plain = prepare(film, GridTarget(size=64, spacing_mm=4.0, magnification=1.0))
    assert plain.probes is None and np.array_equal(plain.image, prepared.image)
    for probe, factor in zip(prepared.probes, PROBE_FACTORS, strict=True):
        other = prepare(
            film, GridTarget(size=64, spacing_mm=4.0, magnification=1.0), pixel_spacing=spacing * factor
        )
        assert np.array_equal(probe, other.image)
        assert not np.array_equal(probe, prepared.image)
    # a larger spacing draws the body larger on the grid: more of it above the background
    assert (prepared.probes[0] > 0.2).sum() > (prepared.image > 0.2).sum() > (prepared.probes[1] > 0.2).sum()


@pytest.mark.parametrize("mass_head", [True, False])
def test_the_sd_scales_with_the_percent_and_is_zero_for_no_change(mass_head: bool) -> None:
    network = _network(mass_head)
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.random((3, 1, 32, 32), dtype=np.float32))
    probes = torch.cat([images * 3, images * 0.2], dim=1)
    options = {"pixel_area_mm2": 16.0, "map_scale_mm": 10.0}
    volume_sd, mass_sd = spacing_sds(network, images, probes, percent=2.0, **options)
    assert volume_sd.shape == (3, 4) and np.all(volume_sd > 0)
    assert (mass_sd is not None) == mass_head
    doubled, _ = spacing_sds(network, images, probes, percent=4.0, **options)
    np.testing.assert_allclose(doubled, 2 * volume_sd, rtol=1e-9)
    unchanged = images.expand(-1, 2, -1, -1).contiguous()  # probes no different from the image
    still, still_mass = spacing_sds(network, images, unchanged, percent=4.0, **options)
    np.testing.assert_allclose(still, 0.0, atol=1e-9)
    if mass_head:
        np.testing.assert_allclose(still_mass, 0.0, atol=1e-9)
    # the images are read one by one, whatever the batch
    one_by_one, _ = spacing_sds(network, images, probes, percent=2.0, batch=1, **options)
    np.testing.assert_allclose(one_by_one, volume_sd, rtol=1e-5)
    assert network.training is False  # left as it was found
    with pytest.raises(ValueError, match="do not match"):
        spacing_sds(network, images[:2], probes, percent=2.0, **options)


def test_a_mirrored_image_gets_the_sds_of_its_twins(tmp_path: Path) -> None:
    """With ``twins`` the network reads each image and its mirror: a mirrored image and its
    mirrored probes give the same sds with the twins' channels exchanged (the shipped model, on
    a drawn film that is not symmetric)."""
    model = load_model(default_model_dir())
    assert model.twins is not None
    film, _ = _film(tmp_path)
    prepared = prepare(film, GridTarget.of(model, spacing_probes=True))
    assert prepared.image is not None and prepared.probes is not None
    images = torch.from_numpy(prepared.image)[None, None]
    probes = torch.from_numpy(prepared.probes)[None]
    options = {
        "percent": 3.0,
        "pixel_area_mm2": model.pixel_spacing_mm**2,
        "map_scale_mm": float(model.meta["map_scale_mm"]),
        "twins": model.twins,
    }
    volume_sd, mass_sd = spacing_sds(model.network, images, probes, **options)
    assert np.all(volume_sd > 0)
    mirrored, mirrored_mass = spacing_sds(
        model.network, torch.flip(images, dims=[-1]), torch.flip(probes, dims=[-1]), **options
    )
    np.testing.assert_allclose(mirrored[:, model.twins], volume_sd, rtol=1e-4)
    assert mass_sd is not None and mirrored_mass is not None
    np.testing.assert_allclose(mirrored_mass[:, model.twins], mass_sd, rtol=1e-4)
    # read without its mirror, the image's sds are not its mirror's
    alone = {**options, "twins": None}
    plain, _ = spacing_sds(model.network, images, probes, **alone)
    flipped, _ = spacing_sds(
        model.network, torch.flip(images, dims=[-1]), torch.flip(probes, dims=[-1]), **alone
    )
    assert not np.allclose(flipped[:, model.twins], plain, rtol=1e-3)


@pytest.mark.parametrize("value", [0.0, -1.0, 20.5, float("nan"), float("inf")])
def test_a_spacing_sd_outside_its_range_is_refused(value: float) -> None:
    with pytest.raises(InputError, match="--spacing-sd-percent must be more than 0 and at most 20"):
        check_spacing_sd(value)
    check_spacing_sd(None)
    check_spacing_sd(20.0)
    check_spacing_sd(0.5)
