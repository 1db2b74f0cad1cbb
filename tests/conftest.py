"""Shared fixtures: the real data folder (skipped with a reason when absent) and tiny volumes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from xraymuscle.paths import shared_data_dir

if TYPE_CHECKING:
    from xraymuscle.volume import Volume


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "ct").is_dir() or not (root / "xray").is_dir():
        pytest.skip(f"real data not found at {root} (set XRAYMUSCLE_DATA)")
    return root


@pytest.fixture(scope="session")
def real_ct_dir(shared_data: Path) -> Path:
    return shared_data / "ct" / "totalsegmentator-example"


@pytest.fixture(scope="session")
def real_xray_dir(shared_data: Path) -> Path:
    return shared_data / "xray" / "pelvis-ap-ddh"


def oblique_direction() -> np.ndarray:
    """A proper rotation that is not axis-aligned, to catch readers that drop direction cosines."""
    c, s = np.cos(0.3), np.sin(0.3)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


@pytest.fixture()
def tiny_ct() -> Volume:
    from xraymuscle.volume import Volume  # imported here: the CUDA tests run without SimpleITK

    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1500, size=(6, 7, 8)).astype(np.int16)
    return Volume(arr, (0.8, 0.9, 2.5), (-10.0, 20.0, 30.0), oblique_direction())
