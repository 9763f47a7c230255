"""Size and archive checks made before a checkpoint is read: a damaged zip archive is refused."""
from __future__ import annotations

import zipfile
from pathlib import Path

from .errors import CheckpointError, PathLike

ZIP_MAGIC = b"PK"  # torch.save (PyTorch >= 1.6): a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format: pickles, protocol 2 and up


def check_archive(path: PathLike) -> None:
    """Refuse a damaged torch.save zip archive: every member must pass its CRC-32 check.

    torch.load does not check the CRC-32s the writer stores, so bytes flipped inside a tensor load as
    wrong weights without a word. Files in torch's legacy (non-zip) format carry no checksum and pass.
    Raises CheckpointError naming the file and the damaged member.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(len(ZIP_MAGIC)) == ZIP_MAGIC:  # starts as a zip but has no directory at its end: cut short
                raise CheckpointError(f"checkpoint {path} is damaged: a zip archive without its end (truncated, "
                                      f"{path.stat().st_size:,} bytes), e.g. an interrupted download. Download or "
                                      "copy the file again.")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: its zip archive cannot be read ({err}). "
                              "Download or copy the file again.") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: member {bad} fails its CRC-32 check (bytes changed "
                              "after it was written, e.g. a broken download or disk). Download or copy the file again.")
