"""The muscle catalogue: muscle names in a fixed order and, per label source, their label values."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from xraymuscle.errors import InputError
from xraymuscle.paths import config_file
from xraymuscle.typing import PathLikeStr

DEFAULT_CATALOG = "hip"


def did_you_mean(name: str, known: list[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class MuscleCatalog:
    """Ordered muscle names and the label values that make each muscle, per label source.

    Parameters
    ----------
    name
        The catalogue's name.
    muscles
        Muscle names; their order is the channel order everywhere downstream.
    sources
        ``{source: {muscle: (label values, ...)}}``; a source may lack some muscles.
    path
        The YAML file it came from.
    groups
        ``{group: (muscle, ...)}``: muscles whose summed volume (and mass) is also reported
        (``predict`` writes ``group_volume_ml__<group>``), such as the gluteal muscles of one
        side. Muscles that overlap in an AP view are measured better together than apart.
    """

    name: str
    muscles: tuple[str, ...]
    sources: dict[str, dict[str, tuple[int, ...]]]
    path: str | None = None
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.muscles)) != len(self.muscles):
            raise InputError("catalogue lists a muscle twice", self.path)
        for group, members in self.groups.items():
            if group in self.muscles:
                raise InputError(f"group {group!r} has the name of a muscle", self.path)
            unknown = [m for m in members if m not in self.muscles]
            if unknown:
                raise InputError(
                    f"group {group!r} names {unknown[0]!r}, which is not in the catalogue's muscle "
                    f"list{did_you_mean(unknown[0], list(self.muscles))}",
                    self.path,
                )
            if len(set(members)) != len(members) or len(members) < 2:
                raise InputError(f"group {group!r} needs two or more different muscles", self.path)
        for source, table in self.sources.items():
            for muscle, values in table.items():
                if muscle not in self.muscles:
                    raise InputError(
                        f"source {source!r} names muscle {muscle!r}, which is not in the "
                        f"catalogue's muscle list{did_you_mean(muscle, list(self.muscles))}",
                        self.path,
                    )
                if not values or any(int(v) != v or v <= 0 for v in values):
                    raise InputError(
                        f"source {source!r}, muscle {muscle!r}: label values must be positive "
                        f"integers, not {list(values)}",
                        self.path,
                    )

    @classmethod
    def load(cls, name_or_path: PathLikeStr = DEFAULT_CATALOG) -> MuscleCatalog:
        """Load a catalogue by preset name (``configs/muscles/<name>.yaml``) or YAML path."""
        path = config_file("muscles", str(name_or_path))
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
        return cls.from_dict(raw, path=path)

    @classmethod
    def from_dict(cls, raw: Any, *, path: PathLikeStr | None = None) -> MuscleCatalog:
        """Build from the parsed YAML mapping (keys ``muscles`` and ``sources``)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("muscles"), list):
            raise InputError("catalogue needs a 'muscles' list", path)
        sources_raw = raw.get("sources") or {}
        if not isinstance(sources_raw, dict):
            raise InputError("catalogue 'sources' must be a mapping", path)
        sources: dict[str, dict[str, tuple[int, ...]]] = {}
        for source, table in sources_raw.items():
            if not isinstance(table, dict):
                raise InputError(f"source {source!r} must map muscle names to label values", path)
            sources[str(source)] = {
                str(m): tuple(int(v) for v in (vals if isinstance(vals, list) else [vals]))
                for m, vals in table.items()
            }
        groups_raw = raw.get("groups") or {}
        if not isinstance(groups_raw, dict) or not all(isinstance(v, list) for v in groups_raw.values()):
            raise InputError("catalogue 'groups' must map group names to lists of muscles", path)
        return cls(
            name=str(raw.get("name", Path(str(path)).stem if path else "catalogue")),
            muscles=tuple(str(m) for m in raw["muscles"]),
            sources=sources,
            path=None if path is None else str(path),
            groups={str(g): tuple(str(m) for m in members) for g, members in groups_raw.items()},
        )

    def check_source(self, source: str) -> dict[str, tuple[int, ...]]:
        """The ``{muscle: label values}`` table of a source; an error names the known ones."""
        if source not in self.sources:
            known = sorted(self.sources)
            raise InputError(
                f"label source {source!r} is not in catalogue {self.name!r}; "
                f"known sources: {known}{did_you_mean(source, known)}"
            )
        return self.sources[source]

    def check_muscles(self, names: list[str]) -> list[str]:
        """Validate muscle names against the catalogue; an error lists the known names."""
        for name in names:
            if name not in self.muscles:
                raise InputError(
                    f"muscle {name!r} is not in catalogue {self.name!r}"
                    f"{did_you_mean(name, list(self.muscles))}; known muscles: {list(self.muscles)}"
                )
        return names

    def muscles_of(self, source: str) -> list[str]:
        """Muscles the source provides, in catalogue order."""
        table = self.check_source(source)
        return [m for m in self.muscles if m in table]

    def masks(self, labels: np.ndarray, source: str) -> dict[str, np.ndarray]:
        """Boolean mask per muscle of the source, from a label array (catalogue order)."""
        table = self.check_source(source)
        return {m: np.isin(labels, table[m]) for m in self.muscles if m in table}

    def mask_values(self, source: str) -> dict[str, int]:
        """For a folder of one mask per muscle named after it: the label value that stands for
        each muscle of the source (its first)."""
        table = self.check_source(source)
        return {m: table[m][0] for m in self.muscles if table.get(m)}

    def lookup(self, source: str, max_label: int) -> np.ndarray:
        """Array mapping each label value (0..max_label) to a channel index + 1 (0: none)."""
        table = self.check_source(source)
        lut = np.zeros(max(max_label, 0) + 1, dtype=np.int16)
        for channel, muscle in enumerate(self.muscles):
            for value in table.get(muscle, ()):
                if value <= max_label:
                    lut[value] = channel + 1
        return lut
