"""Density from HU: the two-line model, checked at its anchor points and for monotonicity."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from drr.materials import density_from_hu


def test_anchor_points() -> None:
    np.testing.assert_allclose(
        density_from_hu(np.array([0.0, -1000.0, 1000.0, -3000.0])), [1.03, 0.001, 1.6186, 0.0], atol=1e-6
    )


@given(st.floats(-3000, 4000), st.floats(0, 500))
def test_monotonic_and_non_negative(hu: float, step: float) -> None:
    lo, hi = density_from_hu(np.array([hu, hu + step], np.float32))
    assert 0 <= lo <= hi + 1e-6
