import pytest

from sigma_core.files import atomic_open, atomic_torch_save, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "data.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.txt"]


def test_torch_save_round_trips(tmp_path):
    import torch

    path = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "x.pt")
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2]
