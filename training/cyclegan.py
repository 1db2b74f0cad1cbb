"""The CycleGAN that translates DRRs into the look of real radiographs, and back.

Generators: ResNet style (a 7×7 convolution, two stride-2 convolutions down, residual blocks, two
upsampling steps, a 7×7 convolution to one channel and tanh), instance normalisation, reflection
padding; grey images in [−1, 1]. The CPU recipe adds a global skip (the generator learns a
correction of its input) and resize-convolution upsampling; see :class:`ResnetGenerator`.
Discriminators: PatchGAN (4×4 convolutions, stride 2, leaky ReLU; with 3 layers each output sees a
70×70-pixel patch). Losses: least squares adversarial, cycle (L1, λ ≈ 10), identity (L1; off in
the CPU recipe) and the gradient-consistency loss
``1 − GC(x, G(x))`` (:mod:`training.gradient_consistency`) in both directions, which keeps the
anatomy's edges where they were. An image pool of earlier fakes feeds the discriminators. Adam,
a constant learning rate then a linear decay to zero. Mixed precision (bf16) on CUDA.

A run folder holds both generators (``generator_drr_to_real.safetensors`` and
``generator_real_to_drr.safetensors``) and ``cyclegan.json`` (architecture, recipe, provenance),
``samples/epoch_NNN.png`` (translations after each epoch) and ``checkpoint/`` (for ``--resume``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from training.checkpoint import load_checkpoint, module_state, read_info, save_checkpoint
from training.config import CycleGanConfig
from training.gradient_consistency import gradient_consistency_loss
from training.unpaired import drr_geometry, drr_images, random_crops, real_images
from xraymuscle import __version__
from xraymuscle.atomic import write_text_atomic
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.prepare import check_marker
from xraymuscle.preview import montage, titled, write_png
from xraymuscle.run_lock import is_empty, locks_output
from xraymuscle.weights_file import read_tensors, write_tensors

FORMAT = "xraymuscle-cyclegan"
VERSION = 1
METADATA = "cyclegan.json"
GENERATORS = {
    "drr_to_real": "generator_drr_to_real.safetensors",
    "real_to_drr": "generator_real_to_drr.safetensors",
}


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Grey image → grey image of the same size (sides divisible by 4), values in [−1, 1].

    ``global_skip`` makes the network a correction of its input: the output is
    ``tanh(atanh(x) + body(x))``, so the input's anatomy passes through and training only has to
    learn the change of style, not to redraw the image (without it, a short run gives blurred
    translations). The body starts from the usual random weights: a body that starts at zero sits
    where the L1 cycle and identity losses have a kink, and in a measured run it never left it.
    ``upsample="resize"`` enlarges by nearest neighbour and a 3×3 convolution instead of transposed
    convolutions, which leave a checkerboard.
    """

    def __init__(
        self,
        base_channels: int = 16,
        residual_blocks: int = 6,
        *,
        global_skip: bool = False,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        if upsample not in ("transpose", "resize"):
            raise ValueError(f"upsample must be 'transpose' or 'resize', not {upsample!r}")
        self.global_skip = global_skip
        c = base_channels
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(1, c, 7),
            nn.InstanceNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        for k in (1, 2):
            layers += [
                nn.Conv2d(c * k, c * 2 * k, 3, stride=2, padding=1),
                nn.InstanceNorm2d(c * 2 * k),
                nn.ReLU(True),
            ]
        layers += [_Residual(c * 4) for _ in range(residual_blocks)]
        for k in (4, 2):
            if upsample == "transpose":
                layers += [nn.ConvTranspose2d(c * k, c * k // 2, 3, stride=2, padding=1, output_padding=1)]
            else:
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.ReflectionPad2d(1),
                    nn.Conv2d(c * k, c * k // 2, 3),
                ]
            layers += [nn.InstanceNorm2d(c * k // 2), nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 1, 7)]
        if not global_skip:
            layers += [nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.global_skip:
            return self.net(x)
        inside = 1.0 - 1e-3  # atanh(±1) is infinite
        return torch.tanh(torch.atanh(x.clamp(-inside, inside)) + self.net(x))


class PatchDiscriminator(nn.Module):
    """A map of real/fake scores, one per image patch (70×70 pixels with 3 layers)."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        c = channels
        for n in range(1, layers + 1):
            c_out = channels * min(2**n, 8)
            stride = 2 if n < layers else 1
            mods += [
                nn.Conv2d(c, c_out, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(c_out),
                nn.LeakyReLU(0.2, True),
            ]
            c = c_out
        mods += [nn.Conv2d(c, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool:
    """Earlier generated images: half of each batch shown to a discriminator comes from here."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        for image in batch.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                k = int(self.rng.integers(self.size))
                out.append(self.images[k].clone())
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)


def _architecture(config: CycleGanConfig) -> dict[str, Any]:
    return {
        "generator": "resnet",
        "base_channels": config.base_channels,
        "residual_blocks": config.residual_blocks,
        "global_skip": config.global_skip,
        "upsample": config.upsample,
        "discriminator": "patchgan",
        "disc_channels": config.disc_channels,
        "disc_layers": config.disc_layers,
    }


def _generator(arch: Mapping[str, Any]) -> ResnetGenerator:
    """A generator from an ``architecture`` block; folders from before ``global_skip`` and
    ``upsample`` existed lack both keys and hold the classic generator."""
    return ResnetGenerator(
        int(arch["base_channels"]),
        int(arch["residual_blocks"]),
        global_skip=bool(arch.get("global_skip", False)),
        upsample=str(arch.get("upsample", "transpose")),
    )


@dataclass
class CycleGanSummary:
    """What a training run did."""

    out: Path
    epochs_run: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_real: list[str] = field(default_factory=list)


def _lr_factor(epoch: int, config: CycleGanConfig) -> float:
    start = int(config.decay_from * config.epochs)
    if epoch < start:
        return 1.0
    return max(0.0, 1.0 - (epoch - start + 1) / (config.epochs - start + 1))


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@locks_output("out")
def train_cyclegan(
    drr_dir: Path,
    xray_source: Path,
    out: Path,
    config: CycleGanConfig,
    *,
    resume: bool = False,
    device: str = "auto",
    marker_mm: float | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> CycleGanSummary:
    """Train on the DRR dataset ``drr_dir`` (domain A) and the radiographs of ``xray_source`` (B);
    ``marker_mm``: their calibration marker's diameter (see :func:`real_images`)."""
    device = _device(device)
    data = DrrDataset.load(drr_dir)
    spacing, magnification = drr_geometry(data)
    drrs = drr_images(data)
    reference_side = min(drrs[0].shape)
    check_marker(marker_mm, None, None)
    real = real_images(Path(xray_source), spacing, magnification, reference_side, marker_mm=marker_mm)
    for problem in real.skipped:
        echo(f"skipped: {problem}")
    for line in real.left_out:
        echo(line)
    out = Path(out)
    checkpoint = out / "checkpoint"
    if not is_empty(out) and not resume:
        raise InputError("output folder is not empty; give --resume to go on with it, or a new --out", out)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    g_ab, g_ba = (_generator(_architecture(config)).to(device) for _ in range(2))
    d_a = PatchDiscriminator(config.disc_channels, config.disc_layers).to(device)
    d_b = PatchDiscriminator(config.disc_channels, config.disc_layers).to(device)
    betas = (config.beta1, 0.999)
    opt_g = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], lr=config.learning_rate, betas=betas)
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=config.learning_rate, betas=betas)
    networks = {"g_ab": g_ab, "g_ba": g_ba, "d_a": d_a, "d_b": d_b}
    optimisers = {"g": opt_g, "d": opt_d}
    summary = CycleGanSummary(out, skipped_real=real.skipped)
    first_epoch = 0
    if resume and (checkpoint / "state.json").is_file():
        saved = {k: v for k, v in read_info(checkpoint)["config"].items() if k != "epochs"}
        if saved != {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k != "epochs"}:
            # more epochs are fine (the decay is then spread over the new length); the rest must match
            raise InputError("the checkpoint was made with another recipe; use a new --out", checkpoint)
        info = load_checkpoint(checkpoint, networks, optimisers)
        first_epoch, summary.history = int(info["epoch"]), info["history"]
        summary.seconds = float(info["seconds"])
        rng = np.random.default_rng([config.seed, first_epoch])
        torch.manual_seed(config.seed + first_epoch)
        echo(f"resuming after epoch {first_epoch}")
    pool_a, pool_b = ImagePool(config.pool_size, rng), ImagePool(config.pool_size, rng)
    use_amp = device.startswith("cuda")
    show_drr = [drrs[int(i)] for i in np.linspace(0, len(drrs) - 1, 4).round()]
    show_real = [
        real.images[int(i)] for i in np.linspace(0, len(real.images) - 1, min(4, len(real.images))).round()
    ]
    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = config.learning_rate * _lr_factor(epoch, config)
        totals: dict[str, float] = {}
        bar = tqdm(
            range(config.iterations_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
        )
        for _ in bar:
            real_a = torch.from_numpy(random_crops(drrs, config.batch_size, config.crop_size, rng)).to(device)
            real_b = torch.from_numpy(random_crops(real.images, config.batch_size, config.crop_size, rng)).to(
                device
            )
            losses = _step(networks, optimisers, pool_a, pool_b, real_a, real_b, config, use_amp)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v / config.iterations_per_epoch
            bar.set_postfix(g=f"{losses['generator']:.3f}", d=f"{losses['discriminator']:.3f}")
        bar.close()
        summary.seconds += time.perf_counter() - start
        summary.history.append({"epoch": epoch + 1, **{k: round(v, 5) for k, v in totals.items()}})
        summary.epochs_run += 1
        _sample_grid(out / "samples" / f"epoch_{epoch + 1:03d}.png", g_ab, g_ba, show_drr, show_real, device)
        _save_generators(out, g_ab, g_ba, config, data, real, xray_source, summary, spacing)
        info = {
            "epoch": epoch + 1,
            "config": config.to_dict(),
            "history": summary.history,
            "seconds": summary.seconds,
        }
        save_checkpoint(checkpoint, networks, optimisers, info)
        echo(
            f"epoch {epoch + 1}: generator {totals['generator']:.3f} (cycle {totals['cycle']:.3f}, "
            f"gc {totals['gc']:.3f}), discriminator {totals['discriminator']:.3f}"
        )
    return summary


def _step(
    networks: Mapping[str, nn.Module],
    optimisers: Mapping[str, torch.optim.Optimizer],
    pool_a: ImagePool,
    pool_b: ImagePool,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    config: CycleGanConfig,
    use_amp: bool,
) -> dict[str, float]:
    g_ab, g_ba, d_a, d_b = (networks[k] for k in ("g_ab", "g_ba", "d_a", "d_b"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)
    for d in (d_a, d_b):
        d.requires_grad_(False)
    with autocast:
        fake_b, fake_a = g_ab(real_a), g_ba(real_b)
        rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
        pred_b, pred_a = d_b(fake_b), d_a(fake_a)
        adversarial = F.mse_loss(pred_b.float(), torch.ones_like(pred_b, dtype=torch.float32)) + F.mse_loss(
            pred_a.float(), torch.ones_like(pred_a, dtype=torch.float32)
        )
        cycle = F.l1_loss(rec_a.float(), real_a) + F.l1_loss(rec_b.float(), real_b)
        identity = torch.zeros((), device=real_a.device)
        if config.identity_weight > 0:
            identity = F.l1_loss(g_ab(real_b).float(), real_b) + F.l1_loss(g_ba(real_a).float(), real_a)
        gc = torch.zeros((), device=real_a.device)
        if config.gc_weight > 0:
            gc = gradient_consistency_loss(real_a, fake_b.float()) + gradient_consistency_loss(
                real_b, fake_a.float()
            )
        loss_g = (
            adversarial
            + config.cycle_weight * cycle
            + config.identity_weight * identity
            + config.gc_weight * gc
        )
    optimisers["g"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimisers["g"].step()
    for d in (d_a, d_b):
        d.requires_grad_(True)
    with autocast:
        loss_d = torch.zeros((), device=real_a.device)
        for d, real, fake in (
            (d_b, real_b, pool_b.query(fake_b.float())),
            (d_a, real_a, pool_a.query(fake_a.float())),
        ):
            p_real, p_fake = d(real).float(), d(fake.detach()).float()
            loss_d = loss_d + 0.5 * (
                F.mse_loss(p_real, torch.ones_like(p_real)) + F.mse_loss(p_fake, torch.zeros_like(p_fake))
            )
    optimisers["d"].zero_grad(set_to_none=True)
    loss_d.backward()
    optimisers["d"].step()
    if config.gc_weight == 0:  # still report it: how far the edges moved without the loss
        with torch.no_grad():
            gc = gradient_consistency_loss(real_a, fake_b.float()) + gradient_consistency_loss(
                real_b, fake_a.float()
            )
    return {
        "generator": float(loss_g.detach()),
        "adversarial": float(adversarial.detach()),
        "cycle": float(cycle.detach()),
        "identity": float(identity.detach()),
        "gc": float(gc.detach()),
        "discriminator": float(loss_d.detach()),
    }


@torch.no_grad()
def translate(generator: nn.Module, image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Translate one whole image in [−1, 1] (any size): padded to a multiple of 4 and cropped back."""
    h, w = image.shape
    hp, wp = math.ceil(max(h, 8) / 4) * 4, math.ceil(max(w, 8) / 4) * 4
    padded = np.pad(image, ((0, hp - h), (0, wp - w)), mode="reflect") if (hp, wp) != (h, w) else image
    generator.eval()
    x = torch.from_numpy(np.ascontiguousarray(padded, np.float32))[None, None].to(device)
    y = generator(x).float()[0, 0, :h, :w].cpu().numpy()
    return y


def _sample_grid(
    path: Path,
    g_ab: nn.Module,
    g_ba: nn.Module,
    drrs: list[np.ndarray],
    reals: list[np.ndarray],
    device: str,
) -> None:
    panels = []
    for image in drrs:
        panels += [
            titled((image + 1) / 2, "DRR"),
            titled((translate(g_ab, image, device) + 1) / 2, "DRR → real style"),
        ]
    for image in reals:
        panels += [
            titled((image + 1) / 2, "real"),
            titled((translate(g_ba, image, device) + 1) / 2, "real → DRR style"),
        ]
    g_ab.train()
    g_ba.train()
    write_png(path, montage(panels, columns=4))


def _save_generators(
    out: Path,
    g_ab: nn.Module,
    g_ba: nn.Module,
    config: CycleGanConfig,
    data: DrrDataset,
    real: Any,
    xray_source: Path,
    summary: CycleGanSummary,
    spacing: float,
) -> None:
    digests = {
        name: write_tensors(out / name, module_state(generator))
        for generator, name in ((g_ab, GENERATORS["drr_to_real"]), (g_ba, GENERATORS["real_to_drr"]))
    }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "code_version": __version__,
        "architecture": _architecture(config),
        "config": config.to_dict(),
        "generators": GENERATORS,
        # the metadata is written after the generators: a reader between the renames is told so
        "generator_sha256": digests,
        "intensity": (
            "each image's 0.5th-99.5th percentiles (collimation bands left out, set to -1) mapped to [-1, 1]"
        ),
        "pixel_spacing_mm": spacing,
        "drr_dataset": str(Path(data.root).resolve()),
        "real_domain": {
            "source": str(Path(xray_source).resolve()),
            "images": len(real.paths),
            "skipped": len(real.skipped),
        },
        "epochs": summary.history[-1]["epoch"] if summary.history else 0,
        "history": summary.history,
        "training_seconds": round(summary.seconds, 1),
    }
    write_text_atomic(out / METADATA, json.dumps(meta, indent=1))


def load_generator(
    folder: Path, direction: str = "drr_to_real", device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """One generator of a CycleGAN run folder, with the folder's metadata (no pickles read)."""
    folder = Path(folder)
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise InputError(f"not a CycleGAN folder (no {METADATA})", folder)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise InputError("metadata is not valid JSON", meta_path) from None
    if not isinstance(meta, dict):
        raise InputError(f"holds a JSON {type(meta).__name__}, not a CycleGAN's metadata", meta_path)
    if meta.get("format") != FORMAT:
        raise InputError(f"not a CycleGAN's metadata (format {meta.get('format')!r})", meta_path)
    if meta.get("version") != VERSION:
        raise InputError(
            f"made by another version of this tool (version {meta.get('version')}, need {VERSION})", meta_path
        )
    weights = folder / GENERATORS[direction]
    if not weights.is_file():
        raise InputError(f"missing the generator {GENERATORS[direction]}", folder)
    recorded = (meta.get("generator_sha256") or {}).get(weights.name)  # absent in older folders
    state = read_tensors(weights, sha256=recorded, described_as=f"the generator {METADATA} describes")
    try:
        generator = _generator(meta["architecture"])
        generator.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"generator weights do not fit the architecture ({str(exc).splitlines()[0]})", weights
        ) from None
    return generator.to(device).eval(), meta
