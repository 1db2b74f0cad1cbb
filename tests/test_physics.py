"""X-ray physics: attenuation data, tube spectra, and how line integrals become an image."""

from __future__ import annotations

import numpy as np
import pytest

from drr.attenuation import COMPOSITIONS, mass_attenuation
from drr.imaging import XrayPhysics, form_image
from drr.spectra import mean_energy, tube_spectrum


@pytest.mark.parametrize(
    ("material", "energy", "expected"),
    [  # reference mass attenuation coefficients (cm²/g) of ICRU-44 tissues
        ("soft_tissue", 60.0, 0.2048),
        ("soft_tissue", 30.0, 0.3790),
        ("bone", 60.0, 0.3148),
        ("bone", 30.0, 1.331),
        ("air", 60.0, 0.1875),
    ],
)
def test_mass_attenuation_matches_reference_values(material: str, energy: float, expected: float) -> None:
    assert mass_attenuation(material, np.array([energy]))[0] == pytest.approx(expected, rel=0.02)


def test_compositions_are_mass_fractions() -> None:
    for fractions in COMPOSITIONS.values():
        assert sum(fractions.values()) == pytest.approx(1.0, abs=0.002)
    with pytest.raises(ValueError, match="unknown material"):
        mass_attenuation("lead", np.array([60.0]))


def test_tube_spectrum() -> None:
    energies, fluence = tube_spectrum(80.0, filtration_mm_al=2.5)
    assert fluence.sum() == pytest.approx(1.0)
    assert energies.max() <= 80.0 and energies.min() > 5.0
    assert 38.0 < mean_energy(energies, fluence) < 50.0
    harder = tube_spectrum(80.0, filtration_mm_al=6.0)
    assert mean_energy(*harder) > mean_energy(energies, fluence)  # filtration hardens the beam
    assert mean_energy(*tube_spectrum(120.0)) > mean_energy(energies, fluence)
    with pytest.raises(ValueError, match="kvp must be between"):
        tube_spectrum(10.0)


def line_integrals(soft: np.ndarray, bone: np.ndarray) -> np.ndarray:
    soft = np.asarray(soft, float)
    return np.stack([np.zeros_like(soft), soft, np.asarray(bone, float) + 0 * soft])


def test_monochromatic_is_the_weighted_sum() -> None:
    physics = XrayPhysics(mode="monochromatic", energy_kev=60.0)
    materials = line_integrals(np.full((4, 5), 20.0), np.full((4, 5), 3.0))
    image = form_image(materials, physics, pixel_spacing_mm=1.0)
    expected = (
        20.0 * mass_attenuation("soft_tissue", np.array([60.0]))[0]
        + 3.0 * mass_attenuation("bone", np.array([60.0]))[0]
    )
    np.testing.assert_allclose(image, expected, rtol=1e-5)


def test_polychromatic_beam_hardens() -> None:
    physics = XrayPhysics()
    soft = np.linspace(1.0, 40.0, 40)[None, :]  # g/cm² of soft tissue
    image = form_image(line_integrals(soft, 0.0), physics, pixel_spacing_mm=1.0)[0]
    per_gram = image / soft[0]
    assert np.all(np.diff(image) > 0)  # more tissue, brighter
    assert np.all(np.diff(per_gram) < 0)  # but less per gram: the beam hardens
    energies, _ = physics.spectrum()
    mu = mass_attenuation("soft_tissue", energies)
    assert np.all(per_gram < mu.max()) and np.all(per_gram > mu.min())


def test_polychromatic_image_is_the_energy_integrated_transmission() -> None:
    """An energy-integrating detector: each photon counts with its energy."""
    physics = XrayPhysics()
    soft, bone = np.array([[0.0, 5.0, 20.0, 35.0]]), np.array([[0.0, 0.0, 1.5, 4.0]])
    image = form_image(line_integrals(soft, bone), physics, pixel_spacing_mm=1.0)
    energies, fluence = physics.spectrum()
    mu_soft, mu_bone = mass_attenuation("soft_tissue", energies), mass_attenuation("bone", energies)
    for j in range(soft.shape[1]):
        signal = sum(
            n * e * np.exp(-(ms * soft[0, j] + mb * bone[0, j]))
            for n, e, ms, mb in zip(fluence, energies, mu_soft, mu_bone, strict=True)
        )
        expected = -np.log(signal / np.sum(fluence * energies))
        assert image[0, j] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_quantum_noise_is_poisson_and_unbiased() -> None:
    materials = line_integrals(np.full((200, 200), 15.0), 1.0)
    clean = form_image(materials, XrayPhysics(), pixel_spacing_mm=1.0)
    spreads = []
    for photons in (2_000.0, 32_000.0):
        noisy = form_image(
            materials,
            XrayPhysics(photons_per_pixel=photons),
            pixel_spacing_mm=1.0,
            rng=np.random.default_rng(0),
        )
        # -ln of Poisson counts is biased upwards by about 1/(2 n) for n expected counts
        counts = photons * np.exp(-clean.mean())
        assert 0 <= noisy.mean() - clean.mean() < 1.0 / counts
        spreads.append(noisy.std())
    # 16 times the photons, a quarter of the spread
    assert spreads[0] / spreads[1] == pytest.approx(4.0, rel=0.1)
    with pytest.raises(ValueError, match="random generator"):
        form_image(materials, XrayPhysics(photons_per_pixel=100.0), pixel_spacing_mm=1.0)


def test_scatter_lowers_contrast() -> None:
    soft = np.full((64, 64), 20.0)
    bone = np.zeros((64, 64))
    bone[24:40, 24:40] = 4.0
    materials = line_integrals(soft, bone)
    primary = form_image(materials, XrayPhysics(), pixel_spacing_mm=2.0)
    scattered = form_image(materials, XrayPhysics(scatter_to_primary=1.0), pixel_spacing_mm=2.0)
    contrast = primary[32, 32] - primary[5, 5]
    assert scattered[32, 32] - scattered[5, 5] < 0.8 * contrast
    assert scattered.mean() < primary.mean()
    # through a uniform slab the haze is uniform too, at the set scatter-to-primary ratio
    slab = line_integrals(soft, np.zeros_like(bone))
    plain = form_image(slab, XrayPhysics(), pixel_spacing_mm=2.0)
    hazy = form_image(slab, XrayPhysics(scatter_to_primary=0.5), pixel_spacing_mm=2.0)
    np.testing.assert_allclose(plain - hazy, np.log(1.5), rtol=1e-5)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"mode": "spectral"}, "physics mode must be one of"),
        ({"photons_per_pixel": -1.0}, "non-negative"),
        ({"energy_kev": 200.0}, "energy_kev must lie"),
    ],
)
def test_physics_settings_are_checked(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        XrayPhysics(**settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown physics setting"):
        XrayPhysics.from_dict({"kv": 80})
