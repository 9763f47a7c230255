"""Reading a checkpoint file: absent, empty, a Git LFS pointer, not a checkpoint, or holding code."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, LfsPointerError, PathLike
from .limits import DEFAULT_MAX_PARAMETERS, PICKLE_MAGIC, ZIP_MAGIC, check_archive

LFS_MAGIC = b"version https://git-lfs"


def read_checkpoint(path: PathLike, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> Any:
    """torch.load(path, weights_only=True) on CPU, with clear errors for absent files and LFS pointers.

    max_parameters: the zip members may declare no more than a checkpoint this large needs (see limits).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(LFS_MAGIC):
        text = head.decode("ascii", "replace")
        size = re.search(r"size (\d+)", text)
        real = f" (the real file has {int(size.group(1)):,} bytes)" if size else ""
        raise LfsPointerError(
            f"{path} is a Git LFS pointer file of {path.stat().st_size} bytes, not the checkpoint itself{real}: "
            "the repository was cloned without Git LFS. Fetch the real file with `git lfs install && git lfs pull` "
            "in that repository, or download the file itself (e.g. from the project's release or model page)."
        )
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy did not complete; "
                              "fetch the file again")
    if not head.startswith(ZIP_MAGIC) and not head.startswith(PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive (or, before PyTorch 1.6, a "
            f"pickle), but this file starts with {head[:8]!r}{_looks_like(head)}. Give the .pth/.pt file itself.")
    check_archive(path, max_parameters)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message suggests weights_only=False; we never do that, so say what is in the way instead.
        # torch words it "Unsupported global: GLOBAL m.f ..." or, for modules it blocks outright (os, subprocess,
        # builtins: what a malicious file names), "Trying to load unsupported GLOBAL posix.system whose module ..."
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err), re.IGNORECASE)
        if not found and "unsupported" not in str(err).lower():
            raise CheckpointError(f"cannot read checkpoint {path}: it is not a torch.save file or it is damaged "
                                  f"({str(err).splitlines()[0][:200]}). Download or copy the file again.") from err
        what = f" such as {found.group(1)}" if found else ""
        raise CheckpointError(
            f"{path}: it holds Python objects{what} besides tensors and plain data, and sigma_core loads "
            "checkpoints only with torch.load(weights_only=True) so that a file can never run code. Re-save "
            "just its state dict (torch.save(model.state_dict(), ...)) where you trust the file."
        ) from err
    except Exception as err:  # noqa: BLE001 - any other read failure gets the file name attached
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {err}. Is it a PyTorch checkpoint "
            "(torch.save), complete and not truncated?"
        ) from err


def _looks_like(head: bytes) -> str:
    """" (a PNG image)" etc. for the start of a file that is not a checkpoint, "" when unknown."""
    kinds = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"\x93NUMPY": "a NumPy .npy array",
             b"\x89HDF": "an HDF5 (Keras) file", b"<": "HTML or XML, e.g. a download page instead of the file",
             b"\x1f\x8b": "a gzip archive (unpack it first)", b"\x08": "possibly ONNX or TensorFlow protobuf",
             b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image",
             b"SQLite format 3": "an SQLite database (a ROS 2 bag?)", b"\x89MCAP": "an MCAP file (a ROS 2 bag?)",
             b"#ROSBAG": "a ROS 1 bag"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return f" ({kind})"
    try:
        head.decode("utf-8")
        return " (text)"
    except UnicodeDecodeError:
        return ""
