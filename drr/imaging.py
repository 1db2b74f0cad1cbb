"""From material line integrals to a radiograph: attenuation, quantum noise, scatter, log transform.

``polychromatic``: the energy-integrating detector signal
``I = Σ_E N(E)·E·exp(−Σ_m (μ/ρ)_m(E)·L_m)`` over the tube spectrum's bins, relative to the
unattenuated ``I0``. ``monochromatic``: one energy, where ``−ln(I/I0)`` is the plain weighted sum
``Σ_m (μ/ρ)_m(E)·L_m`` (fast, no exponentials). Then, optionally, Poisson quantum noise at a given
exposure (photons per pixel before the patient) and a scatter estimate (a wide blur of the primary
scaled to a scatter-to-primary ratio), and finally ``−ln(I/I0)``: bone bright, as a radiograph
is displayed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from drr.attenuation import mass_attenuation
from drr.materials import MATERIALS
from drr.spectra import mean_energy, tube_spectrum

MODES = ("polychromatic", "monochromatic")


@dataclass(frozen=True)
class XrayPhysics:
    """How line integrals become an image.

    Parameters
    ----------
    mode
        ``polychromatic`` or ``monochromatic``.
    kvp, filtration_mm_al
        Tube voltage (kV) and total aluminium filtration (mm) of the spectrum.
    energy_kev
        The energy of monochromatic mode; ``None`` takes the spectrum's mean energy.
    photons_per_pixel
        Exposure: photons reaching a detector pixel with nothing in the beam; 0 for no noise.
    scatter_to_primary
        Scatter-to-primary ratio at the image centre for the scatter estimate; 0 for none.
    scatter_sigma_mm
        Width (standard deviation at the detector, mm) of the scatter blur.
    """

    mode: str = "polychromatic"
    kvp: float = 80.0
    filtration_mm_al: float = 2.5
    energy_kev: float | None = None
    photons_per_pixel: float = 0.0
    scatter_to_primary: float = 0.0
    scatter_sigma_mm: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"physics mode must be one of {MODES}, not {self.mode!r}")
        if self.energy_kev is not None and not (0 < self.energy_kev <= self.kvp):
            raise ValueError(f"energy_kev must lie in (0, kvp], not {self.energy_kev}")
        for key in ("photons_per_pixel", "scatter_to_primary", "filtration_mm_al"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a non-negative number, not {value}")
        if self.scatter_sigma_mm <= 0:
            raise ValueError(f"scatter_sigma_mm must be positive, not {self.scatter_sigma_mm}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> XrayPhysics:
        """From a preset's ``physics`` block; unknown keys are refused."""
        data = dict(data or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown physics setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return asdict(self)

    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """Energies (keV) and normalised fluence used by this setting."""
        if self.mode == "monochromatic" and self.energy_kev is not None:
            return np.array([self.energy_kev]), np.array([1.0])
        energies, fluence = tube_spectrum(self.kvp, filtration_mm_al=self.filtration_mm_al)
        if self.mode == "monochromatic":
            return np.array([mean_energy(energies, fluence)]), np.array([1.0])
        return energies, fluence


def form_image(
    materials: np.ndarray,
    physics: XrayPhysics,
    *,
    pixel_spacing_mm: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The log-transformed radiograph ``−ln(I/I0)`` from material line integrals.

    Parameters
    ----------
    materials
        ``(..., 3, H, W)`` line integrals of density (g/cm²) for air, soft tissue and bone.
    physics
        Spectrum, noise and scatter settings.
    pixel_spacing_mm
        Detector pixel pitch, for the scatter blur's width.
    rng
        Random generator for quantum noise (required when ``photons_per_pixel > 0``).

    Returns
    -------
    np.ndarray
        float32 ``(..., H, W)``.
    """
    materials = np.asarray(materials, dtype=np.float64)
    if materials.ndim < 3 or materials.shape[-3] != len(MATERIALS):
        raise ValueError(f"materials must be (..., {len(MATERIALS)}, H, W), not {materials.shape}")
    energies, fluence = physics.spectrum()
    mu = np.stack([mass_attenuation(m, energies) for m in MATERIALS])  # (3, E)
    if physics.mode == "monochromatic":
        attenuation = np.einsum("m,...mhw->...hw", mu[:, 0], materials)
        primary = np.exp(-attenuation)
        photons = primary
    else:
        weights = fluence * energies
        signal = np.zeros(materials.shape[:-3] + materials.shape[-2:])
        photons = np.zeros_like(signal)
        for e in range(len(energies)):
            transmitted = np.exp(-np.einsum("m,...mhw->...hw", mu[:, e], materials))
            signal += weights[e] * transmitted
            photons += fluence[e] * transmitted
        primary = signal / weights.sum()
        if physics.photons_per_pixel <= 0 and physics.scatter_to_primary <= 0:
            return (-np.log(np.maximum(primary, 1e-30))).astype(np.float32)
    intensity = primary
    if physics.scatter_to_primary > 0:
        sigma = physics.scatter_sigma_mm / pixel_spacing_mm
        axes = (0,) * (primary.ndim - 2) + (sigma, sigma)
        blurred = ndimage.gaussian_filter(primary, axes, mode="nearest")
        centre = blurred[..., blurred.shape[-2] // 2, blurred.shape[-1] // 2]
        # Scatter is a smooth haze whose ratio to the primary is set at the image centre.
        scale = physics.scatter_to_primary * primary[..., primary.shape[-2] // 2, primary.shape[-1] // 2]
        scale = scale / np.maximum(centre, 1e-30)
        intensity = primary + blurred * scale[..., None, None]
    if physics.photons_per_pixel > 0:
        if rng is None:
            raise ValueError("quantum noise needs a random generator (rng)")
        expected = physics.photons_per_pixel * photons * (intensity / np.maximum(primary, 1e-30))
        counts = rng.poisson(np.maximum(expected, 0.0))
        intensity = intensity * np.maximum(counts, 0.5) / np.maximum(expected, 1e-12)
    return (-np.log(np.maximum(intensity, 1e-30))).astype(np.float32)
