"""Training the decomposition network: radiograph → per-muscle maps, with MC-dropout calibration.

Loss: L1 and squared error between predicted and true maps (divided by the recipe's map scale),
plus, per muscle, the absolute error of the map's integral relative to the true volume (the
intensity-sum term); muscles a case has no labels for are masked. The squared error matters: L1
alone is minimised by the median map, which for a thin muscle whose position varies is empty,
leaving the intensity-sum term to spread the volume thinly over the image; the mean map that the
squared error asks for integrates to the mean volume. With a variance head, the Gaussian negative
log-likelihood of each relative volume error (detached) under its predicted variance is added.
With ``materials_weight``, a training-only head also learns the DRR's soft-tissue and bone density
line integrals (L1 and squared error): the network is taught to take the whole radiograph apart,
the bone over the muscles included, not the muscles alone.
Validation after every epoch (per-muscle volume MAPE and Pearson r, dropout off); the best epoch
is kept. With ``average_epochs``, the weights of the run's last epochs are also averaged
(:mod:`training.weight_average`), and the average replaces the best epoch when its validation
MAPE is lower (``model.json``'s ``training.weight_average`` says which). At the end, on the
validation set with dropout on: the per-muscle scale that makes the 95 % interval cover 95 %,
the coefficient-of-variation threshold for ``uncertain`` (:mod:`training.calibration`), and the
out-of-distribution statistics; all stored in ``model.json``. With ``mc_mirror`` the draws are
made as inference makes them (half on the mirrored image) and each left/right pair shares its
scale and threshold.

Resumable (``checkpoint/`` holds the last epoch's weights and optimiser state and the best epoch's
weights as safetensors, and its state as JSON; a moved model folder resumes), seeded, mixed
precision on CUDA, several GPUs through ``torchrun`` (DDP).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import warnings
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from training.calibration import spread_calibration
from training.checkpoint import load_checkpoint, module_state, read_info, save_checkpoint
from training.config import DecompositionConfig
from training.data import (
    NORMALISE_PERCENTILES,
    DrrTrainingSet,
    GridSpec,
    collect,
    material_maps,
    worker_init,
)
from training.unet import BayesianUNet
from training.weight_average import CHECKPOINT_NAME, WeightAverage, window_start
from xraymuscle import __version__
from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.inference import image_features
from xraymuscle.metrics import volume_metrics
from xraymuscle.model import PHANTOM_NOTICE, save_model
from xraymuscle.ood import OodModel
from xraymuscle.run_lock import locks_output
from xraymuscle.weights_file import read_tensors

# the best epoch's weights, in the checkpoint folder (the last epoch's are in training.checkpoint.TENSORS)
BEST = "best.safetensors"
# the per-muscle gain's logarithm is bounded to ±3 (a factor of 20) in networks trained here
GAIN_BOUND = 3.0
# training images whose features set the out-of-distribution statistics (xraymuscle/ood.py): the
# whitening estimates the correlation of some 250 features, which 400 images left loose
OOD_TRAINING_IMAGES = 1000


@dataclass
class TrainSummary:
    """What a training run did."""

    out: Path
    epochs_run: int = 0
    best_epoch: int = -1
    best_mape: float = math.inf
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    weight_average: dict[str, Any] | None = None


def held_out_cases(cases: Collection[str], fraction: float, seed: int) -> set[str]:
    """The cases :func:`split_by_case` holds out for validation: ``fraction`` of them (at least
    one, and one fewer than all), ranked by a hash of the seed and the case's name, so that the
    split depends on nothing else (a model's validation cases can be named without its data)."""
    ranked = sorted(sorted(set(cases)), key=lambda c: zlib.crc32(f"{seed}:{c}".encode()))  # ties by name
    n_val = min(len(ranked) - 1, max(1, round(fraction * len(ranked))))
    return set(ranked[:n_val])


def split_by_case(data: DrrDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices for training and validation; whole cases go to one side (no view leaks)."""
    cases = sorted({r["case_id"] for r in data.rows})
    if len(cases) < 2:
        raise InputError("needs at least two cases to hold one out for validation (or give --val)", data.root)
    val = held_out_cases(cases, fraction, seed)
    train = [i for i, r in enumerate(data.rows) if r["case_id"] not in val]
    held = [i for i, r in enumerate(data.rows) if r["case_id"] in val]
    return train, held


def _grid(data: DrrDataset, config: DecompositionConfig) -> GridSpec:
    spacing = float(data.info.get("pixel_spacing_mm") or 0)
    # A dataset rendered on (nearly) the recipe's grid is used as it is: no needless resampling.
    if spacing > 0 and abs(spacing / config.pixel_spacing_mm - 1) < 0.01:
        return GridSpec(config.input_size, spacing)
    return GridSpec(config.input_size, config.pixel_spacing_mm)


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here")
    return device


def _loss(
    pred: torch.Tensor,
    batch: dict[str, torch.Tensor],
    k: int,
    config: DecompositionConfig,
    area: float,
    log_variance: torch.Tensor | None = None,
    materials: torch.Tensor | None = None,
) -> torch.Tensor:
    target, valid = batch["target"], batch["valid"]
    mask = valid if pred.shape[1] == k else torch.cat([valid, valid], dim=1)
    diff = pred - target
    per_channel = torch.zeros_like(mask)
    if config.l1_weight:
        per_channel = per_channel + config.l1_weight * diff.abs().mean(dim=(2, 3))
    if config.l2_weight:
        per_channel = per_channel + config.l2_weight * diff.square().mean(dim=(2, 3))
    maps_loss = (per_channel * mask).sum() / mask.sum().clamp(min=1)
    scale = config.map_scale_mm * area / 1000.0
    sums = pred.sum(dim=(2, 3)) * scale
    truth = target.sum(dim=(2, 3)) * scale
    signed = (sums - truth) / truth.clamp(min=1.0)
    rel = (signed.abs() * mask).sum() / mask.sum().clamp(min=1)
    loss = maps_loss + config.volume_loss_weight * rel
    if log_variance is not None and config.aleatoric_weight:
        # Gaussian negative log-likelihood of the relative volume error under the predicted
        # variance. The error is detached: this term teaches the variance head how wrong the
        # volumes are for images like this one, and never pulls the volumes themselves.
        error = signed[:, :k].detach()
        nll = 0.5 * (error.square() * torch.exp(-log_variance) + log_variance)
        loss = loss + config.aleatoric_weight * (nll * valid).sum() / valid.sum().clamp(min=1)
    if materials is not None and config.materials_weight:
        diff = materials - batch["materials"]
        loss = loss + config.materials_weight * (diff.abs().mean() + diff.square().mean())
    return loss


def learning_rate(epoch: int, epochs: int, peak: float) -> float:
    """Linear warm-up over the first 15 % of epochs from peak/25, then a cosine down to peak/1000."""
    warm = max(1, round(0.15 * epochs))
    if epoch < warm:
        return peak / 25 + (peak - peak / 25) * epoch / warm
    progress = (epoch - warm) / max(1, epochs - warm)
    return peak / 1000 + 0.5 * (peak - peak / 1000) * (1 + math.cos(math.pi * progress))


def _shared_cases(data: DrrDataset, val: DrrDataset) -> set[str]:
    """Validation case ids whose CT file is also a training case's, as ``dataset.json`` records them
    (an adapted or restyled copy of the training data shares all of them). Datasets made before
    the paths were recorded absolute hold them as given, relative to where that run started, and are
    compared as they are."""
    seen = {os.path.normpath(str(c.get("ct", ""))) for c in data.info.get("source_cases", [])}
    return {
        str(c.get("case_id"))
        for c in val.info.get("source_cases", [])
        if c.get("ct") and os.path.normpath(str(c["ct"])) in seen
    }


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


@locks_output("out", rank_zero_only=True)
def train_decomposition(
    data_dir: Path,
    out: Path,
    config: DecompositionConfig,
    *,
    val_dir: Path | None = None,
    epochs: int | None = None,
    resume: bool = False,
    device: str = "auto",
    max_minutes: float | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainSummary:
    """Train on the DRR dataset at ``data_dir``; write the model folder to ``out``.

    ``max_minutes`` (this run's wall time, for a job with a time limit) ends training after the
    first epoch that passes it; the best epoch so far is calibrated and written as usual, and the
    checkpoint keeps the last epoch so that ``resume`` goes on from there.
    """
    if max_minutes is not None and not max_minutes > 0:
        raise InputError(f"--max-minutes must be positive, not {max_minutes}")
    start_time = time.perf_counter()
    rank, world = _distributed()
    device = _device(device)
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    torch.manual_seed(config.seed + rank)
    for given in (data_dir, val_dir):
        if given is not None and os.path.realpath(out) == os.path.realpath(given):
            raise InputError("--out must be a folder of its own, not a dataset the run reads", out)
    data = DrrDataset.load(data_dir)
    if len(data) == 0:
        raise InputError("the dataset has no samples", data_dir)
    if val_dir is not None:
        if os.path.realpath(val_dir) == os.path.realpath(data_dir):
            raise InputError(
                "--val is the training dataset itself; calibrated on the cases it learnt, the intervals "
                "would be too narrow: give held-out cases, or leave --val out to hold some back",
                val_dir,
            )
        val_data = DrrDataset.load(val_dir)
        if val_data.muscles != data.muscles:
            raise InputError("validation dataset lists other muscles than the training one", val_dir)
        shared = _shared_cases(data, val_data)
        if shared:
            warnings.warn(
                f"{val_dir}: {len(shared)} of its cases come from the same CT files as training cases "
                f"({', '.join(sorted(shared)[:3])}{', ...' if len(shared) > 3 else ''}); the validation "
                "figures and the calibration made on them will be too optimistic",
                stacklevel=2,
            )
        train_idx, val_idx = list(range(len(data))), list(range(len(val_data)))
    else:
        val_data = data
        train_idx, val_idx = split_by_case(data, config.val_fraction, config.seed)
    k = len(data.muscles)
    grid = _grid(data, config)
    learn_materials = config.materials_weight > 0
    train_set = DrrTrainingSet(
        data, train_idx, grid, map_scale_mm=config.map_scale_mm, mass=config.mass_head,
        augment=config.augment, seed=config.seed + rank, materials=learn_materials,
        adipose=config.materials_adipose, cache_mb=config.cache_mb,
    )  # fmt: skip
    val_set = DrrTrainingSet(val_data, val_idx, grid, map_scale_mm=config.map_scale_mm, mass=config.mass_head)
    network = BayesianUNet(
        k,
        base_channels=config.base_channels,
        depth=config.depth,
        dropout=config.dropout,
        mass_head=config.mass_head,
        aleatoric=config.aleatoric_weight > 0,
        gain_bound=GAIN_BOUND,
        materials=material_maps(learn_materials, config.materials_adipose),
    ).to(device)
    model: torch.nn.Module = network
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            network, device_ids=[int(device.split(":")[1])] if ":" in device else None
        )
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    n_epochs = epochs if epochs is not None else config.epochs
    if n_epochs < 1:
        raise InputError(f"--epochs must be at least 1, not {n_epochs}")
    summary = TrainSummary(out=Path(out))
    checkpoint = Path(out) / "checkpoint"
    first_epoch = 0
    average: WeightAverage | None = None
    if resume and (checkpoint / "state.json").is_file():
        first_epoch = _load_checkpoint(checkpoint, network, optimiser, config, summary)
        echo(f"resuming after epoch {first_epoch} (best so far: epoch {summary.best_epoch})")
        average = _resume_average(checkpoint, network, config, n_epochs)
    elif (Path(out) / "model.json").exists() or (checkpoint / "state.json").exists():
        if not resume:
            raise InputError("holds a model already; use --resume to continue it, or a new --out", out)
    sampler: Any = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=config.seed)
    if config.loader_workers > 0:
        train_set.preload()  # read once here; the loader processes share the cache
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.loader_workers,
        persistent_workers=config.loader_workers > 0,
        worker_init_fn=worker_init if config.loader_workers > 0 else None,
        # forked processes share the preloaded cache instead of each receiving a pickled copy
        multiprocessing_context=_fork() if config.loader_workers > 0 else None,
        pin_memory=device.startswith("cuda"),
        drop_last=len(train_set) > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    use_amp = device.startswith("cuda")
    earlier_seconds = summary.seconds
    last_epoch = first_epoch
    for epoch in range(first_epoch, n_epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(epoch, n_epochs, config.learning_rate)
        model.train()
        total, count = 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{n_epochs}", unit="batch", disable=not progress or rank != 0
        )
        for batch in bar:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            materials = None
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                if learn_materials:
                    pred, log_variance, materials = model(batch["image"], with_materials=True)
                else:
                    pred, log_variance = model(batch["image"], with_variance=True)
            loss = _loss(
                pred.float(), batch, k, config, grid.pixel_area_mm2, log_variance.float(),
                None if materials is None else materials.float(),
            )  # fmt: skip
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch["image"])
            count += len(batch["image"])
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        if rank == 0:
            metrics = _validate(network, val_set, config, grid, device)
            record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), **metrics}
            summary.history.append(record)
            best = metrics["mean_mape"] < summary.best_mape
            if best:
                summary.best_mape, summary.best_epoch = metrics["mean_mape"], epoch + 1
                with atomic_path(checkpoint / BEST) as tmp:
                    save_file(module_state(network), str(tmp))
            echo(
                f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, validation MAPE "
                f"{metrics['mean_mape']:.2f} %, r {metrics['mean_pcc']:.3f}{'  (best)' if best else ''}"
            )
            if config.average_epochs and epoch + 1 >= window_start(n_epochs, config.average_epochs):
                average = average or WeightAverage(network, first=epoch + 1)
                average.update(network)
            summary.seconds = earlier_seconds + time.perf_counter() - start_time
            _save_checkpoint(checkpoint, network, optimiser, config, summary, epoch + 1, average)
        summary.epochs_run += 1
        last_epoch = epoch + 1
        timed_out = max_minutes is not None and _out_of_time(start_time, max_minutes, world, device)
        if timed_out and last_epoch < n_epochs:
            echo(f"stopping after epoch {last_epoch} of {n_epochs}: --max-minutes {max_minutes:g} reached")
            break
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return summary
    last_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    best_state = read_tensors(_best_file(checkpoint))
    network.load_state_dict(best_state)
    if average is not None:
        summary.weight_average = _use_average(
            average, network, train_set, val_set, config, grid, device, summary, echo
        )
    summary.calibration = _calibrate(network, train_set, val_set, config, device, progress=progress)
    summary.seconds = earlier_seconds + time.perf_counter() - start_time
    meta = _metadata(data, val_data if val_dir is not None else None, config, grid, summary)
    save_model(out, network, meta)
    # the checkpoint keeps the last epoch's weights (from which a resumed run goes on), with the
    # summary of this run, and the best epoch's; the log goes beside the model
    network.load_state_dict(last_state)
    _save_checkpoint(checkpoint, network, optimiser, config, summary, last_epoch, average)
    with atomic_path(checkpoint / BEST) as tmp:
        save_file(best_state, str(tmp))
    _legacy_best(checkpoint).unlink(missing_ok=True)
    write_text_atomic(Path(out) / "history.json", json.dumps(summary.history, indent=1))
    return summary


# Settings that say how a run is carried out, not what it learns: a run may resume with others
# (``mc_mirror`` only changes how the finished network is calibrated and used, and
# ``average_epochs``, like ``--epochs``, how the resumed run ends).
_RUN_SETTINGS = ("loader_workers", "cache_mb", "mc_mirror", "average_epochs")


def _model_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in recipe.items() if k not in _RUN_SETTINGS}


def _out_of_time(start: float, max_minutes: float, world: int, device: str) -> bool:
    """Whether this run has used its time; in a distributed run rank 0 decides for all."""
    stop = time.perf_counter() - start > 60.0 * max_minutes
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([float(stop)], device=device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item() > 0)
    return stop


def _fork() -> str | None:
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _best_file(checkpoint: Path) -> Path:
    """The best epoch's weights: in the checkpoint, or beside the model folder where runs made
    before the checkpoint held them kept them."""
    for path in (checkpoint / BEST, _legacy_best(checkpoint)):
        if path.is_file():
            return path
    raise InputError("the best epoch's weights are missing from the checkpoint", checkpoint)


def _legacy_best(checkpoint: Path) -> Path:
    out = checkpoint.parent
    return out.parent / f".{out.name}.best.safetensors"


def _save_checkpoint(
    folder: Path,
    network: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    config: DecompositionConfig,
    summary: TrainSummary,
    epoch: int,
    average: WeightAverage | None = None,
) -> None:
    info = {
        "epoch": epoch,
        "config": config.to_dict(),
        "best_epoch": summary.best_epoch,
        "best_mape": summary.best_mape,
        "history": summary.history,
        "seconds": summary.seconds,
        "average": None if average is None else average.info(),
    }
    networks = {"model": network} | ({} if average is None else {CHECKPOINT_NAME: average.module()})
    save_checkpoint(folder, networks, {"model": optimiser}, info)


def _resume_average(
    folder: Path, network: torch.nn.Module, config: DecompositionConfig, epochs: int
) -> WeightAverage | None:
    """The checkpoint's weight average, when it lies in this run's window (a run resumed to a
    longer total has its window further on, and starts a new average there)."""
    saved = read_info(folder).get("average")
    if not config.average_epochs or not saved:
        return None
    if saved["first_epoch"] < window_start(epochs, config.average_epochs):
        return None
    average = WeightAverage(network, first=int(saved["first_epoch"]))
    load_checkpoint(folder, {CHECKPOINT_NAME: average.module()}, {})
    return average


def _use_average(
    average: WeightAverage,
    network: BayesianUNet,
    train_set: DrrTrainingSet,
    val_set: DrrTrainingSet,
    config: DecompositionConfig,
    grid: GridSpec,
    device: str,
    summary: TrainSummary,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Validate the average (its batch-normalisation statistics measured on one pass over the
    training images, augmented as the epochs saw them); load it into ``network`` when it beats the
    best epoch."""
    size = config.batch_size
    batches = (
        torch.stack([train_set[i]["image"] for i in range(s, min(s + size, len(train_set)))])
        for s in range(0, len(train_set), size)
    )
    averaged = average.network_with_batch_norm(batches, device)
    metrics = _validate(averaged, val_set, config, grid, device)
    kept = metrics["mean_mape"] < summary.best_mape
    if kept:
        network.load_state_dict(averaged.state_dict())
    echo(
        f"weight average of epochs {average.first}-{average.last}: validation MAPE "
        f"{metrics['mean_mape']:.2f} %, r {metrics['mean_pcc']:.3f} "
        f"({'kept' if kept else 'not kept'}; best epoch {summary.best_epoch}: {summary.best_mape:.2f} %)"
    )
    return {
        "first_epoch": average.first,
        "last_epoch": average.last,
        "validation_mape": metrics["mean_mape"],
        "validation_pcc": metrics["mean_pcc"],
        "kept": kept,
    }


def _load_checkpoint(
    folder: Path,
    network: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    config: DecompositionConfig,
    summary: TrainSummary,
) -> int:
    try:  # read as a recipe: settings added since the checkpoint was written take their defaults
        saved = DecompositionConfig.from_dict(read_info(folder)["config"]).to_dict()
    except (ValueError, TypeError):
        saved = None
    if saved is None or _model_settings(saved) != _model_settings(config.to_dict()):
        raise InputError("the checkpoint was made with another recipe; use a new --out", folder)
    info = load_checkpoint(folder, {"model": network}, {"model": optimiser})
    summary.best_epoch, summary.best_mape = info["best_epoch"], info["best_mape"]
    summary.seconds = float(info.get("seconds", 0.0))  # training time of the earlier runs
    summary.history = info["history"]
    return int(info["epoch"])


@torch.no_grad()
def _validate(
    network: torch.nn.Module,
    val_set: DrrTrainingSet,
    config: DecompositionConfig,
    grid: GridSpec,
    device: str,
) -> dict[str, float]:
    network.eval()
    images, truth, _, valid = collect(val_set)
    k = len(val_set.data.muscles)
    preds = []
    for start in range(0, len(images), 32):
        out = network(images[start : start + 32].to(device)).float()[:, :k]
        preds.append((out.sum(dim=(2, 3)) * config.map_scale_mm * grid.pixel_area_mm2 / 1000).cpu().numpy())
    pred = np.concatenate(preds)
    table = volume_metrics(pred, truth, valid, val_set.data.muscles)
    return {
        "mean_mape": table["mean"]["mape"],
        "mean_pcc": table["mean"]["pcc"],
        "muscles": {m: {"mape": v["mape"], "pcc": v["pcc"]} for m, v in table["muscles"].items()},  # type: ignore[dict-item]
    }


def _calibrate(
    network: BayesianUNet,
    train_set: DrrTrainingSet,
    val_set: DrrTrainingSet,
    config: DecompositionConfig,
    device: str,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """The spread's calibration on the validation set (:func:`spread_calibration`), and the
    out-of-distribution statistics from training images and the validation images' features."""
    calibration, mc = spread_calibration(
        network,
        val_set,
        samples=config.mc_samples,
        mirrored=config.mc_mirror,
        device=device,
        progress=progress,
    )
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(train_set), size=min(len(train_set), OOD_TRAINING_IMAGES), replace=False)
    train_images = torch.stack(
        [train_set.__class__.__getitem__(_no_augment(train_set), int(i))["image"] for i in pick]
    )
    train_features = np.concatenate(
        [
            image_features(network, train_images[s : s + 32].to(device), mirrored=config.mc_mirror)
            .float()
            .cpu()
            .numpy()
            for s in range(0, len(pick), 32)
        ]
    )
    ood = OodModel.fit(train_features, mc.features)
    return {**calibration, "ood": ood.to_dict()}


def _no_augment(dataset: DrrTrainingSet) -> DrrTrainingSet:
    clone = object.__new__(DrrTrainingSet)
    clone.__dict__.update(dataset.__dict__)
    clone.pipeline = None
    return clone


def _metadata(
    data: DrrDataset,
    val_data: DrrDataset | None,
    config: DecompositionConfig,
    grid: GridSpec,
    summary: TrainSummary,
) -> dict[str, Any]:
    phantoms_only = all(c.get("label_source") == "phantom" for c in data.info.get("source_cases", []))
    return {
        "muscles": data.muscles,
        "input": {"size": grid.size, "pixel_spacing_mm": grid.spacing_mm, "plane": "isocentre"},
        "normalisation": {
            "method": "percentile",
            "percentiles": list(NORMALISE_PERCENTILES),
            "collimation": "bands set to 0, outside the percentiles",
        },
        "architecture": {
            "name": "bayesian_unet",
            "base_channels": config.base_channels,
            "depth": config.depth,
            "dropout": config.dropout,
            "mass_head": config.mass_head,
            "global_gain": True,
            "coordinates": True,
            "aleatoric": config.aleatoric_weight > 0,
            "gain_bound": GAIN_BOUND,
            "materials": material_maps(config.materials_weight > 0, config.materials_adipose),
        },
        "map_scale_mm": config.map_scale_mm,
        "mc_samples": config.mc_samples,
        "mc_mirror": config.mc_mirror,
        "calibration": summary.calibration,
        "training": {
            "data": str(data.root),
            "samples": len(data),
            "cases": len({r["case_id"] for r in data.rows}),
            "validation": None if val_data is None else str(val_data.root),
            "geometry": data.info.get("geometry"),
            "physics": data.info.get("physics"),
            "label_sources": sorted({str(c.get("label_source")) for c in data.info.get("source_cases", [])}),
            "best_epoch": summary.best_epoch,
            "best_validation_mape": summary.best_mape,
            "weight_average": summary.weight_average,
            "epochs": len(summary.history),
            "seconds": round(summary.seconds, 1),
        },
        "recipe": config.to_dict(),
        "code_version": __version__,
        "notice": PHANTOM_NOTICE
        if phantoms_only
        else "research use only; check calibration on your own data",
        "volume_meaning": "volume of each muscle within the radiograph's field of view (the map's integral)",
    }
