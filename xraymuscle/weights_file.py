"""Reading a safetensors weights file with one clear error for whatever is wrong with it.

Model folders, CycleGAN folders and training checkpoints all keep their tensors in safetensors.
A file cut short (a copy that stopped, a full disk) or one whose weights hold NaN (a run that
diverged) must be refused with the file's name and the problem, not with a traceback, and never
give a table of empty volumes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from xraymuscle.errors import InputError


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor in ``path``, on the CPU.

    Raises
    ------
    InputError
        When the file is missing, cannot be read as safetensors, or a floating-point tensor holds
        NaN or infinity (the message names the first such tensor).
    """
    if not path.is_file():
        raise InputError("no such weights file", path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"not a readable safetensors file ({first})", path) from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"tensor {name} holds NaN or infinity ({bad} of {tensor.numel()} values)", path)
    return tensors
