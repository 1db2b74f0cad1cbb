"""Where the project's configuration files and the shared real data live, and how paths are shown."""

from __future__ import annotations

import os
from pathlib import Path

from xraymuscle.errors import InputError

_REPO_ROOT = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The ``configs/`` folder (``XRAYMUSCLE_CONFIGS`` overrides the one beside the package)."""
    return Path(os.environ.get("XRAYMUSCLE_CONFIGS", _REPO_ROOT / "configs"))


def config_file(kind: str, name_or_path: str) -> Path:
    """Resolve a preset name (``hip``) in ``configs/<kind>/`` or an explicit YAML path."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise InputError("no such file", candidate)
        return candidate
    folder = config_dir() / kind
    preset = folder / f"{name_or_path}.yaml"
    if not preset.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise InputError(f"unknown {kind} preset {name_or_path!r}; known presets: {known}")
    return preset


def shared_data_dir() -> Path:
    """The shared real data (``XRAYMUSCLE_DATA``, default ``../shared/data`` from the repo)."""
    return Path(os.environ.get("XRAYMUSCLE_DATA", _REPO_ROOT.parent / "shared" / "data"))


def default_model_dir() -> Path:
    """The shipped model (``XRAYMUSCLE_MODEL`` overrides it): trained on phantoms only."""
    return Path(os.environ.get("XRAYMUSCLE_MODEL", Path(__file__).resolve().parent / "models" / "default"))


def shown(path: str) -> str:
    """A path as text can hold it: itself, or, for a file name that is not valid UTF-8 (an old
    archive's Latin-1 name, say), with each byte that does not decode written as ``\\xNN``."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


def library_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text for the compiled image libraries, which cannot open a path that is not
    valid UTF-8 (one aborts the process): such a path is refused with a clear error instead."""
    text = os.fspath(path)
    if shown(text) != text:
        raise InputError(
            "the path is not valid UTF-8, which the image library cannot open; rename it", shown(text)
        )
    return text
