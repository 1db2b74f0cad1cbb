"""Mass attenuation coefficients of the renderer's materials, from the elemental database.

Each material is a mixture given by elemental mass fractions (ICRU Report 44 compositions for soft
tissue and cortical bone, dry air near sea level); its mass attenuation coefficient is the
fraction-weighted sum of the elements' total cross sections (coherent scattering included), taken
from ``xraydb``.
"""

from __future__ import annotations

import functools

import numpy as np

# Elemental mass fractions (they sum to 1 within rounding).
COMPOSITIONS: dict[str, dict[str, float]] = {
    "air": {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827},
    "soft_tissue": {
        "H": 0.102,
        "C": 0.143,
        "N": 0.034,
        "O": 0.708,
        "Na": 0.002,
        "P": 0.003,
        "S": 0.003,
        "Cl": 0.002,
        "K": 0.003,
    },
    "bone": {
        "H": 0.034,
        "C": 0.155,
        "N": 0.042,
        "O": 0.435,
        "Na": 0.001,
        "Mg": 0.002,
        "P": 0.103,
        "S": 0.003,
        "Ca": 0.225,
    },
}


def mass_attenuation(material: str, energies_kev: np.ndarray) -> np.ndarray:
    """Mass attenuation coefficient μ/ρ (cm²/g) of ``material`` at ``energies_kev``.

    Examples
    --------
    >>> mu = mass_attenuation("soft_tissue", np.array([60.0]))
    >>> 0.19 < float(mu[0]) < 0.21  # about water's 0.206 cm²/g at 60 keV
    True
    """
    if material not in COMPOSITIONS:
        raise ValueError(f"unknown material {material!r}; known: {sorted(COMPOSITIONS)}")
    energies = tuple(float(e) for e in np.atleast_1d(energies_kev))
    if min(energies) <= 0:
        raise ValueError(f"energies must be positive keV, not {min(energies)}")
    return np.array(_cached(material, energies))


@functools.lru_cache(maxsize=64)
def _cached(material: str, energies_kev: tuple[float, ...]) -> tuple[float, ...]:
    import xraydb

    ev = np.array(energies_kev) * 1000.0
    total = np.zeros(len(ev))
    fractions = COMPOSITIONS[material]
    norm = sum(fractions.values())
    for element, fraction in fractions.items():
        total += fraction / norm * np.asarray(xraydb.mu_elam(element, ev), dtype=np.float64)
    return tuple(total)
