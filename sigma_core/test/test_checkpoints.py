"""Checkpoint loading: published Sigma, VMamba ImageNet (new and old key names), our own format, clear errors."""
import json
import os
import re

import pytest
import torch
from reference_data import reference_file

from sigma_core import ModalityScaling, SigmaConfig, build_sigma, load_checkpoint, load_weights, save_checkpoint
from sigma_core.checkpoints import CheckpointError, LfsPointerError, default_palette

SMALL = dict(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1))



@pytest.fixture(scope="module")
def tiny_model():
    return build_sigma(SigmaConfig(variant="tiny", num_classes=9))


def _old_vmamba_name(key: str) -> str:
    """Current VMamba key -> the older releases' name (the inverse of the renames load_weights applies)."""
    key = re.sub(r"^patch_embed\.0\.", "patch_embed.proj.", key)
    key = re.sub(r"^patch_embed\.2\.", "patch_embed.norm.", key)
    key = re.sub(r"^(layers\.\d+\.blocks\.\d+)\.norm\.", r"\1.ln_1.", key)
    key = re.sub(r"^(layers\.\d+\.blocks\.\d+)\.op\.", r"\1.self_attention.", key)
    return re.sub(r"^classifier\.(norm|head)\.", r"\1.", key)


@pytest.mark.parametrize("naming", ["current", "old"])
def test_vmamba_imagenet_checkpoint_loads_into_encoder(tmp_path, tiny_model, naming):
    ref = json.loads(reference_file("keys_vssm_tiny_imagenet.json").read_text())
    # Each tensor gets a distinct constant so we can check it landed under the right name.
    state = {key: torch.full(shape, float(i) / 1000) for i, (key, shape) in enumerate(ref["shapes"].items())}
    if naming == "old":
        state = {_old_vmamba_name(k): v for k, v in state.items()}
        assert "patch_embed.proj.weight" in state and "layers.0.blocks.0.ln_1.weight" in state
        assert "layers.0.blocks.0.self_attention.in_proj.weight" in state and "head.weight" in state
    path = tmp_path / "vssm_tiny.pth"
    torch.save({"model": state, "epoch": 292}, path)

    report = load_weights(tiny_model, path)
    assert report.kind == "vmamba_imagenet"
    assert sorted(report.dropped) == sorted(k for k in state if "head" in k or k.startswith(("norm.", "classifier.")))
    assert len(report.dropped) == 4 and not report.unexpected
    outnorms = [f"backbone.vssm.outnorm{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert sorted(report.missing) == sorted(outnorms)
    assert len(report.loaded) == len(ref["shapes"]) - 4
    params = tiny_model.state_dict()
    for i, (key, _) in enumerate(ref["shapes"].items()):
        target = ref["imagenet_key_to_sigma_key"].get(key)
        if target is not None:
            assert torch.all(params[target] == float(i) / 1000), key
    if naming == "old":
        assert report.renamed["layers.2.blocks.8.ln_1.weight"] == "layers.2.blocks.8.norm.weight"


def test_published_sigma_checkpoint_with_module_prefix(tmp_path):
    fixture = torch.load(reference_file("parity_small.pt"), map_location="cpu", weights_only=True)
    path = tmp_path / "sigma_published.pth"
    torch.save({"model": {"module." + k: v for k, v in fixture["state_dict"].items()}, "epoch": 3}, path)
    model = build_sigma(SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=9))
    report = load_weights(model, path)
    assert report.kind == "sigma" and not report.missing and not report.unexpected and not report.dropped
    for key, value in model.state_dict().items():
        assert torch.equal(value, fixture["state_dict"][key]), key


