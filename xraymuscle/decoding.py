"""Decoding a study's inputs, in worker processes: read, bring to the model's grid, describe.

Needs no PyTorch, so worker processes start fast and stay small. Each input becomes a
:class:`Decoded`: the image on the model's grid (or the reason there is none), its DICOM study
columns and its content hash (for duplicates). Nothing here raises for a bad file.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any

from xraymuscle.prepare import GridTarget, Prepared, read_and_prepare
from xraymuscle.radiograph import Radiograph
from xraymuscle.study import StudyInput, file_sha256, study_metadata
from xraymuscle.study_list import Listed


@dataclass
class Decoded:
    """One input after decoding: its grid image (or why there is none) and its study columns."""

    index: int
    prepared: Prepared
    study: dict[str, Any] = field(default_factory=dict)
    listed: Listed = Listed()  # what the study list gives the input (StudyInput.listed)


@dataclass(frozen=True)
class DecodeSettings:
    """What a decoding worker needs besides the input (small and picklable)."""

    target: GridTarget
    pixel_spacing: float | None
    salt: str
    keep_identifiers: bool
    spacing_sd_percent: float | None = None  # the run's; a study list's per-file value wins


def decode(item: StudyInput, settings: DecodeSettings) -> Decoded:
    """Read one input and bring it to the model's grid. Never raises: problems become its status."""
    if item.problem:
        return Decoded(
            item.index, Prepared(item.name, status="error", reason=item.problem), listed=item.listed
        )
    try:
        prepared, radiograph = prepare_input(
            item,
            settings.target,
            pixel_spacing=settings.pixel_spacing,
            spacing_sd_percent=settings.spacing_sd_percent,
        )
        meta = radiograph.metadata if radiograph is not None else {}
        study = study_metadata(meta, settings.salt, keep_identifiers=settings.keep_identifiers)
    except Exception as exc:  # a reader bug must cost one row, not the study
        prepared = Prepared(item.path, status="error", reason=f"cannot be read ({type(exc).__name__}: {exc})")
        study = {}
    prepared.path = item.name  # read from the path, shown by its name
    study["content_sha256"] = file_sha256(item.path)
    return Decoded(item.index, prepared, study, item.listed)


def prepare_input(
    item: StudyInput,
    target: GridTarget,
    *,
    pixel_spacing: float | None = None,
    spacing_sd_percent: float | None = None,
) -> tuple[Prepared, Radiograph | None]:
    """:func:`read_and_prepare` for one input of a study: what its study list gives it (a pixel
    spacing, a spacing sd, a hip height, a calibration marker) wins over the run's options
    (``--pixel-spacing``, ``--spacing-sd-percent``, ``--hip-height-mm``, ``--marker-mm``); a
    listed spacing's source is ``study list``. The spacing probes are made for an input that
    carries a spacing sd, whatever ``target`` says.
    The input's own problem is not looked at."""
    listed = item.listed
    sd = spacing_sd_percent if listed.spacing_sd_percent is None else listed.spacing_sd_percent
    target = replace(target, spacing_probes=sd is not None)  # the probes only where a spacing sd needs them
    if listed.hip_height_mm is not None:
        target = replace(target, hip_to_detector_mm=listed.hip_height_mm, hip_height_given=True)
    if listed.marker_mm is not None:
        target = replace(target, marker_mm=listed.marker_mm)
    prepared, radiograph = read_and_prepare(
        item.path,
        target,
        pixel_spacing=pixel_spacing if listed.pixel_spacing is None else listed.pixel_spacing,
    )
    if listed.pixel_spacing is not None and prepared.spacing_source == "user":
        prepared.spacing_source = "study list"
    prepared.spacing_sd_percent = sd
    return prepared, radiograph


def _decode_task(args: tuple[StudyInput, DecodeSettings]) -> Decoded:
    return decode(*args)


def decoded_stream(
    items: Sequence[StudyInput], settings: DecodeSettings, *, workers: int
) -> Iterator[Decoded]:
    """Decode ``items`` in order, in ``workers`` processes (0: here), a bounded number ahead.

    A reader that crashes its process (a decoder's segmentation fault on a malformed file) takes
    down the pool, not the run: the inputs that were in flight are then decoded one at a time in
    fresh processes, and the one that crashes again gets an ``error`` row.
    """
    if workers <= 0:
        for item in items:
            yield decode(item, settings)
        return
    context = mp.get_context("spawn")  # workers never inherit the parent's threads or GPU state
    pool = ProcessPoolExecutor(workers, mp_context=context)
    pending: deque[tuple[StudyInput, Future[Decoded]]] = deque()
    queue = iter(items)
    try:
        while True:
            while len(pending) < 4 * workers:
                upcoming = next(queue, None)
                if upcoming is None:
                    break
                pending.append((upcoming, pool.submit(_decode_task, (upcoming, settings))))
            if not pending:
                return
            item, future = pending.popleft()
            try:
                yield future.result()
            except BrokenProcessPool:
                suspects = [item, *(i for i, _ in pending)]
                pending.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                for suspect in suspects:
                    yield _decode_alone(suspect, settings, context)
                pool = ProcessPoolExecutor(workers, mp_context=context)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _decode_alone(item: StudyInput, settings: DecodeSettings, context: Any) -> Decoded:
    with ProcessPoolExecutor(1, mp_context=context) as solo:
        try:
            return solo.submit(_decode_task, (item, settings)).result()
        except BrokenProcessPool:
            prepared = Prepared(item.name, status="error", reason="reading it crashed the decoder")
            return Decoded(item.index, prepared, {"content_sha256": file_sha256(item.path)}, item.listed)
