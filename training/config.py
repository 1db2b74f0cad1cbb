"""Typed training recipes, loaded from YAML (``configs/train/*.yaml``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


R = TypeVar("R", bound="_Recipe")


class _Recipe:
    """What the typed recipes share: checks on creation, JSON and YAML in and out."""

    def _checks(self) -> dict[str, bool]:
        """Each setting's name and whether its value is valid."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        bad = [k for k, ok in self._checks().items() if not ok]
        if bad:
            raise ValueError(f"invalid setting(s) {bad}: { ({k: getattr(self, k) for k in bad}) }")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """From a mapping; unknown keys are refused with their names."""
        return _build(cls, data)

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a YAML recipe."""
        return cls.from_dict(_read_mapping(path))


@dataclass(frozen=True)
class AugmentConfig(_Recipe):
    """Augmentation of training radiographs (maps follow every geometric change)."""

    flip: float = 0.5
    rotate_deg: float = 5.0
    shift: float = 0.04
    gamma: tuple[float, float] = (0.7, 1.5)
    brightness: float = 0.15
    contrast: float = 0.25
    noise_sd: float = 0.03
    blur: float = 0.3
    clahe: float = 0.3

    def _checks(self) -> dict[str, bool]:
        lo, hi = self.gamma
        return {
            "flip": 0.0 <= self.flip <= 1.0,
            "rotate_deg": 0.0 <= self.rotate_deg <= 180.0,
            "shift": 0.0 <= self.shift < 1.0,
            "gamma": 0.0 < lo <= hi,
            "brightness": 0.0 <= self.brightness < 1.0,
            "contrast": 0.0 <= self.contrast < 1.0,
            "noise_sd": self.noise_sd >= 0.0,
            "blur": 0.0 <= self.blur <= 1.0,
            "clahe": 0.0 <= self.clahe <= 1.0,
        }


@dataclass(frozen=True)
class DecompositionConfig(_Recipe):
    """The decomposition network's recipe; see ``configs/train/decomposition.yaml``."""

    input_size: int = 128
    pixel_spacing_mm: float = 2.68
    base_channels: int = 8
    depth: int = 5
    dropout: float = 0.1
    mass_head: bool = True
    map_scale_mm: float = 50.0
    batch_size: int = 16
    epochs: int = 120
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    volume_loss_weight: float = 0.5
    aleatoric_weight: float = 0.1
    materials_weight: float = 0.0  # a training-only head for the soft-tissue and bone maps (0: none)
    materials_adipose: bool = False  # the materials head learns the fat map too (generate-drr --adipose)
    mc_samples: int = 10
    mc_mirror: bool = True  # half the dropout draws on the mirrored image, left and right swapped back
    val_fraction: float = 0.1
    seed: int = 0
    loader_workers: int = 0  # processes preparing batches (augmentation); 0: in the training process
    cache_mb: float = 2048.0  # memory for training samples kept between epochs; the rest are re-read
    average_epochs: int = 0  # average the weights of the run's last N epochs (0: none); kept if better
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def _checks(self) -> dict[str, bool]:
        checks = {
            "input_size": self.input_size >= 32 and self.input_size % (2 ** (self.depth - 1)) == 0,
            "pixel_spacing_mm": self.pixel_spacing_mm > 0,
            "base_channels": self.base_channels >= 1,
            "depth": 2 <= self.depth <= 6,
            "dropout": 0.0 <= self.dropout < 1.0,
            "map_scale_mm": self.map_scale_mm > 0,
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "learning_rate": self.learning_rate > 0,
            "l1_weight": self.l1_weight >= 0 and self.l1_weight + self.l2_weight > 0,
            "l2_weight": self.l2_weight >= 0,
            "aleatoric_weight": self.aleatoric_weight >= 0,
            "materials_weight": self.materials_weight >= 0,
            "mc_samples": self.mc_samples >= 2,
            "val_fraction": 0.0 < self.val_fraction < 1.0,
            "loader_workers": self.loader_workers >= 0,
            "cache_mb": self.cache_mb >= 0,
            "average_epochs": self.average_epochs >= 0,
            "seed": 0 <= self.seed < 2**32,
        }
        return checks


@dataclass(frozen=True)
class CycleGanConfig(_Recipe):
    """The CycleGAN's recipe; see ``configs/train/cyclegan.yaml``."""

    crop_size: int = 128
    base_channels: int = 16
    residual_blocks: int = 6
    global_skip: bool = True
    upsample: str = "resize"
    disc_channels: int = 32
    disc_layers: int = 3
    batch_size: int = 4
    epochs: int = 20
    iterations_per_epoch: int = 100
    learning_rate: float = 2e-4
    beta1: float = 0.5
    decay_from: float = 0.5
    cycle_weight: float = 10.0
    identity_weight: float = 0.0  # off with the global skip (it holds the generators at the identity)
    gc_weight: float = 1.0
    pool_size: int = 50
    seed: int = 0

    def _checks(self) -> dict[str, bool]:
        checks = {
            "crop_size": self.crop_size >= 32 and self.crop_size % 4 == 0,
            "base_channels": self.base_channels >= 1,
            "residual_blocks": self.residual_blocks >= 0,
            "upsample": self.upsample in ("transpose", "resize"),
            "disc_channels": self.disc_channels >= 1,
            "disc_layers": 1 <= self.disc_layers <= 5,
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "iterations_per_epoch": self.iterations_per_epoch >= 1,
            "learning_rate": self.learning_rate > 0,
            "beta1": 0 <= self.beta1 < 1,
            "decay_from": 0 <= self.decay_from <= 1,
            "cycle_weight": self.cycle_weight >= 0,
            "identity_weight": self.identity_weight >= 0,
            "gc_weight": self.gc_weight >= 0,
            "pool_size": self.pool_size >= 0,
            "seed": 0 <= self.seed < 2**32,
        }
        return checks


def _read_mapping(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    except UnicodeDecodeError:
        raise ValueError("not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ValueError("a training recipe must be a YAML mapping")
    return data


def _number(value: Any) -> bool:
    """A number, or text that reads as one: YAML 1.1 takes ``1e-3`` (no dot) for a string."""
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what a setting of each declared type may be given as (a bool is not taken for a number)
_KINDS: dict[str, tuple[str, Any]] = {
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", _number),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("text", lambda v: isinstance(v, str)),
}


def _build(cls: type[T], data: dict[str, Any]) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(fields)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        kind = str(fields[name].type)
        if name == "augment":
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"augment must be a mapping of settings, not {value!r}")
            values[name] = _build(AugmentConfig, dict(value or {}))
        elif name == "gamma":
            pair = value if isinstance(value, (list, tuple)) else ()
            if len(pair) != 2 or not all(_number(v) for v in pair):
                raise ValueError(f"gamma must be two numbers [low, high], not {value!r}")
            values[name] = (float(pair[0]), float(pair[1]))
        elif kind in _KINDS:
            what, accepts = _KINDS[kind]
            if not accepts(value):
                raise ValueError(f"{name} must be {what}, not {value!r}")
            values[name] = float(value) if kind == "float" else value
        else:
            values[name] = value
    return cls(**values)
