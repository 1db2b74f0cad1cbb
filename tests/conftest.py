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


# A recipe small enough to train in seconds on the CPU, for the training and prediction tests.
TINY_RECIPE = {
    "input_size": 64,
    "pixel_spacing_mm": 5.36,
    "base_channels": 4,
    "depth": 3,
    "batch_size": 4,
    "mc_samples": 4,
}


def phantom_drr(root: Path, n: int, seed: int, *, adipose: bool = False) -> Path:
    """A DRR dataset under ``root``: ``n`` 6 mm phantoms of ``seed``, two 128-pixel views each
    (``hip_ap_fast``), with the fat maps when ``adipose``."""
    from typer.testing import CliRunner

    from cli import app
    from xraymuscle.phantom.cohort import make_cohort

    cohort = make_cohort(n, root / "cohort", seed=seed, spacing=6.0, progress=False)
    out = root / "drr"
    args = [
        "generate-drr",
        "--cohort",
        str(cohort),
        "--out",
        str(out),
        "--views",
        "2",
        "--geometry",
        "hip_ap_fast",
    ]
    result = CliRunner().invoke(app, [*args, *(["--adipose"] if adipose else [])])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_drr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DRR dataset of four 6 mm phantoms, two 128-pixel views each."""
    return phantom_drr(tmp_path_factory.mktemp("tiny_drr"), 4, 3, adipose=True)