def test_shape_mismatch_names_key_and_shapes():
    fixture = torch.load(reference_file("parity_small.pt"), map_location="cpu", weights_only=True)
    model = build_sigma(SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=5))
    with pytest.raises(CheckpointError, match=r"decode_head\.output\.weight: checkpoint \(9, 32, 1, 1\) vs model "
                                              r"\(5, 32, 1, 1\)"):
        load_weights(model, fixture["state_dict"])
    report = load_weights(model, fixture["state_dict"], allow_new_classes=True)
    assert report.dropped == ["decode_head.output.weight"] and report.missing == ["decode_head.output.weight"]


def test_lfs_pointer_is_detected(tmp_path):
    pointer = tmp_path / "vssmtiny_dp01_ckpt_epoch_292.pth"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n"
                       "oid sha256:4d7b0a6c2f0e1b8e9a3c5d7f9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d\n"
                       "size 91649482\n")
    model = build_sigma(SigmaConfig(**SMALL))
    with pytest.raises(LfsPointerError, match=r"Git LFS pointer.*91,649,482 bytes.*git lfs pull"):
        load_weights(model, pointer)


class _NotPlainData:
    pass


def test_files_that_would_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _NotPlainData()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: it holds Python objects.*_NotPlainData.*never run code"):
        load_weights(build_sigma(SigmaConfig(**SMALL)), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(build_sigma(SigmaConfig(**SMALL)), tmp_path / "absent.pth")


def test_save_then_load_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(1)
    cfg = SigmaConfig(num_classes=4, **SMALL)
    model = build_sigma(cfg).eval()
    scaling = ModalityScaling("depth", max_range=6.0)
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, cfg, class_names=["a", "b", "c", "d"],
                           modality="depth", scaling=scaling, input_size=(48, 64), extra={"miou": 0.5})
    assert os.listdir(path.parent) == ["model.pt"]  # written atomically: no temporary file left
    loaded, meta = load_checkpoint(path)
    assert not loaded.training and meta.config == cfg
    assert meta.class_names == ["a", "b", "c", "d"] and meta.palette == default_palette(4)
    assert meta.modality == "depth" and meta.scaling == scaling and meta.input_size == (48, 64)
    assert meta.normalization["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta.extra == {"miou": 0.5}
    rgb, x = torch.randn(1, 3, 40, 56), torch.randn(1, 3, 40, 56)
    with torch.inference_mode():
        assert torch.equal(model(rgb, x), loaded(rgb, x))


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    torch.manual_seed(2)
    model = build_sigma(SigmaConfig(num_classes=3, **SMALL)).eval()
    full = save_checkpoint(tmp_path / "full.pt", model, class_names=["x", "y", "z"])
    half = save_checkpoint(tmp_path / "half.pt", model, class_names=["x", "y", "z"], half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    rgb, x = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(rgb, x), model(rgb, x), atol=2e-2, rtol=1e-2)


def test_checkpoint_metadata_is_validated(tmp_path):
    model = build_sigma(SigmaConfig(num_classes=3, **SMALL))
    with pytest.raises(CheckpointError, match="2 class names for a model with 3 classes"):
        save_checkpoint(tmp_path / "m.pt", model, class_names=["a", "b"])
    with pytest.raises(CheckpointError, match="not plain data"):
        save_checkpoint(tmp_path / "m.pt", model, extra={"when": object()})
    with pytest.raises(CheckpointError, match="modality 'thermal' but scaling is for 'depth'"):
        save_checkpoint(tmp_path / "m.pt", model, modality="thermal", scaling=ModalityScaling("depth"))
    assert not (tmp_path / "m.pt").exists()
    torch.save({"model": model.state_dict()}, tmp_path / "published.pth")
    with pytest.raises(CheckpointError, match="not a sigma_core checkpoint.*load_weights"):
        load_checkpoint(tmp_path / "published.pth")
    # Our own checkpoint also loads through load_weights (e.g. to fine-tune from it).
    save_checkpoint(tmp_path / "ours.pt", model)
    assert load_weights(build_sigma(SigmaConfig(num_classes=3, **SMALL)), tmp_path / "ours.pt").kind == "sigma_core"
