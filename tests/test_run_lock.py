"""One run at a time per output folder: a second is refused, a killed one leaves no lock."""

from __future__ import annotations

import errno
import fcntl
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from training.config import CycleGanConfig, DecompositionConfig
from training.cyclegan import train_cyclegan
from training.decomposition import train_decomposition
from xraymuscle.drr_dataset import derive_dataset
from xraymuscle.errors import InputError
from xraymuscle.evaluate import evaluate_model
from xraymuscle.generate import generate_drr
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.predict import predict_images
from xraymuscle.run_lock import LOCK_FILE, is_empty, locks_output, run_lock
from xraymuscle.screen import screen_study

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
BUSY = "another run is writing to this folder"


def test_a_second_run_into_a_folder_in_use_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    args = ["phantom", "--n", "1", "--spacing", "6", "--out", str(out)]
    with run_lock(out):
        busy = runner.invoke(app, args)
        assert busy.exit_code == 2
        assert busy.output.strip().splitlines() == [
            f"error: {out}: {BUSY}; wait for it to end, or give another --out"
        ]
        assert is_empty(out)
    # Once the first run has ended, the folder is free.
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert (out / "cohort.csv").is_file()


WRITING_RUNS: dict[str, Callable[[Path], Any]] = {
    "phantom": lambda out: make_cohort(1, out),
    "generate-drr": lambda out: generate_drr([], out, None),  # type: ignore[arg-type]
    "train": lambda out: train_decomposition(out.parent / "data", out, DecompositionConfig()),
    "train-cyclegan": lambda out: train_cyclegan(
        out.parent / "drr", out.parent / "xray", out, CycleGanConfig()
    ),
    "adapt and clinical-style": lambda out: derive_dataset(None, out, lambda a, b: a, "k", {}),  # type: ignore[arg-type]
    "evaluate": lambda out: evaluate_model(out.parent / "model", out.parent / "drr", out),
    "predict": lambda out: predict_images([out.parent / "x.png"], out),
    "screen": lambda out: screen_study(out.parent / "study", out),
}


@pytest.mark.parametrize("command", list(WRITING_RUNS))
def test_every_run_that_writes_a_folder_takes_the_lock_before_anything_else(
    command: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with run_lock(out), pytest.raises(InputError, match=BUSY):
        WRITING_RUNS[command](out)


def test_a_killed_run_leaves_no_lock_behind(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = (
        "import time\nfrom xraymuscle.run_lock import run_lock\n"
        f"with run_lock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=BUSY), run_lock(out):
            pass  # another process holds it
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert (out / LOCK_FILE).is_file()  # the file stays; the lock went with the process
    with run_lock(out):
        pass


def test_a_run_that_fails_before_writing_removes_the_folder_it_made(tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    old.mkdir()
    for out in (new, old):
        result = runner.invoke(app, ["screen", str(tmp_path / "absent"), "--out", str(out)])
        assert result.exit_code == 2 and "no such file or folder" in result.output
    assert not new.exists() and old.is_dir() and not any(old.iterdir())  # no lock file left either
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="output exists and is not a folder"), run_lock(tmp_path / "file"):
        pass


def test_in_a_distributed_run_only_rank_zero_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @locks_output("out", rank_zero_only=True)
    def write(out: Path) -> str:
        (out / "rank.txt").write_text("written")
        return "ran"

    out = tmp_path / "model"
    with run_lock(out):
        monkeypatch.setenv("RANK", "1")
        assert write(out) == "ran"  # rank 1 writes nothing of its own and waits for no lock
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(InputError, match=BUSY):
            write(out)


def test_where_files_cannot_be_locked_the_run_goes_on_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.warns(UserWarning, match="files cannot be locked here"), run_lock(tmp_path / "nfs") as out:
        (out / "written").write_text("x")
    assert (tmp_path / "nfs" / "written").is_file()
