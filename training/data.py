"""Training data from a DRR dataset: images and maps on the network's grid, with augmentation.

Images are normalised per image by robust percentiles (the same function serves prediction), so
the network sees the same range whatever the source's bit depth or display transform. Maps keep
their meaning under every change used here: flips swap each left muscle's channel with its right
twin, rotations and shifts move image and maps together and keep pixel area (so volumes stay
true); nothing rescales the image.
"""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training.config import AugmentConfig
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.model_grid import NORMALISE_PERCENTILES, GridSpec, fit_to_grid, normalise

__all__ = [
    "NORMALISE_PERCENTILES",
    "DrrTrainingSet",
    "GridSpec",
    "collect",
    "fit_to_grid",
    "material_maps",
    "normalise",
    "twin_order",
    "worker_init",
]

# Channels of the dataset's ``materials`` array a materials head learns: soft tissue and bone
# (air is nothing but the field's edge), and the g/cm² they are divided by (a typical line integral).
MATERIAL_CHANNELS = (1, 2)
MATERIAL_SCALE_G_CM2 = 10.0


def material_maps(materials: bool, adipose: bool) -> int:
    """How many maps a materials head learns: none, or soft tissue and bone (and fat)."""
    return (len(MATERIAL_CHANNELS) + int(adipose)) if materials else 0


def twin_order(muscles: list[str]) -> list[int]:
    """For every channel, the channel of its left/right twin (itself if it has none)."""
    index = {m: i for i, m in enumerate(muscles)}
    order = []
    for m in muscles:
        if m.endswith("_left"):
            order.append(index.get(m[: -len("_left")] + "_right", index[m]))
        elif m.endswith("_right"):
            order.append(index.get(m[: -len("_right")] + "_left", index[m]))
        else:
            order.append(index[m])
    return order


class DrrTrainingSet(Dataset):
    """Samples of a DRR dataset as tensors on the network's grid.

    Each item: ``image (1, S, S)`` normalised; ``target (2K or K, S, S)`` maps (and mass maps)
    divided by ``map_scale_mm``; ``valid (K,)`` 1 where the muscle has labels in that case;
    ``volume (K,)`` the true map integral in ml on this grid (what the network is asked for).
    With ``materials``, also ``materials (2, S, S)``: the soft-tissue and bone density line
    integrals divided by ``MATERIAL_SCALE_G_CM2`` (mirrored with the image, never swapped); with
    ``adipose`` as well, a third channel, the fat's (the sample's ``adipose``).

    Samples read and resampled once are kept in memory, up to ``cache_mb`` megabytes in all
    (every epoch then costs only augmentation); the rest are read from disk each time.
    """

    def __init__(
        self,
        data: DrrDataset,
        indices: list[int],
        grid: GridSpec,
        *,
        map_scale_mm: float,
        mass: bool,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache_mb: float = 2048.0,
        materials: bool = False,
        adipose: bool = False,
    ) -> None:
        self.data = data
        self.materials = materials
        self.adipose = materials and adipose
        self.indices = list(indices)
        self.grid = grid
        self.map_scale = map_scale_mm
        self.mass = mass
        self.twins = twin_order(data.muscles)
        spacing = float(data.info.get("pixel_spacing_mm", 0) or 0)
        if spacing <= 0:
            raise InputError("dataset.json gives no pixel_spacing_mm", data.root / "dataset.json")
        self.scale = spacing / grid.spacing_mm
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.pipeline = _pipeline(augment, seed) if augment is not None else None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._cache_left = int(cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.indices)

    def preload(self) -> None:
        """Read every sample into the cache now (before worker processes fork and share it)."""
        for i in range(len(self)):
            if i not in self._cache and self._cache_left > 0:
                self.raw(i)

    def reseed(self, seed: int) -> None:
        """New random streams for flips and the augmentation pipeline (one per loader process)."""
        self.rng = np.random.default_rng(seed)
        if self.augment is not None:
            self.pipeline = _pipeline(self.augment, seed)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``(S, S)``, maps ``(2K|K [+2|3], S, S)`` and validity ``(K,)``, before augmentation.

        Maps in mm, mass maps in mm·g/cm³, then (with ``materials``) soft tissue and bone (and
        with ``adipose`` fat) in g/cm².
        """
        cached = self._cache.get(i)
        if cached is None:
            cached = self._read(i)
            size = sum(a.nbytes for a in cached)
            if size <= self._cache_left:
                self._cache[i] = cached
                self._cache_left -= size
        return cached[0].copy(), cached[1].copy(), cached[2].copy()

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        row = self.data.rows[self.indices[i]]
        keys: tuple[str, ...] = ("image", "maps", "mass_maps") if self.mass else ("image", "maps")
        keys += ("materials",) if self.materials else ()
        keys += ("adipose",) if self.adipose else ()
        sample = self.data.sample(self.indices[i], keys=keys)
        k = len(self.data.muscles)
        if sample["maps"].ndim != 3 or sample["maps"].shape[0] != k:
            raise InputError(
                f"maps have shape {sample['maps'].shape}, expected {k} channels (dataset.json's muscles)",
                self.data.root / row["file"],
            )
        stack = [sample["image"][None], sample["maps"]] + ([sample["mass_maps"]] if self.mass else [])
        if self.materials:
            found = sample["materials"]  # a sample without them was refused by the reader
            if found.ndim != 3 or found.shape[0] <= max(MATERIAL_CHANNELS):
                raise InputError(
                    f"the recipe learns material maps, but the sample's materials are {found.shape}, "
                    "expected (3, H, W)",
                    self.data.root / row["file"],
                )
            stack.append(found[list(MATERIAL_CHANNELS)])
        if self.adipose:
            found = sample["adipose"]
            if found.shape != sample["image"].shape:
                raise InputError(
                    f"the sample's adipose map is {found.shape}, not the image's {sample['image'].shape}",
                    self.data.root / row["file"],
                )
            stack.append(found[None])
        fitted = fit_to_grid(np.concatenate(stack).astype(np.float32), self.scale, self.grid.size)
        valid = np.array([math.isfinite(row[f"volume_ml__{m}"]) for m in self.data.muscles], np.float32)
        return fitted[0], fitted[1:], valid

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, maps, valid = self.raw(i)
        image = normalise(image)
        if self.pipeline is not None and self.augment is not None:
            if self.rng.random() < self.augment.flip:
                image = image[:, ::-1]
                k = len(self.twins)
                order = self.twins + ([t + k for t in self.twins] if self.mass else [])
                order += list(range(len(order), len(maps)))  # material maps: mirrored only
                maps = maps[order, :, ::-1]
                valid = valid[self.twins]
            out = self.pipeline(
                image=np.ascontiguousarray(image), mask=np.ascontiguousarray(maps.transpose(1, 2, 0))
            )
            image, maps = out["image"], out["mask"].transpose(2, 0, 1)
        maps = np.ascontiguousarray(maps, dtype=np.float32)
        k = len(self.data.muscles)
        volume = maps[:k].sum(axis=(1, 2)) * self.grid.pixel_area_mm2 / 1000.0
        n_maps = k * (2 if self.mass else 1)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "target": torch.from_numpy(maps[:n_maps] / self.map_scale),
            "valid": torch.from_numpy(valid),
            "volume": torch.from_numpy(volume.astype(np.float32)),
        }
        if self.materials:
            item["materials"] = torch.from_numpy(np.ascontiguousarray(maps[n_maps:] / MATERIAL_SCALE_G_CM2))
        return item


def worker_init(worker_id: int) -> None:
    """``DataLoader`` hook: each loader process draws its own augmentations.

    Its seed comes from the loader's seeded generator, so a run is reproducible for a given
    number of processes, and no two processes repeat each other's flips and warps.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, DrrTrainingSet):
        info.dataset.reseed(int(info.seed % 2**32))


