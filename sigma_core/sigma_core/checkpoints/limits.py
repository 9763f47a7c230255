"""Size and archive checks, made before anything of the size a file claims is read or built.

A checkpoint is small on disk but can claim a lot: tensors of stride 0 whose shapes imply billions
of parameters (a 0.17 MB file claiming 41 GB), a 2 KB file of ours recording a config 1536 wide, or
an archive member declaring 8 GiB of zeros. Each claim is checked here against a limit first:
- :func:`check_archive`: each zip member's declared size (from the archive's directory), then the
  CRC-32 of every member;
- :func:`check_state_size`: the parameter count the tensors' shapes imply;
- :func:`check_config_size`: the number of blocks a config describes (a 2 KB file naming 200,000 blocks
  took minutes to build even on "meta"), then the parameter count the network would have (counted on
  PyTorch's "meta" device, which allocates nothing).
The limit is :data:`DEFAULT_MAX_PARAMETERS` (500 M, four times Sigma-B's 121 M); the loaders take a
``max_parameters`` argument for larger custom networks.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Mapping

from .errors import CheckpointError, PathLike

DEFAULT_MAX_PARAMETERS = 500_000_000  # 2 GB of float32: four times Sigma-B (121 M parameters)
_MAX_BYTES_PER_PARAMETER = 8  # float64 weights are the widest a checkpoint stores
_ARCHIVE_SLACK = 64 << 20  # bytes: the pickle, metadata and small members beside the tensors
_INFLATE_RATIO = 100  # a compressed member inflating more than this is a bomb, not weights (they barely compress)
_INFLATE_FREE = 16 << 20  # bytes: small compressed members (a re-zipped pickle, metadata) pass
_MAX_BLOCKS = 256  # encoder + decoder blocks a config may describe: Sigma-B has 33 + 12


def _size(parameters: int) -> str:
    return f"{parameters:,} parameters ({parameters * 4 / 1e9:.1f} GB as float32)"


def _over_limit(source: str, claim: str, parameters: int, max_parameters: int) -> CheckpointError:
    return CheckpointError(
        f"{source}: {claim} {_size(parameters)}, above the limit of {_size(max_parameters)}: refused before "
        "allocating it (a damaged or hostile file, or a network far larger than Sigma-B's 121 M parameters). "
        "For a network that large, pass max_parameters= to load_model / load_checkpoint / load_weights")


def check_state_size(state: Mapping[str, Any], source: str, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> None:
    """CheckpointError if the tensors of ``state`` have more elements in all than ``max_parameters``.

    Counts shapes only (``numel``): a stride-0 tensor claims its full shape while its storage holds one value,
    and anything that reads it (a NaN check, a copy) would allocate that full shape.
    """
    total = sum(int(v.numel()) for v in state.values() if hasattr(v, "numel"))
    if total > max_parameters:
        big = max(state, key=lambda k: int(state[k].numel()) if hasattr(state[k], "numel") else 0)
        raise _over_limit(source, f"its tensors' shapes (largest: {big} {tuple(state[big].shape)}) imply", total,
                          max_parameters)


def check_config_size(cfg: Any, source: str, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> int:
    """The parameter count of the network ``cfg`` (a SigmaConfig) describes; CheckpointError above the limit.

    Built on the "meta" device (shapes only, nothing allocated; about 0.2 s for Sigma-B).
    """
    from ..models.sigma import build_sigma
    from .architecture import describe_config

    blocks = sum(cfg.depths) + sum(cfg.decoder_depths)
    if blocks > _MAX_BLOCKS:  # before building: even on "meta" each block takes about 1.5 ms to make
        raise CheckpointError(
            f"{source}: its config describes {describe_config(cfg)}, {blocks:,} blocks in all, above the limit of "
            f"{_MAX_BLOCKS} (Sigma-B has 45): refused before building it (a damaged or hostile file)")
    total = sum(int(v.numel()) for v in build_sigma(cfg, device="meta").state_dict().values())
    if total > max_parameters:
        raise _over_limit(source, f"its config describes {describe_config(cfg)}, which has", total, max_parameters)
    return total

ZIP_MAGIC = b"PK"  # torch.save (PyTorch >= 1.6): a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format: pickles, protocol 2 and up


def check_archive(path: PathLike, max_parameters: int = DEFAULT_MAX_PARAMETERS) -> None:
    """Refuse a damaged torch.save zip archive, or one whose members declare more than a checkpoint of
    ``max_parameters`` can hold; then every member must pass its CRC-32 check.

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
    max_bytes = max_parameters * _MAX_BYTES_PER_PARAMETER + _ARCHIVE_SLACK
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:  # before the CRC check, which would inflate every member
                big = max(members, key=lambda m: m.file_size)
                raise CheckpointError(
                    f"checkpoint {path} is {path.stat().st_size:,} bytes but its zip members declare {declared:,} "
                    f"bytes (largest: {big.filename}, {big.file_size:,} bytes), above the {max_bytes:,} bytes that "
                    f"{max_parameters:,} parameters need: refused unread (a damaged or hostile file; a network that "
                    "large needs max_parameters=)")
            inflating = [m for m in members if m.compress_type != zipfile.ZIP_STORED
                         and m.file_size > max(_INFLATE_FREE, _INFLATE_RATIO * m.compress_size)]
            if inflating:  # torch.save stores members as they are: a member packed 100:1 is not its tensor data
                m = max(inflating, key=lambda m: m.file_size)
                raise CheckpointError(
                    f"checkpoint {path}: member {m.filename} is compressed, {m.compress_size:,} bytes declaring "
                    f"{m.file_size:,}, which torch.save never writes (it stores tensors uncompressed): refused unread "
                    "(a damaged or hostile file). Re-save the state dict with torch.save")
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: its zip archive cannot be read ({err}). "
                              "Download or copy the file again.") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: member {bad} fails its CRC-32 check (bytes changed "
                              "after it was written, e.g. a broken download or disk). Download or copy the file again.")
