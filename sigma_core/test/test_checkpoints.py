"""Checkpoint loading: published Sigma, VMamba ImageNet (new and old key names), our own format, clear errors."""
import json
import os
import pickle
import re
import shutil

import pytest
import torch
from reference_data import reference_file, write_published_checkpoint

from sigma_core import ModalityScaling, SigmaConfig, build_sigma, load_checkpoint, load_weights, save_checkpoint
from sigma_core.checkpoints import (
    CheckpointError,
    DatasetNeededError,
    LfsPointerError,
    default_palette,
    infer_sigma_config,
    load_model,
    read_checkpoint,
)
from sigma_core.data.dataset import DatasetSpec

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


class _RunsAShellCommand:
    def __reduce__(self):
        return (os.system, ("echo never run",))


def test_files_naming_a_blocked_module_are_called_code_not_damage(tmp_path):
    """Issue 21 attack (second pass): a pickle calling os.system (torch blocks the module outright, with another
    wording) was called 'not a torch.save file or damaged: download it again', in the legacy format too."""
    torch.save({"model": {}, "x": _RunsAShellCommand()}, tmp_path / "evil.pth")
    with open(tmp_path / "evil_legacy.pth", "wb") as f:
        pickle.dump({"x": _RunsAShellCommand()}, f, protocol=2)
    for name in ("evil.pth", "evil_legacy.pth"):
        with pytest.raises(CheckpointError, match=rf"{name}: it holds Python objects such as posix\.system.*never run"):
            read_checkpoint(tmp_path / name)


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
    with pytest.raises(CheckpointError, match="not a sigma_core checkpoint.*load_model.*sigma-import"):
        load_checkpoint(tmp_path / "published.pth")
    # Our own checkpoint also loads through load_weights (e.g. to fine-tune from it).
    save_checkpoint(tmp_path / "ours.pt", model)
    assert load_weights(build_sigma(SigmaConfig(num_classes=3, **SMALL)), tmp_path / "ours.pt").kind == "sigma_core"


# --- published checkpoints in every tool: architecture from the keys, the rest from a dataset -------------

PARITY_CONFIG = SigmaConfig(depths=(1, 1, 2, 1), dims=32, decoder_depths=(4, 4, 4), num_classes=9)


