"""Type aliases shared across the project."""

from __future__ import annotations

from os import PathLike
from typing import Union

import numpy as np
import numpy.typing as npt

PathLikeStr = Union[str, "PathLike[str]"]
FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.integer]
Triple = tuple[float, float, float]
