"""sigma-import: a published Sigma checkpoint becomes our self-describing checkpoint with identical logits."""
import subprocess
import sys

import pytest
import torch

from sigma_core.checkpoints import load_checkpoint, load_model
from sigma_core.cli.import_checkpoint import main


def test_import_writes_our_checkpoint_with_identical_logits(tmp_path, published, fixture, capsys):
    out = tmp_path / "sigma_mfnet.pt"
    assert main([str(published), "--dataset", "mfnet", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "inferred from its keys" in printed and f"wrote {out}" in printed and "checkpoint:=" in printed
    ours, meta = load_checkpoint(out)  # no dataset needed any more
    direct, direct_meta = load_model(published, dataset="mfnet")
    assert meta.class_names == direct_meta.class_names and meta.palette == direct_meta.palette
    assert meta.input_size == (480, 640) and meta.scaling == direct_meta.scaling
    assert meta.extra == {"imported_from": str(published), "dataset": "MFNet"}
    with torch.inference_mode():
        logits = ours(fixture["rgb"], fixture["x"])
        assert torch.equal(logits, direct(fixture["rgb"], fixture["x"]))
    torch.testing.assert_close(logits, fixture["logits"], atol=1e-5, rtol=0)


def test_half_weights_halve_the_file(tmp_path, published, fixture):
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    assert main([str(published), "-d", "mfnet", "-o", str(full)]) == 0
    assert main([str(published), "-d", "mfnet", "-o", str(half), "--half"]) == 0
    assert half.stat().st_size < 0.6 * full.stat().st_size
    model, _ = load_checkpoint(half)
    with torch.inference_mode():
        torch.testing.assert_close(model(fixture["rgb"], fixture["x"]), fixture["logits"], atol=2e-2, rtol=0)


def test_import_never_overwrites_and_errors_are_one_line(tmp_path, published, capsys):
    out = tmp_path / "taken.pt"
    out.write_bytes(b"somebody else's file")
    with pytest.raises(SystemExit) as info:
        main([str(published), "--dataset", "mfnet", "-o", str(out)])
    assert info.value.code == 1 and out.read_bytes() == b"somebody else's file"
    assert "taken.pt exists; sigma-import never overwrites" in capsys.readouterr().err

    fresh = tmp_path / "fresh.pt"
    wrong = subprocess.run([sys.executable, "-m", "sigma_core.cli.import_checkpoint", str(published),
                            "--dataset", "sunrgbd", "-o", str(fresh)], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and wrong.stderr.strip().count("\n") == 0 and "Traceback" not in wrong.stderr
    assert "predicts 9 classes but dataset 'SUNRGBD' has 37" in wrong.stderr
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sigma_published.pth", "taken.pt"]

    with pytest.raises(SystemExit) as info:  # argparse: --dataset is required
        main([str(published), "-o", str(fresh)])
    assert info.value.code == 2 and "--dataset" in capsys.readouterr().err


def test_our_own_checkpoint_is_not_imported_again(tmp_path, published, capsys):
    ours = tmp_path / "ours.pt"
    assert main([str(published), "--dataset", "mfnet", "-o", str(ours)]) == 0
    with pytest.raises(SystemExit):
        main([str(ours), "--dataset", "mfnet", "-o", str(tmp_path / "again.pt")])
    assert "already a sigma_core checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "again.pt").exists()