def test_published_file_loads_with_a_preset_and_gives_the_fixture_logits(published, fixture):
    model, meta = load_model(published, dataset="mfnet")
    assert meta.config == PARITY_CONFIG and not model.training
    assert meta.class_names[:3] == ["unlabeled", "car", "person"] and len(meta.palette) == 9
    assert meta.palette[1] == [64, 0, 128] and meta.modality == "thermal" and meta.input_size == (480, 640)
    assert meta.normalization["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert any("inferred from its keys" in n and "depths 1-1-2-1, width 32" in n for n in meta.notes)
    with torch.inference_mode():
        torch.testing.assert_close(model(fixture["rgb"], fixture["x"]), fixture["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["bare", "model", "state_dict", "bare_module"])
def test_every_published_layout_loads(tmp_path, fixture, layout):
    state = fixture["state_dict"]
    if layout.endswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}
    obj = state if layout.startswith("bare") else {layout: state, "epoch": 3}
    torch.save(obj, tmp_path / "sigma.pth")
    model, _ = load_model(tmp_path / "sigma.pth", dataset="mfnet")
    with torch.inference_mode():
        torch.testing.assert_close(model(fixture["rgb"], fixture["x"]), fixture["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("reference,variant,classes", [("tiny", "tiny", 9), ("small", "small", 9),
                                                       ("base", "base", 9), ("tiny_nyu", "tiny", 40)])
def test_architecture_inferred_from_published_key_maps(reference, variant, classes):
    shapes = json.loads(reference_file(f"keys_sigma_{reference}.json").read_text())["shapes"]
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}  # shapes only, no memory
    cfg = infer_sigma_config(state)
    assert cfg == SigmaConfig(variant=variant, num_classes=classes)


@pytest.mark.parametrize("sizes", [
    dict(depths=(1, 2, 3, 1), dims=48, decoder_depths=(2, 1, 3)),  # a researcher's shrunk model
    dict(depths=(2, 2, 5, 2), dims=64, decoder_depths=(4, 4, 4), d_state=8, fusion_d_state=2, decoder_d_state=3),
])
def test_architecture_inferred_for_custom_sizes(sizes):
    built = SigmaConfig(num_classes=7, **sizes)
    state = build_sigma(built, device="meta").state_dict()
    inferred = infer_sigma_config(state)
    assert inferred.variant is None
    for name in ("depths", "dims", "decoder_depths", "d_state", "fusion_d_state", "decoder_d_state", "ssm_ratio",
                 "num_classes"):
        assert getattr(inferred, name) == getattr(built, name), name


def test_incomplete_state_dict_names_the_missing_key(fixture):
    state = {k: v for k, v in fixture["state_dict"].items() if not k.startswith("decode_head.layers_up.2.upsample")}
    with pytest.raises(CheckpointError, match=r"x\.pth: its keys do not fit .*layers_up\.2\.upsample.* missing"):
        infer_sigma_config(state, "x.pth")


def test_dataset_preset_names_as_typed_in_launch_files():
    """Spaces around or inside a preset name (a YAML value, a launch argument) still name it; a typo is an
    error naming the presets."""
    from sigma_core.checkpoints import resolve_dataset

    assert resolve_dataset(" mfnet ").name == resolve_dataset("mfnet").name
    assert resolve_dataset("NYU Depth V2").name == resolve_dataset("nyudepthv2").name
    with pytest.raises(CheckpointError, match=r"'mfnett' is neither a known preset .*mfnet, pst900"):
        resolve_dataset("mfnett")


def test_dataset_from_yaml_folder_class_list_and_alias(tmp_path, published):
    spec = DatasetSpec(name="robot", classes=tuple(f"c{i}" for i in range(9)), modality="depth",
                       scaling=ModalityScaling("depth", max_range=6.0), image_size=(240, 320))
    spec.write_yaml(tmp_path / "robot")
    for dataset in (tmp_path / "robot" / "dataset.yaml", str(tmp_path / "robot"), spec):
        _, meta = load_model(published, dataset=dataset)
        assert meta.class_names[8] == "c8" and meta.modality == "depth" and meta.scaling.max_range == 6.0
        assert meta.input_size == (240, 320) and meta.palette == default_palette(9)
    names = tmp_path / "classes.txt"
    names.write_text("# my classes\n" + "\n".join(f"thing {i}" for i in range(9)) + "\n\n")
    _, meta = load_model(published, dataset=names)
    assert meta.class_names == [f"thing {i}" for i in range(9)] and meta.modality == "thermal"
    assert meta.input_size is None
    listed = tmp_path / "classes.yaml"
    listed.write_text("[a, b, c, d, e, f, g, h, i]\n")
    assert load_model(published, dataset=listed)[1].class_names[-1] == "i"
    with pytest.raises(CheckpointError, match="predicts 9 classes but dataset 'NYUDepthv2' has 40"):
        load_model(published, dataset="NYU-Depth-v2")


def test_depth_presets_give_depth_scaling_for_the_robot(tmp_path, fixture):
    state = dict(fixture["state_dict"])
    state["decode_head.output.weight"] = torch.randn(40, 32, 1, 1, generator=torch.Generator().manual_seed(4))
    path = write_published_checkpoint(tmp_path / "sigma_nyu.pth", state)
    _, meta = load_model(path, dataset="nyudepthv2")
    assert meta.num_classes == 40 and meta.class_names[0] == "wall" and meta.published
    assert meta.modality == "depth" and meta.scaling == ModalityScaling("depth")
    assert "inferred from its keys" in meta.notes[0] and "8-bit images" in meta.notes[1]


def test_published_file_without_dataset_names_the_presets(published, tmp_path):
    with pytest.raises(DatasetNeededError, match=r"sigma_published\.pth is a published Sigma checkpoint.*"
                                                 r"mfnet, pst900, nyudepthv2, sunrgbd"):
        load_model(published)
    with pytest.raises(CheckpointError, match=r"dataset 'mfnett' is neither a known preset nor an existing file"):
        load_model(published, dataset="mfnett")
    (tmp_path / "unnamed").mkdir()
    (tmp_path / "unnamed" / "dataset.yaml").write_text("name: unnamed\nmodality: depth\n")
    with pytest.raises(CheckpointError, match=r"dataset 'unnamed' names no classes"):
        load_model(published, dataset=tmp_path / "unnamed")


def test_dataset_for_our_own_checkpoint_is_ignored_with_a_warning(tmp_path):
    model = build_sigma(SigmaConfig(num_classes=3, **SMALL))
    ours = save_checkpoint(tmp_path / "ours.pt", model, class_names=["x", "y", "z"])
    _, meta = load_model(ours, dataset="mfnet")
    assert meta.class_names == ["x", "y", "z"]
    assert len(meta.warnings) == 1 and "dataset 'mfnet' ignored" in meta.warnings[0]
    assert not load_model(ours)[1].warnings


def test_vmamba_backbone_is_not_a_segmentation_model(tmp_path):
    state = build_sigma(SigmaConfig(**SMALL), device="meta").backbone.vssm.state_dict()
    path = tmp_path / "vssm.pth"
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError, match="VMamba ImageNet backbone .* cannot segment"):
        load_model(path, dataset="mfnet")


def test_other_variant_is_refused_naming_what_the_file_holds():
    from sigma_core.engine.builders import initialise_from

    shapes = json.loads(reference_file("keys_sigma_small.json").read_text())["shapes"]
    small = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    tiny = build_sigma(SigmaConfig(variant="tiny", num_classes=5), device="meta")
    # the training path (model.init) drops a head of another class count, but not another variant
    with pytest.raises(CheckpointError, match=r"holds Sigma-S \(encoder depths 2-2-27-2, width 96.*but the model "
                                              r"is Sigma-T .*depths differ.*model\.variant=small"):
        initialise_from(tiny, small)
    custom = build_sigma(SigmaConfig(num_classes=9, **SMALL)).state_dict()
    with pytest.raises(CheckpointError, match=r"holds a custom Sigma \(encoder depths 1-1-1-1, width 32.*"
                                              r"model is a custom Sigma \(encoder depths 1-1-2-1"):
        load_weights(build_sigma(PARITY_CONFIG, device="meta"), custom)


