"""Reading a safetensors weights file with one clear error for whatever is wrong with it.

Model folders, CycleGAN folders and training checkpoints all keep their tensors in safetensors.
A file cut short (a copy that stopped, a full disk) or one whose weights hold NaN (a run that
diverged) must be refused with the file's name and the problem, not with a traceback, and never
give a table of empty volumes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from xraymuscle.atomic import atomic_path
from xraymuscle.errors import InputError


def read_tensors(
    path: Path, *, sha256: str | None = None, described_as: str = "the recorded weights"
) -> dict[str, torch.Tensor]:
    """Every tensor in ``path``, on the CPU.

    ``sha256``, where the folder's metadata records one (:func:`write_tensors`), must be the file's:
    a reader that came between a writer's renames of the tensors and of the metadata, or a folder
    whose files come from two runs, is told so (``described_as`` names what the metadata describes).

    Raises
    ------
    InputError
        When the file is missing, cannot be read as safetensors, a floating-point tensor holds
        NaN or infinity (the message names the first such tensor), or its hash is not ``sha256``.
    """
    if not path.is_file():
        raise InputError("no such weights file", path)
    try:
        data = path.read_bytes()
        tensors = load(data)
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"not a readable safetensors file ({first})", path) from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"tensor {name} holds NaN or infinity ({bad} of {tensor.numel()} values)", path)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(
            f"not {described_as} (SHA-256 differs): a run may be writing the folder, "
            "or its files come from two runs",
            path,
        )
    return tensors


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write ``tensors`` to ``path`` under a temporary name, then rename; return the file's SHA-256,
    for the metadata written after it to record."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        return hashlib.sha256(tmp.read_bytes()).hexdigest()
