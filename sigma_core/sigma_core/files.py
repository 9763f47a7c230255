"""Our file I/O. Writes are atomic (bytes, text, images, torch objects): a reader (or a resumed run) sees the old
file or the new one, never half of one. YAML mappings are read with errors that name the file."""
from __future__ import annotations

import errno
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import cv2
import numpy as np
import yaml

from .yaml_loading import load_yaml

# What open() gives a new file under this process's umask (read once: reading it means setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def check_folder_can_be_made(folder: str | os.PathLike, what: str) -> None:
    """Raise ValueError (naming ``what``, e.g. "--out") when ``folder`` neither exists nor can be created: a file
    in the way, or a parent that cannot be written. Call it before long work whose results go there."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is a file" if not existing.is_dir() else "is not writable"
        raise ValueError(f"{what} {folder} cannot be created: {existing} {why}; give a folder that can be written")


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of keys a YAML file holds; an empty file gives {}.

    Raises ValueError naming the file when it is not valid YAML or holds something else (a list, a bare
    value); OSError (e.g. FileNotFoundError) as reading the file raises it.
    """
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML; fix it where the parser stopped: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of keys (key: value lines), got a {type(data).__name__}")
    return data


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path``, on error it is removed.

    A symbolic link at ``path`` is the user's (we write files, never links), even a dangling one that
    ``exists()`` calls absent: FileExistsError naming it, rather than replacing the link with our file.
    """
    path = Path(path)
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link (to {os.readlink(path)}), not a file this tool wrote: "
                              "left as it is; give the path of a new file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private; the result should read like any file we write
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save ``obj`` to ``path`` atomically; a Ctrl-C or SIGTERM meanwhile takes effect once the file is whole."""
    import torch  # here only: the other writers serve tools that run without torch (ONNX deployments)

    with stop_signals_held(), atomic_open(path, "wb") as f:  # the file is renamed into place before a held stop
        torch.save(obj, f)
    return Path(path)


def place_new_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move the finished file ``src`` to ``dst``, a new name in the same folder, atomically and never replacing
    anything: FileExistsError if ``dst`` exists (or appears meanwhile); ``src`` is gone on success.

    A hard link then unlinking ``src``; on filesystems without hard links (FAT/exFAT, some network and FUSE
    mounts: EPERM, EOPNOTSUPP, ...) Linux's renameat2(RENAME_NOREPLACE), and where that is missing too the
    name is claimed with O_EXCL and ``src`` renamed over that empty claim (a reader may see it empty for that
    instant, never another file).
    """
    src, dst = Path(src), Path(dst)
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
    else:
        src.unlink()
        return dst
    if not _rename_noreplace(src, dst):
        os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _FILE_MODE))  # FileExistsError if taken
        try:
            os.replace(src, dst)
        except BaseException:
            dst.unlink(missing_ok=True)  # our empty claim only
            raise
    return dst


# errno of os.link where the filesystem has no hard links (Linux vfat: EPERM; others: the not-supported family)
_NO_HARD_LINKS = {getattr(errno, name) for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EMLINK", "EXDEV")
                  if hasattr(errno, name)}


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """renameat2(src, dst, RENAME_NOREPLACE) through libc: True when done, False where the C library or the
    filesystem lacks it; FileExistsError if ``dst`` exists, other OSErrors as raised."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS) or err in _NO_HARD_LINKS - {errno.EXDEV}:
        return False
    raise OSError(err, os.strerror(err), str(dst)) if err != errno.EEXIST else FileExistsError(
        err, os.strerror(err), str(dst))


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Within the block SIGINT/SIGTERM are recorded, then handed to the handler they had when the block ends.

    A KeyboardInterrupt raised inside torch.save's native zip writer (from its Python write callback) left it
    inconsistent: "enforce fail at inline_container.cc ... unexpected pos", or a hang with more torch threads.
    Only in the main thread (the only one Python runs signal handlers in)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        handler = previous[held[0]]
        if callable(handler):
            handler(held[0], None)
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), held[0])


def atomic_write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Encode ``image`` in the format of the path's extension and write it atomically.

    image: OpenCV layout, (H, W) or (H, W, 3/4) in BGR(A) order; uint8/uint16 for PNG, float32 for TIFF.
    PNG uses compression level 1: lossless like any level, and much faster to write than the default.
    Raises OSError naming the file when OpenCV cannot encode the array.
    """
    path = Path(path)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if path.suffix.lower() == ".png" else []
    try:
        ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(image), params)
    except cv2.error:  # unsupported channel count or dtype
        ok = False
    if not ok:
        raise OSError(f"OpenCV cannot encode {path} from a {image.shape} {image.dtype} array: PNG takes 1, 3 or 4 "
                      "channels of uint8/uint16, TIFF also float32")
    return atomic_write_bytes(path, buf.tobytes())