def test_vmamba_weights_of_another_size_are_refused():
    ref = json.loads(reference_file("keys_vssm_tiny_imagenet.json").read_text())["shapes"]
    state = {key: torch.empty(shape, device="meta") for key, shape in ref.items()}
    for j in range(9, 27):  # VMamba-S: 27 blocks in stage 3, otherwise the same shapes as VMamba-T
        for key, shape in ref.items():
            if key.startswith("layers.2.blocks.0."):
                state[key.replace("blocks.0.", f"blocks.{j}.")] = torch.empty(shape, device="meta")
    tiny = build_sigma(SigmaConfig(variant="tiny"), device="meta")
    with pytest.raises(CheckpointError, match=r"holds VMamba-S ImageNet weights \(vssm_small: depths 2-2-27-2.*"
                                              r"encoder is that of Sigma-T"):
        load_weights(tiny, {"model": state}, allow_new_classes=True)


def _flip_bytes(path, offset, count=4096):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xA5 for b in data))


def test_damaged_archive_is_refused_naming_the_file(tmp_path):
    model = build_sigma(SigmaConfig(num_classes=3, **SMALL))
    good = save_checkpoint(tmp_path / "good.pt", model, class_names=["x", "y", "z"])
    bad = tmp_path / "flipped.pt"
    shutil.copy(good, bad)
    _flip_bytes(bad, bad.stat().st_size // 2)  # inside the tensor data: torch.load alone would not notice
    with pytest.raises(CheckpointError, match=r"checkpoint .*flipped\.pt is damaged: member .* fails its CRC-32"):
        load_model(bad)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is damaged: a zip archive without its end"):
        load_model(truncated)


def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, fixture):
    """What users pass by mistake: an image, a NumPy array, a text/HTML page, an empty file, a cut-off
    legacy-format file. Each is one clear error naming the file, never 'it holds Python objects'."""
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "mask.png"), np.zeros((4, 4, 3), np.uint8))
    np.save(tmp_path / "weights.npy", np.zeros(3))
    (tmp_path / "page.pth").write_text("<!DOCTYPE html><html>Sign in to download</html>")
    (tmp_path / "notes.pth").write_text("epoch 500 miou 0.56\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    expected = {"mask.png": r"mask\.png is not a PyTorch checkpoint: .*\(a PNG image\)",
                "weights.npy": r"weights\.npy is not a PyTorch checkpoint: .*\(a NumPy \.npy array\)",
                "page.pth": r"page\.pth is not a PyTorch checkpoint: .*\(HTML or XML",
                "notes.pth": r"notes\.pth is not a PyTorch checkpoint: .*\(text\)",
                "empty.pth": r"empty\.pth is empty \(0 bytes\)"}
    for name, message in expected.items():
        with pytest.raises(CheckpointError, match=message) as info:
            load_model(tmp_path / name, dataset="mfnet")
        assert "Python objects" not in str(info.value)
    legacy = tmp_path / "legacy.pth"
    torch.save(fixture["state_dict"], legacy, _use_new_zipfile_serialization=False)
    model, _ = load_model(legacy, dataset="mfnet")  # the pre-1.6 format still loads
    cut = tmp_path / "legacy_cut.pth"
    cut.write_bytes(legacy.read_bytes()[: legacy.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*legacy_cut\.pth"):
        load_model(cut, dataset="mfnet")


def test_non_finite_weights_are_refused(tmp_path, fixture):
    state = dict(fixture["state_dict"])
    state["backbone.vssm.layers.2.blocks.1.op.Ds"] = state["backbone.vssm.layers.2.blocks.1.op.Ds"].clone()
    state["backbone.vssm.layers.2.blocks.1.op.Ds"][3] = float("nan")
    path = write_published_checkpoint(tmp_path / "nan.pth", state)
    with pytest.raises(CheckpointError, match=r"nan\.pth: weights hold NaN or infinite values "
                                              r"\(backbone\.vssm\.layers\.2\.blocks\.1\.op\.Ds\)"):
        load_model(path, dataset="mfnet")


@pytest.mark.parametrize("wrap", ["lightning", "ddp_twice"])
def test_training_wrapper_prefixes_are_stripped(tmp_path, fixture, wrap):
    """Issue 21, fault 9: Lightning's "model." and a twice-wrapped DDP's "module.module." were refused."""
    state = fixture["state_dict"]
    obj = ({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3} if wrap == "lightning"
           else {"model": {f"module.module.{k}": v for k, v in state.items()}})
    torch.save(obj, tmp_path / "wrapped.pth")
    model, meta = load_model(tmp_path / "wrapped.pth", dataset="mfnet")
    with torch.inference_mode():
        torch.testing.assert_close(model(fixture["rgb"], fixture["x"]), fixture["logits"], atol=1e-5, rtol=0)
