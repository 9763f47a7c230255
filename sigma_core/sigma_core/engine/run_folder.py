"""The files of a training run folder: resumable checkpoints, best.pt, the CSV logs, stale temporaries.

A run folder holds ``config.yaml``, ``epoch_NNNN.pt`` checkpoints (our self-describing format, loadable
by the node) each with an ``epoch_NNNN.state.pt`` beside it (optimiser, scaler, RNG states, progress),
``best.pt``, ``train_log.csv`` (per iteration), ``epochs.csv`` (per epoch) and ``tensorboard/``.
The state file is written last: it is the commit point that makes an epoch resumable.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Optional

import torch

from ..files import atomic_write_text

CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})\.pt$")
BEST = "best.pt"
# atomic_open's temporaries of the files a run writes: ".<name>.<8 random characters>.tmp" beside the file.
TEMPORARY_RE = re.compile(r"^\.(config\.yaml|train_log\.csv|epochs\.csv|training_curves\.png|best\.pt"
                          r"|epoch_\d{4,}(\.state)?\.pt)\.[a-z0-9_]{8}\.tmp$")


def state_path_for(checkpoint: Path) -> Path:
    """The training-state file beside a resumable checkpoint: epoch_0003.pt -> epoch_0003.state.pt."""
    return Path(checkpoint).with_suffix(".state.pt")


def checkpoint_path(out_dir: Path, epoch: int) -> Path:
    return Path(out_dir) / f"epoch_{epoch:04d}.pt"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete resumable checkpoints (epoch_NNNN.pt with its .state.pt) in out_dir as (epoch, path), oldest first."""
    found = []
    for p in Path(out_dir).glob("epoch_*.pt"):
        m = CHECKPOINT_RE.match(p.name)
        if m and state_path_for(p).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(out_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` resumable checkpoints (and their state files)."""
    found = list_checkpoints(out_dir)
    doomed = [p for _, p in found[: max(len(found) - keep_last, 0)]]
    for p in doomed:
        state_path_for(p).unlink(missing_ok=True)  # state first: a half-deleted pair is never listed as resumable
        p.unlink(missing_ok=True)
    return doomed


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporaries a run's atomic writes leave when it is killed mid-write: only files named like
    atomic_open's temporaries of the run's own files, in ``out_dir`` itself (anything else there is left alone)."""
    stale = [p for p in Path(out_dir).iterdir() if p.is_file() and TEMPORARY_RE.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_checkpoint(path: Path, model: torch.nn.Module, info: Any, extra: dict[str, Any]) -> None:
    """Our self-describing checkpoint (the node loads it directly); ``extra`` is plain data."""
    from ..checkpoints import save_checkpoint

    save_checkpoint(path, model, model.config, class_names=list(info.class_names), modality=info.scaling.modality,
                    palette=info.palette, scaling=info.scaling, extra=extra)


def recorded_training(path: Path) -> Optional[dict[str, Any]]:
    """The ``training`` record (epoch, miou, ...) a checkpoint of ours holds; None when there is none."""
    from ..checkpoints import CheckpointError, read_checkpoint, read_meta

    try:
        return read_meta(read_checkpoint(path), str(path)).extra.get("training")
    except (CheckpointError, OSError):
        return None


def read_training_state(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights of the resumable checkpoint ``path`` into ``model``; return its training state.

    Raises FileNotFoundError when ``path`` is missing, ValueError when its state file is.
    """
    from ..checkpoints import load_weights

    path = Path(path)
    state_file = state_path_for(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    if not state_file.is_file():
        raise ValueError(f"{path} has no training state beside it ({state_file.name} is missing): resume from an "
                         "epoch_NNNN.pt written by sigma-train, or start from it with model.init=...")
    load_weights(model, path, strict=True)
    return torch.load(state_file, map_location="cpu", weights_only=True)


class CsvLog:
    """Append-only CSV with a header; on resume, rows past the resume point are dropped first (atomically)."""

    def __init__(self, path: Path, columns: list[str], truncate_after: Optional[tuple[str, int]] = None,
                 fresh: bool = False):
        self.path = Path(path)
        self.columns = columns
        rows: list[dict[str, str]] = []
        if self.path.exists() and not fresh:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            if truncate_after is not None:
                key, limit = truncate_after
                rows = [r for r in rows if r.get(key, "") != "" and int(float(r[key])) <= limit]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, text.getvalue())  # a kill while truncating keeps the old log whole

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)
