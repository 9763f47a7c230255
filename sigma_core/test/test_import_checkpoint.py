"""sigma-import: a published Sigma checkpoint becomes our self-describing checkpoint with identical logits."""
import os
import subprocess
import sys

import pytest
import torch
from reference_data import write_published_checkpoint

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


def _lie_about_member_size(path, member_suffix: str, size: int) -> None:
    """Rewrite the uncompressed size the zip's central directory declares for one member."""
    import struct

    raw = bytearray(path.read_bytes())
    at = 0
    while (at := raw.find(b"PK\x01\x02", at + 1)) >= 0:
        name_len = struct.unpack("<H", raw[at + 28:at + 30])[0]
        if raw[at + 46:at + 46 + name_len].decode().endswith(member_suffix):
            raw[at + 24:at + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_checkpoints_claiming_huge_networks_are_refused_before_building(tmp_path, published, fixture):
    """Issue 21, fault 2, in sigma-import (the node and every tool load through the same load_model): a file of
    stride-0 tensors whose shapes imply 15 G parameters, our checkpoint recording a 1536-wide config, and an
    archive member declaring 4 GB are refused in seconds, naming the implied size; nothing is allocated."""
    import zipfile

    from sigma_core import SigmaConfig, build_sigma, save_checkpoint

    huge = SigmaConfig(depths=(2, 2, 27, 2), dims=1536, decoder_depths=(2, 2, 2), num_classes=9)
    strided = {k: torch.zeros(1, dtype=v.dtype).expand(v.shape)  # one stored value each, full shapes
               for k, v in build_sigma(huge, device="meta").state_dict().items()}
    files = {"strided.pth": write_published_checkpoint(tmp_path / "strided.pth", strided)}
    tiny_cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=9)
    ours = torch.load(save_checkpoint(tmp_path / "ours.pt", build_sigma(tiny_cfg), tiny_cfg), weights_only=True)
    ours["config"] = huge.to_dict()
    torch.save(ours, tmp_path / "wide_config.pt")
    files["wide_config.pt"] = tmp_path / "wide_config.pt"
    extra = tmp_path / "extra_member.pth"
    extra.write_bytes(published.read_bytes())
    with zipfile.ZipFile(extra, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("sigma_published/zeros.bin", b"\0" * (1 << 20))
    _lie_about_member_size(extra, "zeros.bin", 0xFFFFFFF0)  # 4.3 GB of zeros, as its directory says
    files["extra_member.pth"] = extra
    packed = tmp_path / "packed_member.pth"  # a true 64 MiB of zeros, deflated to 64 KiB: below the size limit
    packed.write_bytes(published.read_bytes())
    with zipfile.ZipFile(packed, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("sigma_published/zeros.bin", b"\0" * (64 << 20))
    files["packed_member.pth"] = packed
    assert files["strided.pth"].stat().st_size < 1_000_000  # small files, huge claims
    expected = {"strided.pth": "imply 15,137,462,272 parameters (60.5 GB as float32), above the limit of 500,000,000",
                "wide_config.pt": "which has 15,137,462,272 parameters (60.5 GB as float32), above the limit",
                "extra_member.pth": "(largest: sigma_published/zeros.bin, 4,294,967,280 bytes)",
                "packed_member.pth": "member sigma_published/zeros.bin is compressed"}
    for name, path in files.items():
        run = subprocess.run([sys.executable, "-m", "sigma_core.cli.import_checkpoint", str(path), "--dataset",
                              "mfnet", "-o", str(tmp_path / f"{name}.out.pt")], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert run.returncode == 1 and "Traceback" not in run.stderr, (name, run.stderr)
        assert expected[name] in run.stderr and run.stderr.strip().count("\n") == 0, (name, run.stderr)


def test_a_checkpoint_describing_too_many_blocks_is_refused_before_building(tmp_path):
    """Issue 21 attack (second pass): our 2 KB checkpoint whose config names 200,000 encoder blocks of the narrowest
    width (within the parameter limit block by block) was still being built on the "meta" device for the size check
    after 300 s (1.8 GB). Refused from the block count at once; here 20,000 blocks (30 s of building before)."""
    import time

    from sigma_core import SigmaConfig, build_sigma, save_checkpoint

    tiny = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=9)
    ours = torch.load(save_checkpoint(tmp_path / "ours.pt", build_sigma(tiny), tiny), weights_only=True)
    ours["config"]["depths"] = [20000, 1, 1, 1]
    torch.save(ours, tmp_path / "deep.pt")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.import_checkpoint", str(tmp_path / "deep.pt"),
                          "--dataset", "mfnet", "-o", str(tmp_path / "out.pt")], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0, run.stderr
    assert "20,006 blocks in all, above the limit of 256" in run.stderr and time.monotonic() - start < 20


def test_a_malformed_dataset_yaml_is_one_line_naming_the_file(tmp_path, published):
    """Issue 21, fault 4: was a yaml.parser traceback."""
    broken = tmp_path / "dataset.yaml"
    broken.write_text("classes: [a, b\n")
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.import_checkpoint", str(published), "--dataset",
                          str(broken), "-o", str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 1 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert f"dataset file {broken} is not valid YAML; fix it where the parser stopped" in run.stderr
    assert "line 2, column 1" in run.stderr and not (tmp_path / "out.pt").exists()
