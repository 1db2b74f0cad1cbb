"""Running ``screen`` and ``generate-drr`` on Ray: a local instance or an existing cluster.

``screen`` becomes a Ray Data pipeline: decoding as tasks on CPU workers, Monte Carlo inference
in model actors (one per GPU where the cluster has GPUs, else one CPU actor per few cores), and
the rows streamed back to the driver, which keeps the same journal and tables as a local run:
the outputs and the resumability are the same. ``generate-drr`` sends each case to a task.

On a cluster, the output folder (and, for ``generate-drr``, the CTs) must be on storage that
every node sees under the same path; the model folder too.

Ray is an optional dependency: ``pip install .[ray]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xraymuscle.errors import InputError


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed; install the extra: pip install '.[ray]'") from None
    return ray


def start(address: str | None) -> Any:
    """Connect to the cluster at ``address``, or start a local instance (``None``)."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": {"PYTHONPATH": _source_root()}} if address is None else None,
            )
        except ConnectionError as exc:
            raise InputError(f"cannot reach the Ray cluster at {address} ({exc})") from None
    return ray


def _source_root() -> str:
    root = str(Path(__file__).resolve().parents[1])
    current = os.environ.get("PYTHONPATH", "")
    return root if not current else f"{root}{os.pathsep}{current}"


# --------------------------------------------------------------------------- screen


def _encode(decoded: Any, size: int, probes: bool) -> dict[str, Any]:
    """One decoded input as a row of a Ray batch (its ``probes`` only when a spacing sd needs them)."""
    p = decoded.prepared
    info = {
        "path": p.path,
        "status": p.status,
        "reason": p.reason,
        "spacing_mm": p.spacing_mm,
        "spacing_source": p.spacing_source,
        "spacing_sd_percent": p.spacing_sd_percent,
        "notes": p.notes,
        "study": decoded.study,
        "listed": decoded.listed.as_list(),
    }
    image = p.image if p.image is not None else np.zeros((size, size), np.float32)
    row = {"index": decoded.index, "image": image, "has_image": p.image is not None, "info": json.dumps(info)}
    if probes:
        row["probes"] = p.probes if p.probes is not None else np.zeros((2, size, size), np.float32)
        row["has_probes"] = p.probes is not None
    return row


def _decode_rows(batch: dict[str, np.ndarray], settings: Any) -> dict[str, Any]:
    from xraymuscle.decoding import decode
    from xraymuscle.study import StudyInput
    from xraymuscle.study_list import Listed

    records = [
        _encode(
            decode(
                StudyInput(int(i), os.fsdecode(bytes(p)), str(q), Listed.from_list(json.loads(str(v)))),
                settings,
            ),
            settings.target.size,
            settings.target.spacing_probes,
        )
        for i, p, q, v in zip(batch["index"], batch["path"], batch["problem"], batch["listed"], strict=True)
    ]
    arrays = ("image", "probes")
    return {k: (np.stack if k in arrays else np.array)([r[k] for r in records]) for k in records[0]}


class _InferenceActor:
    def __init__(
        self,
        model_dir: str,
        device: str,
        samples: int,
        out: str,
        overlays: str,
        batch: int,
    ) -> None:
        from xraymuscle.model import load_model
        from xraymuscle.screen import Inference

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(Path(model_dir), device=device)
        self.inference = Inference(
            model, samples=samples, device=device, out=Path(out), overlays=overlays, batch=batch
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from xraymuscle.decoding import Decoded
        from xraymuscle.prepare import Prepared
        from xraymuscle.study_list import Listed

        decoded = []
        for i in range(len(batch["index"])):
            info = json.loads(str(batch["info"][i]))
            prepared = Prepared(
                info["path"],
                status=info["status"],
                reason=info["reason"],
                spacing_mm=info["spacing_mm"],
                spacing_source=info["spacing_source"],
                image=np.asarray(batch["image"][i], np.float32) if bool(batch["has_image"][i]) else None,
                notes=info["notes"],
                probes=np.asarray(batch["probes"][i], np.float32)
                if "probes" in batch and bool(batch["has_probes"][i])
                else None,
                spacing_sd_percent=info["spacing_sd_percent"],
            )
            listed = Listed.from_list(info["listed"])
            decoded.append(Decoded(int(batch["index"][i]), prepared, info["study"], listed))
        rows = self.inference.rows(decoded)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object)}


def screen_row_batches(
    todo: Sequence[Any],
    settings: Any,
    *,
    model_dir: Path,
    device: str,
    samples: int,
    out: Path,
    overlays: str,
    batch: int,
    address: str | None,
) -> Iterator[list[dict[str, Any]]]:
    """The finished rows of ``todo``, in batches, computed on Ray (order not kept; the caller sorts)."""
    if not todo:
        return
    ray = start(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and device != "cpu"
    if device.startswith("cuda") and not use_gpu:
        raise InputError("--device cuda: the Ray cluster has no GPU")
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = gpus if use_gpu else max(1, cpus // 4)
    # paths travel as bytes: a file name that is not valid UTF-8 is no Arrow string
    items = [
        {
            "index": t.index,
            "path": os.fsencode(t.path),
            "problem": t.problem,
            "listed": json.dumps(t.listed.as_list()),
        }
        for t in todo
    ]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch + 1, 4 * cpus)))
    decoded = dataset.map_batches(
        _decode_rows, fn_kwargs={"settings": settings}, batch_size=batch, num_cpus=1
    )
    rows = decoded.map_batches(
        _InferenceActor,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "device": "cuda" if use_gpu else "cpu",
            "samples": samples,
            "out": str(out),
            "overlays": overlays,
            "batch": batch,
        },
        batch_size=batch,
        num_gpus=1 if use_gpu else 0,
        num_cpus=0 if use_gpu else 1,
        concurrency=actors,
    )
    for chunk in rows.iter_batches(batch_size=batch, batch_format="numpy"):
        yield [json.loads(str(r)) for r in chunk["row"]]


# --------------------------------------------------------------------------- generate-drr


def render_cases(
    cases: Sequence[Any],
    out: Path,
    options: Any,
    *,
    address: str | None,
    finish: Callable[[Any, dict[str, Any] | None, str | None], None],
) -> None:
    """Render each case as a Ray task (one GPU each when ``options.device`` is CUDA); report each."""
    ray = start(address)
    from xraymuscle.errors import InputError as _InputError
    from xraymuscle.generate import render_case

    def one(case: Any) -> dict[str, Any] | str:
        try:
            return render_case(case, out, options, lambda n: None)
        except _InputError as exc:
            return str(exc)

    gpu = options.device.startswith("cuda")
    remote = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1)(one)
    pending = {remote.remote(case): case for case in cases}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            case = pending.pop(ref)
            result = ray.get(ref)
            if isinstance(result, str):
                finish(case, None, result)
            else:
                finish(case, result, None)
