import errno
import os
import signal

import cv2
import numpy as np
import pytest

from sigma_core import files
from sigma_core.files import (
    atomic_open,
    atomic_torch_save,
    atomic_write_image,
    atomic_write_text,
    place_new_file,
    read_yaml_mapping,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "data.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.txt"]


def test_written_files_get_the_permissions_of_a_plain_write(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_torch_save_round_trips(tmp_path):
    import torch

    path = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "x.pt")
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2]


def test_images_round_trip_losslessly_by_extension(tmp_path):
    mono16 = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300
    depth = np.linspace(0.0, 9.5, 12 * 16, dtype=np.float32).reshape(12, 16)
    depth[0, 0] = np.nan
    np.testing.assert_array_equal(cv2.imread(str(atomic_write_image(tmp_path / "a" / "t.png", mono16)),
                                             cv2.IMREAD_UNCHANGED), mono16)
    np.testing.assert_array_equal(cv2.imread(str(atomic_write_image(tmp_path / "d.tiff", depth)),
                                             cv2.IMREAD_UNCHANGED), depth)
    with pytest.raises(OSError, match="x.png"):
        atomic_write_image(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    assert not (tmp_path / "x.png").exists()


def test_yaml_mapping_errors_name_the_file(tmp_path):
    assert read_yaml_mapping(atomic_write_text(tmp_path / "ok.yaml", "a: 1\nb: [2, 3]\n")) == {"a": 1, "b": [2, 3]}
    assert read_yaml_mapping(atomic_write_text(tmp_path / "empty.yaml", "")) == {}
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        read_yaml_mapping(atomic_write_text(tmp_path / "broken.yaml", "a: [1\n"))
    with pytest.raises(ValueError, match="list.yaml must hold a mapping.*got a list"):
        read_yaml_mapping(atomic_write_text(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(FileNotFoundError):
        read_yaml_mapping(tmp_path / "missing.yaml")


def test_a_symbolic_link_at_an_output_path_is_left_alone_even_dangling(tmp_path):
    """Issue 21 attack: every tool checked its outputs with exists(), which follows links: a dangling link of the
    user's (``sigma-synth describe dang.yaml``, dang.yaml -> a file not made yet) was replaced by our file."""
    import subprocess
    import sys

    (tmp_path / "precious.txt").write_text("mine")
    (tmp_path / "dang.yaml").symlink_to(tmp_path / "not_yet")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "precious.txt")
    for name in ("dang.yaml", "link.yaml"):
        run = subprocess.run([sys.executable, "-m", "sigma_core.cli.synth", "describe", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert (tmp_path / name).is_symlink()
    assert "symbolic link" in run.stderr or "exists" in run.stderr
    assert not (tmp_path / "not_yet").exists() and (tmp_path / "precious.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="dang.yaml is a symbolic link"):
        atomic_write_text(tmp_path / "dang.yaml", "x")


class _SignalsWhilePickled:
    """Sends the process a SIGINT while torch.save pickles it, i.e. inside torch's native zip writer."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (int, (7,))


def test_ctrl_c_during_a_checkpoint_save_takes_effect_once_the_file_is_whole(tmp_path):
    """sigma-train stopped with "enforce fail at inline_container.cc ... unexpected pos" (or hung) when Ctrl-C
    arrived while it saved a checkpoint."""
    import torch

    path = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"x": torch.zeros(100_000), "bomb": _SignalsWhilePickled()}, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded["bomb"] == 7 and loaded["x"].shape == (100_000,)


@pytest.mark.parametrize("filesystem", ["hard links", "no hard links", "no hard links, no renameat2"])
def test_a_finished_file_is_placed_without_ever_replacing_one(tmp_path, monkeypatch, filesystem):
    """place_new_file (sigma-export's last step) moves the finished file to its new name, and refuses an existing
    one leaving both files as they were: with hard links, on a filesystem without them (os.link failing with
    vfat's EPERM: renameat2 RENAME_NOREPLACE), and where renameat2 is missing too (an O_EXCL claim)."""
    if filesystem != "hard links":
        def no_link(src, dst):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))

        monkeypatch.setattr(os, "link", no_link)
    if filesystem == "no hard links, no renameat2":
        monkeypatch.setattr(files, "_rename_noreplace", lambda src, dst: False)
    partial, out = tmp_path / ".model.onnx.partial-1", tmp_path / "model.onnx"
    partial.write_bytes(b"new")
    assert place_new_file(partial, out) == out
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert out.stat().st_mode & 0o777 == files._FILE_MODE
    partial.write_bytes(b"newer")
    with pytest.raises(FileExistsError):
        place_new_file(partial, out)
    assert out.read_bytes() == b"new" and partial.read_bytes() == b"newer"
