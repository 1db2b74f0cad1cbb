"""The ``xraymuscle`` command line: a thin Typer layer over library calls.

User mistakes (missing files, bad values, unknown names) print one line on stderr and exit with
code 2; heavy modules are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import errno
import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from xraymuscle import __version__
from xraymuscle.errors import InputError

app = typer.Typer(
    name="xraymuscle",
    help="Per-muscle volume and mass, with uncertainty, from a single hip radiograph.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
MAX_SEED = 2**32 - 1
R = TypeVar("R")


def user_errors(func: F) -> F:
    """Turn an :class:`InputError` into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _check_seed(kwargs.get("seed"))
            return func(*args, **kwargs)
        except InputError as exc:
            _close_bars()
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _close_bars()
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(
                f"error: {where}no space left on the device; files are written whole or not at all: "
                "free some space and run the same command again (a run that resumes goes on from there)",
                err=True,
            )
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _check_seed(seed: int | None) -> None:
    """Every command's ``--seed`` goes to the random generators, which take 0 to 2³² − 1."""
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be from 0 to {MAX_SEED}, not {seed}")


def _close_bars() -> None:
    """End the progress bars a failed run left open, so that its error starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    """Warnings as the user's notes: ``warning: <message>`` (no source file and line)."""
    return f"warning: {message}\n"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xraymuscle {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Per-muscle volume and mass, with uncertainty, from a single hip radiograph."""
    warnings.formatwarning = _one_line_warning


CatalogOpt = Annotated[
    str,
    typer.Option("--catalog", help="Muscle catalogue: a preset name in configs/muscles or a YAML file."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="Model folder (default: the shipped phantom model).")
]
McSamplesOpt = Annotated[int | None, typer.Option("--mc-samples", help="Dropout draws (model default).")]
MagnificationOpt = Annotated[
    float | None,
    typer.Option(
        "--magnification",
        help="The hip's magnification, for spacings at the detector (default: from the file's SID, "
        "else the training geometry's).",
    ),
]
HipHeightOpt = Annotated[
    float | None,
    typer.Option(
        "--hip-height-mm",
        help="The hip's height above the detector, mm: with each file's SID, its magnification "
        "(default: the training geometry's).",
    ),
]
MarkerOpt = Annotated[
    float | None,
    typer.Option(
        "--marker-mm",
        help="Diameter of the calibration ball in the images (e.g. 25): the spacing at the hip from its "
        "shadow, not from the file.",
    ),
]
SpacingSdOpt = Annotated[
    float | None,
    typer.Option(
        "--spacing-sd-percent",
        help="The pixel spacing's relative sd at the hip, %: each volume's sd includes what it makes "
        "of the volume, measured on the image (default: the spacing taken as exact).",
    ),
]
RayOpt = Annotated[bool, typer.Option("--ray", help="Run on a local Ray instance (pip install '.[ray]').")]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Run on an existing Ray cluster (e.g. ray://head:10001).")
]


@app.command()
@user_errors
def phantom(
    out: Annotated[Path, typer.Option("--out", help="Output folder for the cohort.")],
    n: Annotated[int, typer.Option("--n", help="Number of cases.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; case i uses the stream (seed, i).")] = 0,
    spacing: Annotated[float, typer.Option("--spacing", help="Isotropic voxel size, mm.")] = 2.0,
    preview: Annotated[bool, typer.Option("--preview", help="Write a preview PNG per case.")] = False,
    catalog: CatalogOpt = "hip",
    layering: Annotated[
        str,
        typer.Option(
            "--layering",
            help="Overlapping muscles: additive (outer pushed out, volumes add up) or carve (the deeper "
            "keeps the overlap; the phantoms before the additive default).",
        ),
    ] = "additive",
) -> None:
    """Write a cohort of synthetic pelvis CTs with muscle labels, and its cohort.csv."""
    from xraymuscle.catalog import MuscleCatalog
    from xraymuscle.phantom.cohort import make_cohort

    csv_path = make_cohort(
        n,
        out,
        seed=seed,
        spacing=spacing,
        preview=preview,
        catalog=MuscleCatalog.load(catalog),
        layering=layering,
    )
    typer.echo(f"wrote {n} cases and {csv_path}")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("xraymuscle-demo"),
    n: Annotated[int, typer.Option("--n", help="Number of phantom cases (the last four are held out).")] = 24,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 30,
    adapt: Annotated[
        bool, typer.Option("--adapt/--no-adapt", help="Also run the short domain-adaptation step.")
    ] = True,
) -> None:
    """Run the pipeline on built-in data: phantoms, DRRs, training, predictions, adaptation."""
    from xraymuscle.demo import run_demo

    if n < 6:
        raise InputError(f"--n must be at least 6 (four cases are held out), not {n}")
    summary = run_demo(out, n=n, seed=seed, epochs=epochs, adapt=adapt)
    typer.echo(summary)


@app.command()
@user_errors
def train(
    data: Annotated[Path, typer.Option("--data", help="DRR dataset to train on.")],
    out: Annotated[Path, typer.Option("--out", help="Output model folder.")],
    val: Annotated[
        Path | None, typer.Option("--val", help="Validation DRR dataset (default: hold out cases of --data).")
    ] = None,
    config: Annotated[
        str, typer.Option("--config", help="Training recipe: a preset in configs/train or a YAML file.")
    ] = "decomposition",
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs (overrides the recipe).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --out's last checkpoint.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (overrides the recipe).")] = None,
    cache_mb: Annotated[
        float | None,
        typer.Option("--cache-mb", help="Memory for samples kept between epochs, MB (overrides the recipe)."),
    ] = None,
    device: DeviceOpt = "auto",
    max_minutes: Annotated[
        float | None,
        typer.Option("--max-minutes", help="Stop after the first epoch past this wall time (best kept)."),
    ] = None,
) -> None:
    """Train the Bayesian decomposition network on a DRR dataset; writes a model folder."""
    from training.config import DecompositionConfig
    from training.decomposition import train_decomposition

    recipe = _recipe(DecompositionConfig, config, seed=seed, cache_mb=cache_mb)
    summary = train_decomposition(
        data,
        out,
        recipe,
        val_dir=val,
        epochs=epochs,
        resume=resume,
        device=_pick_device(device),
        max_minutes=max_minutes,
        echo=typer.echo,
    )
    cal = summary.calibration
    if cal:
        typer.echo(
            f"best epoch {summary.best_epoch}: validation MAPE {summary.best_mape:.2f} %; "
            f"95 % coverage {100 * cal['validation_coverage95_raw']:.0f} % raw, "
            f"{100 * cal['validation_coverage95_calibrated']:.0f} % calibrated; "
            f"{summary.seconds / 60:.1f} min; model: {out}"
        )


def _recipe(kind: type[R], name: str, **overrides: Any) -> R:
    """A training recipe (a preset in configs/train or a YAML file), with the options that are set."""
    import dataclasses

    from xraymuscle.paths import config_file

    path = config_file("train", name)
    try:
        recipe = kind.load(path)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc), path) from None
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return dataclasses.replace(recipe, **given)
    except (ValueError, TypeError) as exc:  # the options' values, not the file's
        raise InputError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: {exc}") from None


@app.command("train-cyclegan")
@user_errors
def train_cyclegan(
    drr: Annotated[Path, typer.Option("--drr", help="DRR dataset (the synthetic domain).")],
    xray: Annotated[
        Path, typer.Option("--xray", help="Real radiographs: a folder (searched recursively) or a CSV list.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder: generators, metadata, samples.")],
    config: Annotated[
        str, typer.Option("--config", help="Recipe: a preset in configs/train or a YAML file.")
    ] = "cyclegan",
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs (overrides the recipe).")] = None,
    gc_weight: Annotated[
        float | None, typer.Option("--gc-weight", help="Gradient-consistency weight (0: off).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --out's last checkpoint.")] = False,
    device: DeviceOpt = "auto",
    marker_mm: Annotated[
        float | None,
        typer.Option(
            "--marker-mm",
            help="Diameter of the calibration ball in the real radiographs: their spacing from it, "
            "and the ball painted out.",
        ),
    ] = None,
) -> None:
    """Train a CycleGAN between DRRs and real radiographs (unpaired)."""
    from training.config import CycleGanConfig
    from training.cyclegan import train_cyclegan as run

    recipe = _recipe(CycleGanConfig, config, epochs=epochs, gc_weight=gc_weight)
    summary = run(
        drr,
        xray,
        out,
        recipe,
        resume=resume,
        device=_pick_device(device),
        marker_mm=marker_mm,
        echo=typer.echo,
    )
    typer.echo(
        f"{summary.epochs_run} epochs in {summary.seconds / 60:.1f} min; "
        f"{len(summary.skipped_real)} real radiographs skipped; samples: {out / 'samples'}; run: {out}"
    )


@app.command()
@user_errors
def adapt(
    cyclegan: Annotated[Path, typer.Option("--cyclegan", help="A train-cyclegan run folder.")],
    data: Annotated[Path, typer.Option("--data", help="DRR dataset whose images to translate.")],
    out: Annotated[
        Path, typer.Option("--out", help="New DRR dataset (images translated, maps as they were).")
    ],
    device: DeviceOpt = "auto",
    direction: Annotated[
        str,
        typer.Option(
            "--direction",
            help="drr-to-real (default), or real-to-drr to bring real-looking images to DRR style.",
        ),
    ] = "drr-to-real",
) -> None:
    """Translate a DRR dataset's images into the real radiographs' style (maps unchanged)."""
    from xraymuscle.adapt import adapt_dataset

    adapt_dataset(
        cyclegan,
        data,
        out,
        device=_pick_device(device),
        direction=direction.replace("-", "_"),
        echo=typer.echo,
    )


@app.command("clinical-style")
@user_errors
def clinical_style(
    data: Annotated[Path, typer.Option("--data", help="DRR dataset.")],
    out: Annotated[Path, typer.Option("--out", help="New DRR dataset with clinical-style images.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the per-image settings.")] = 0,
) -> None:
    """Make DRRs look like processed clinical radiographs (for tests and domain-gap studies)."""
    from xraymuscle.clinical_style import stylise_dataset

    stylise_dataset(data, out, seed=seed, echo=typer.echo)


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Model folder.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled DRR dataset.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for metrics and plots.")],
    mc_samples: McSamplesOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Agreement and calibration of a model on a DRR dataset: metrics.json/csv and plots."""
    from xraymuscle.evaluate import evaluate_model

    metrics = evaluate_model(model, data, out, mc_samples=mc_samples, device=_pick_device(device))
    typer.echo(
        f"{_agreement_line(metrics)}; "
        f"{100 * metrics['out_of_distribution']['rejected']:.0f} % of the images would be rejected as "
        f"unlike the training images; details in {out}"
    )


@app.command()
@user_errors
def calibrate(
    val: Annotated[Path, typer.Option("--val", help="DRR dataset of cases the model did not learn.")],
    out: Annotated[Path, typer.Option("--out", help="New model folder (same weights, new calibration).")],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Calibrate a model's uncertainty again on other validation cases; writes a new model folder."""
    from training.calibration import recalibrate
    from xraymuscle.paths import default_model_dir

    source = model or default_model_dir()
    calibration = recalibrate(source, val, out, device=_pick_device(device))
    before = calibration["recalibrated"]["replaced"]
    old, new = before.get("sd_scale") or [], calibration["sd_scale"]
    scales = f"{min(new):.2f}-{max(new):.2f}" + (f" (were {min(old):.2f}-{max(old):.2f})" if old else "")
    typer.echo(
        f"{calibration['validation_cases']} validation images: 95 % coverage "
        f"{100 * calibration['validation_coverage95_raw']:.0f} % raw, "
        f"{100 * calibration['validation_coverage95_calibrated']:.0f} % calibrated; sd scales {scales}; "
        f"model: {out}"
    )


def _agreement_line(metrics: dict) -> str:
    """The mean figures over muscles, with their 95 % intervals, in one line."""
    mean = metrics["mean"]
    ci = mean["ci95"]

    def figure(key: str, fmt: str, scale: float = 1.0) -> str:
        value = mean.get(key)
        if value is None or value != value:  # undefined (NaN): too few cases
            return "-"
        span = "" if ci.get(key) is None else f" [{ci[key][0] * scale:{fmt}}, {ci[key][1] * scale:{fmt}}]"
        return f"{value * scale:{fmt}}{span}"

    return (
        f"mean over muscles: r {figure('pcc', '.3f')}, ICC {figure('icc', '.3f')}, "
        f"MAPE {figure('mape', '.2f')} %, MAE {figure('mae_ml', '.1f')} ml, "
        f"Spearman(sd, |error|) {figure('spearman_sd_abs_error', '.2f')} "
        f"(ceiling {figure('spearman_ceiling', '.2f')}), 95 % coverage {figure('coverage95', '.0f', 100)} %; "
        f"[95 % intervals over {metrics['intervals']['cases']} cases]"
    )


@app.command()
@user_errors
def compare(
    predictions: Annotated[Path, typer.Argument(help="A predictions.csv (predict) or results.csv (screen).")],
    truth: Annotated[
        Path,
        typer.Option(
            "--truth",
            help="Reference volumes: a CSV with an image column, volume_ml__<muscle> columns (and "
            "mass_g__<muscle>), optionally case_id.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder for metrics and plots.")],
    key: Annotated[
        str, typer.Option("--key", help="The reference's column naming the radiographs.")
    ] = "image",
    match: Annotated[
        str, typer.Option("--match", help="Match radiographs by file name (default) or by path.")
    ] = "name",
    statuses: Annotated[
        str, typer.Option("--statuses", help="Rows compared, by status (comma-separated).")
    ] = "ok,uncertain",
) -> None:
    """Agreement of predictions with reference volumes (a study's own CT, say): evaluate's figures."""
    from xraymuscle.compare import compare_tables

    metrics = compare_tables(
        predictions,
        truth,
        out,
        key=key,
        match=match,
        statuses=[s.strip() for s in statuses.split(",") if s.strip()],
        echo=typer.echo,
    )
    typer.echo(f"{_agreement_line(metrics)}; details in {out}")


@app.command()
@user_errors
def predict(
    images: Annotated[
        list[Path],
        typer.Argument(help="Radiographs (DICOM, PNG, JPEG, TIFF), folders of them, or CSV lists of them."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    model: ModelOpt = None,
    pixel_spacing: Annotated[
        float | None,
        typer.Option("--pixel-spacing", help="Pixel spacing at the patient, mm (overrides files)."),
    ] = None,
    magnification: MagnificationOpt = None,
    hip_height_mm: HipHeightOpt = None,
    marker_mm: MarkerOpt = None,
    spacing_sd_percent: SpacingSdOpt = None,
    mc_samples: McSamplesOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Per-muscle volume and mass, with sd and QC status, for each radiograph."""
    from xraymuscle.predict import predict_images

    predict_images(
        images,
        out,
        model_dir=model,
        pixel_spacing=pixel_spacing,
        magnification=magnification,
        hip_height_mm=hip_height_mm,
        marker_mm=marker_mm,
        spacing_sd_percent=spacing_sd_percent,
        mc_samples=mc_samples,
        device=_pick_device(device),
        echo=typer.echo,
    )


def _pick_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is there, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is available here")
        return device
    if device != "cpu":
        raise InputError(f"--device must be auto, cpu or cuda, not {device!r}")
    return device


@app.command("generate-drr")
@user_errors
def generate_drr(
    out: Annotated[Path, typer.Option("--out", help="Output folder: a DRR dataset (see README).")],
    cohort: Annotated[
        Path | None, typer.Option("--cohort", help="Cohort CSV: case_id, ct, labels[, label_source].")
    ] = None,
    ct: Annotated[Path | None, typer.Option("--ct", help="One CT (file or DICOM folder).")] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Its label map, or a folder of one mask per muscle named after it."),
    ] = None,
    catalog: CatalogOpt = "hip",
    label_source: Annotated[
        str | None,
        typer.Option("--label-source", help="Label source in the catalogue, for cases that name none."),
    ] = None,
    geometry: Annotated[
        str, typer.Option("--geometry", help="Geometry preset in configs/geometry or a YAML file.")
    ] = "hip_ap",
    image_size: Annotated[int | None, typer.Option("--image-size", help="Pixels per side.")] = None,
    pixel_spacing: Annotated[
        float | None, typer.Option("--pixel-spacing", help="Detector pixel pitch at the detector, mm.")
    ] = None,
    sid: Annotated[float | None, typer.Option("--sid", help="Source-to-image distance, mm.")] = None,
    views: Annotated[int, typer.Option("--views", help="Views per case, poses drawn from --seed.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pose (and noise) draws.")] = 0,
    device: DeviceOpt = "auto",
    workers: Annotated[int, typer.Option("--workers", help="Cases rendered in parallel processes.")] = 1,
    backend: Annotated[
        str, typer.Option("--backend", help="builtin, or deepdrr for the image (CUDA only).")
    ] = "builtin",
    preview: Annotated[bool, typer.Option("--preview", help="Write a PNG montage per sample.")] = False,
    adipose: Annotated[
        bool,
        typer.Option(
            "--adipose", help="Also write each sample's fat map (for a recipe with materials_adipose)."
        ),
    ] = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """Render CTs with muscle labels into a DRR dataset: images and per-muscle volume/mass maps."""
    from drr.deepdrr_backend import BackendUnavailable
    from drr.presets import load_preset
    from drr.renderer import BACKENDS
    from xraymuscle.atomic import write_text_atomic
    from xraymuscle.catalog import MuscleCatalog, did_you_mean
    from xraymuscle.generate import CaseInput, GenerateOptions, case_id_from_path, generate_drr, read_cohort
    from xraymuscle.paths import config_file

    if (cohort is None) == (ct is None):
        raise InputError("give either --cohort CSV or --ct FILE --labels FILE")
    if ct is not None and labels is None:
        raise InputError("--ct needs --labels")
    if backend not in BACKENDS:
        hint = did_you_mean(backend, list(BACKENDS))
        raise InputError(f"--backend must be one of {list(BACKENDS)}, not {backend!r}{hint}")
    device = _pick_device(device)
    cat = MuscleCatalog.load(catalog)
    if label_source is not None:
        cat.check_source(label_source)
    preset_path = config_file("geometry", geometry)
    try:
        load_preset(preset_path)  # the file's own problems are the file's
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc), preset_path) from None
    try:
        preset = load_preset(preset_path, image_size=image_size, pixel_spacing=pixel_spacing, sid=sid)
    except (ValueError, TypeError) as exc:
        given = {"--image-size": image_size, "--pixel-spacing": pixel_spacing, "--sid": sid}
        raise InputError(f"{', '.join(k for k, v in given.items() if v is not None)}: {exc}") from None
    problems: list[str] = []
    if cohort is not None:
        cases, problems = read_cohort(cohort)
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
    else:
        assert ct is not None and labels is not None
        for path in (ct, labels):
            if not path.exists():
                raise InputError("no such file or folder", path)
        cases = [CaseInput(case_id_from_path(ct), ct, labels, None)]
    unnamed = [c.case_id for c in cases if c.label_source is None]
    if unnamed and label_source is None:
        raise InputError(
            f"cases {unnamed[:3]}{' ...' if len(unnamed) > 3 else ''} name no label source; "
            f"give --label-source (known: {sorted(cat.sources)})"
        )
    options = GenerateOptions(
        catalog=cat,
        label_source=label_source or "",
        preset=preset,
        views=views,
        seed=seed,
        device=device,
        backend=backend,
        workers=workers,
        preview=preview,
        adipose=adipose,
    )
    try:
        summary = generate_drr(cases, out, options, ray=ray, ray_address=ray_address)
    except BackendUnavailable as exc:
        raise InputError(str(exc)) from None
    failures = problems + summary.failed
    if failures:
        write_text_atomic(out / "problems.txt", "\n".join(failures) + "\n")
    typer.echo(
        f"{summary.rendered} views rendered, {summary.skipped} already there, "
        f"{len(failures)} case(s) with problems{' (see problems.txt)' if failures else ''}; "
        f"dataset: {out}"
    )
    if not summary.cases_done and not summary.skipped:
        raise typer.Exit(code=2)


@app.command()
@user_errors
def screen(
    study: Annotated[
        Path, typer.Argument(help="A folder (searched recursively) or a CSV list of radiograph paths.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (a stopped run resumes in it).")],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Radiographs per inference batch.")] = 32,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decoding processes (default: cores - 1, at most 8).")
    ] = None,
    pixel_spacing: Annotated[
        float | None,
        typer.Option("--pixel-spacing", help="Pixel spacing at the patient, mm (overrides files)."),
    ] = None,
    magnification: MagnificationOpt = None,
    hip_height_mm: HipHeightOpt = None,
    marker_mm: MarkerOpt = None,
    spacing_sd_percent: SpacingSdOpt = None,
    mc_samples: McSamplesOpt = None,
    keep_identifiers: Annotated[
        bool,
        typer.Option("--keep-identifiers", help="Also write patient IDs (default: salted pseudonyms only)."),
    ] = False,
    overlays: Annotated[
        str, typer.Option("--overlays", help="Pictures for: flagged (default), all or none.")
    ] = "flagged",
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html.")] = True,
    retry_errors: Annotated[
        bool,
        typer.Option(
            "--retry-errors", help="Screen again the files an earlier run into --out could not read."
        ),
    ] = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """Screen a whole study: results.csv/.parquet (one row per file), report.html; resumable."""
    from xraymuscle.screen import screen_study

    screen_study(
        study,
        out,
        model_dir=model,
        device="auto" if (ray or ray_address) and device == "auto" else _pick_device(device),
        batch=batch,
        workers=workers,
        mc_samples=mc_samples,
        pixel_spacing=pixel_spacing,
        magnification=magnification,
        hip_height_mm=hip_height_mm,
        marker_mm=marker_mm,
        spacing_sd_percent=spacing_sd_percent,
        keep_identifiers=keep_identifiers,
        overlays=overlays,
        report=report,
        retry_errors=retry_errors,
        ray=ray,
        ray_address=ray_address,
        echo=typer.echo,
    )


@app.command()
@user_errors
def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            help="A CT / label map (file or DICOM folder), a radiograph, a DRR dataset, a model folder "
            "or a study list (.csv)."
        ),
    ],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="A label map (or folder of masks named after muscles) to check."),
    ] = None,
    catalog: CatalogOpt = "hip",
    label_source: Annotated[
        str | None,
        typer.Option("--label-source", help="Label source in the catalogue, to list muscle volumes."),
    ] = None,
    pixel_spacing: Annotated[
        float | None,
        typer.Option("--pixel-spacing", help="Radiograph pixel spacing, mm (overrides the file)."),
    ] = None,
    marker_mm: Annotated[
        float | None,
        typer.Option("--marker-mm", help="Look for a calibration ball of this diameter in the radiograph."),
    ] = None,
) -> None:
    """Print what a CT, label map, radiograph, DRR dataset, model folder or study list holds, as JSON."""
    import numpy as np

    from xraymuscle.catalog import MuscleCatalog
    from xraymuscle.measure import (
        muscle_centroids,
        muscle_channels,
        muscle_volumes,
        orientation_notes,
        unlike_muscle,
        unlike_muscle_note,
    )
    from xraymuscle.radiograph import read_radiograph
    from xraymuscle.volume import is_volume_path, read_ct, read_labels, sides_cut_off

    info: dict[str, Any]
    if path.suffix.lower() == ".csv" and path.is_file():
        from xraymuscle.study_list import study_list_summary

        info = study_list_summary(path)
    elif path.is_dir() and (path / "model.json").is_file():
        from xraymuscle.model import load_model, model_summary

        info = model_summary(load_model(path))
    elif path.is_dir() and (path / "dataset.json").is_file():
        from xraymuscle.drr_dataset import DrrDataset, dataset_summary

        info = dataset_summary(DrrDataset.load(path))
    elif is_volume_path(path):
        try:
            ct = read_ct(path)
        except InputError as exc:
            if path.is_dir() and exc.problem == "folder holds no DICOM series":
                what = "no DICOM series, DRR dataset (dataset.json) or model (model.json)"
                raise InputError(f"folder holds {what}", path) from None
            raise
        info = {
            "kind": "volume",
            "path": str(path),
            "shape_ijk": list(ct.size_ijk),
            "spacing_mm": list(ct.spacing),
            "origin_lps_mm": list(ct.origin),
            "direction": ct.direction.round(6).ravel().tolist(),
            "min": float(ct.array.min()),
            "max": float(ct.array.max()),
            "slices_cut_off_at_the_sides": round(sides_cut_off(ct), 3),
        }
        if labels is not None:
            muscles = None if label_source is None else MuscleCatalog.load(catalog)
            masks = None if muscles is None else muscles.mask_values(str(label_source))
            lab = read_labels(labels, reference=ct, masks=masks)
            info["labels"] = [int(v) for v in np.unique(lab.array) if v != 0]
            if muscles is not None:
                channel = muscle_channels(lab, muscles, str(label_source))  # (made once, used twice)
                measured = muscle_volumes(ct, lab, muscles, str(label_source), channel=channel)
                info["muscles"] = measured
                unlike = unlike_muscle((m, v["volume_ml"], v["mass_g"]) for m, v in measured.items())
                info["notes"] = [unlike_muscle_note(unlike)] if unlike else []
                centres = muscle_centroids(lab, muscles, str(label_source), channel=channel)
                info["notes"] += orientation_notes(centres)
    else:
        rad = read_radiograph(path, pixel_spacing=pixel_spacing)
        info = {
            "kind": "radiograph",
            "path": str(path),
            "shape": list(rad.shape),
            "pixel_spacing_mm": None if rad.pixel_spacing is None else list(rad.pixel_spacing),
            "spacing_source": rad.spacing_source,
            "spacing_plane": rad.spacing_plane,
            "source_to_detector_mm": rad.source_to_detector_mm,
            "bits_stored": rad.bits_stored,
            "is_colour": rad.is_colour,
            "notes": rad.notes,
            "metadata": rad.metadata,
        }
        if marker_mm is not None:
            from xraymuscle.calibration_marker import marker_in
            from xraymuscle.prepare import check_marker

            check_marker(marker_mm, None, None)
            found = marker_in(rad, marker_mm)
            info["marker"] = (
                None
                if found is None
                else {
                    "row": round(found.row, 2),
                    "column": round(found.column, 2),
                    "diameter_px": round(found.diameter_px, 3),
                    "spacing_mm": round(found.spacing_mm(marker_mm), 5),
                }
            )
    typer.echo(json.dumps(info, indent=1))


@app.command()
@user_errors
def catalog(
    name: Annotated[str, typer.Argument(help="Catalogue preset name or YAML file.")] = "hip",
    label_source: Annotated[str | None, typer.Option("--label-source", help="Show one source only.")] = None,
) -> None:
    """List a muscle catalogue's muscles and the label values of each source."""
    from xraymuscle.catalog import MuscleCatalog

    cat = MuscleCatalog.load(name)
    sources = [label_source] if label_source else sorted(cat.sources)
    for source in sources:
        cat.check_source(source)
    typer.echo(f"catalogue {cat.name} ({cat.path})")
    for i, muscle in enumerate(cat.muscles):
        values = "  ".join(f"{s}={list(cat.sources[s].get(muscle, ())) or '-'}" for s in sources)
        typer.echo(f"{i:2d} {muscle:24s} {values}")
    for group, members in cat.groups.items():
        typer.echo(f"group {group}: {' + '.join(members)}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