class _Intensity(A.ImageOnlyTransform):
    """CLAHE on an 8-bit copy of a 0–1 float image, returned as float (the maps are untouched)."""

    def __init__(self, p: float) -> None:
        super().__init__(p=p)
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        eight = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return (self._clahe.apply(eight).astype(np.float32) / 255.0).astype(np.float32)


def _pipeline(cfg: AugmentConfig, seed: int) -> A.Compose:
    lo, hi = cfg.gamma
    steps: list[A.BasicTransform] = [
        A.Affine(
            rotate=(-cfg.rotate_deg, cfg.rotate_deg),
            translate_percent=(-cfg.shift, cfg.shift),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
            p=0.8,
        )
    ]
    # intensity changes only where the recipe asks for them (each costs time per sample)
    if (lo, hi) != (1.0, 1.0):
        steps.append(A.RandomGamma(gamma_limit=(100 * lo, 100 * hi), p=0.5))
    if cfg.brightness or cfg.contrast:
        steps.append(
            A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=0.5)
        )
    if cfg.blur:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur))
    if cfg.clahe:
        steps.append(_Intensity(p=cfg.clahe))
    if cfg.noise_sd:
        steps.append(A.GaussNoise(std_range=(0.0, cfg.noise_sd), p=0.5))
    return A.Compose(steps, seed=seed)


def collect(dataset: DrrTrainingSet) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """All of a (non-augmented) set at once: images, true volumes (ml), masses (g), validity."""
    images, volumes, masses, valid = [], [], [], []
    k = len(dataset.data.muscles)
    for i in range(len(dataset)):
        item = dataset[i]
        images.append(item["image"])
        volumes.append(item["volume"].numpy())
        if dataset.mass:
            target = item["target"].numpy()[k:] * dataset.map_scale
            masses.append(target.sum(axis=(1, 2)) * dataset.grid.pixel_area_mm2 / 1000.0)
        else:
            masses.append(np.full(k, np.nan))
        valid.append(item["valid"].numpy() > 0)
    return torch.stack(images), np.array(volumes), np.array(masses), np.array(valid)
