"""Materials and mass density from Hounsfield units.

The segmentation into air / soft tissue / bone and the density conversion follow the piecewise
linear model used by physics-based DRR renderers: two lines through 1.03 g/cm³ at 0 HU, the
smaller of the two taken, clipped at zero.
"""

from __future__ import annotations

import numpy as np

AIR_MAX_HU = -800.0
SOFT_TISSUE_MAX_HU = 350.0
ADIPOSE_MAX_HU = -30.0
"""Soft tissue at or below this is counted as adipose tissue (the usual −190 to −30 HU window, its
lower end opened to the air boundary): a part of soft tissue, reported apart, rendered alike."""


def density_from_hu(hu: np.ndarray) -> np.ndarray:
    """Mass density in g/cm³ from HU: ``max(min(0.001029·HU + 1.03, 0.0005886·HU + 1.03), 0)``.

    Parameters
    ----------
    hu
        CT values in Hounsfield units, any shape.

    Returns
    -------
    np.ndarray
        float32 density in g/cm³, same shape.

    Examples
    --------
    >>> round(float(density_from_hu(np.array(0.0))), 4)
    1.03
    >>> round(float(density_from_hu(np.array(-1000.0))), 4)
    0.001
    """
    hu = np.asarray(hu, dtype=np.float32)
    rho = np.minimum(
        np.float32(0.001029) * hu + np.float32(1.03), np.float32(0.0005886) * hu + np.float32(1.03)
    )
    return np.maximum(rho, np.float32(0.0))


MATERIALS = ("air", "soft_tissue", "bone")
"""Material names in channel order: air ≤ −800 HU < soft tissue ≤ 350 HU < bone."""

METAL_HU = 3000
LOWEST_HU = -1024


def material_lut() -> tuple[np.ndarray, int]:
    """Per-material density (g/cm³) for every integer HU in ``[LOWEST_HU, METAL_HU]``.

    Returns a ``(n_hu, 4)`` float32 table whose columns are air, soft tissue, bone (density where
    the HU belongs to that material, else 0) and adipose tissue (density where the HU is soft tissue
    at or below :data:`ADIPOSE_MAX_HU`: a part of the soft-tissue column, not a fourth material; a
    voxel's density is the sum of the first three columns), and the HU of row 0.
    """
    hu = np.arange(LOWEST_HU, METAL_HU + 1, dtype=np.float32)
    rho = density_from_hu(hu)
    table = np.zeros((hu.size, 4), np.float32)
    table[:, 0] = np.where(hu <= AIR_MAX_HU, rho, 0.0)
    table[:, 1] = np.where((hu > AIR_MAX_HU) & (hu <= SOFT_TISSUE_MAX_HU), rho, 0.0)
    table[:, 2] = np.where(hu > SOFT_TISSUE_MAX_HU, rho, 0.0)
    table[:, 3] = np.where((hu > AIR_MAX_HU) & (hu <= ADIPOSE_MAX_HU), rho, 0.0)
    return table, LOWEST_HU
