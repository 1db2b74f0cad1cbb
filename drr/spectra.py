"""X-ray tube spectra from a physical tube model (``spekpy``), binned for rendering."""

from __future__ import annotations

import functools

import numpy as np


def tube_spectrum(
    kvp: float = 80.0,
    *,
    filtration_mm_al: float = 2.5,
    anode_angle_deg: float = 12.0,
    bin_kev: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Photon fluence of a tungsten-anode tube, in energy bins.

    Parameters
    ----------
    kvp
        Tube voltage, kV (a pelvis radiograph is typically 70–90 kVp).
    filtration_mm_al
        Total filtration in mm of aluminium.
    anode_angle_deg
        Anode angle, degrees.
    bin_kev
        Width of the returned energy bins, keV.

    Returns
    -------
    energies, fluence
        Bin centres (keV) and the relative photon fluence per bin, normalised to sum to 1; bins
        with no fluence are dropped.
    """
    if not 20.0 <= kvp <= 150.0:
        raise ValueError(f"kvp must be between 20 and 150 kV, not {kvp}")
    if filtration_mm_al < 0 or bin_kev <= 0:
        raise ValueError(f"filtration and bin width must be positive, not {filtration_mm_al}, {bin_kev}")
    energies, fluence = _spectrum(float(kvp), float(filtration_mm_al), float(anode_angle_deg))
    edges = np.arange(0.0, kvp + bin_kev, bin_kev)
    which = np.clip(np.digitize(energies, edges) - 1, 0, len(edges) - 2)
    binned = np.bincount(which, weights=fluence, minlength=len(edges) - 1)
    weighted = np.bincount(which, weights=fluence * energies, minlength=len(edges) - 1)
    keep = binned > 1e-6 * binned.sum()
    centres = weighted[keep] / binned[keep]  # fluence-weighted mean energy of each bin
    return centres, binned[keep] / binned[keep].sum()


def mean_energy(energies: np.ndarray, fluence: np.ndarray) -> float:
    """Fluence-weighted mean energy, keV."""
    return float(np.sum(energies * fluence) / np.sum(fluence))


@functools.lru_cache(maxsize=16)
def _spectrum(kvp: float, filtration: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    import spekpy

    spectrum = spekpy.Spek(kvp=kvp, th=angle, dk=0.5)
    if filtration > 0:
        spectrum.filter("Al", filtration)
    energies, fluence = spectrum.get_spectrum()
    return np.asarray(energies, dtype=np.float64), np.asarray(fluence, dtype=np.float64)
