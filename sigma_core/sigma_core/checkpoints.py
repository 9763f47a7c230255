"""Weights in and out: published Sigma checkpoints, VMamba ImageNet checkpoints, and our own checkpoints.

- :func:`load_model` is the one loader of every tool that runs a model (Segmenter, node,
  sigma-evaluate, sigma-import, replay evaluation, demo): our checkpoint as it is, or a
  published Sigma checkpoint whose architecture is inferred from its keys and shapes
  (:func:`infer_sigma_config`) and whose classes, palette, modality scaling and input size
  come from a dataset (:func:`resolve_dataset`: a preset, a dataset.yaml or a class list).
- :func:`load_weights` puts any of the three into a built model and reports what it did;
  a file holding another variant than the model is refused, naming the variant it holds.
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read our self-describing
  checkpoint: weights plus the config, class names, palette, modality and its scaling,
  input normalisation and input size, so a file alone is enough to run a model.

Every file is read with ``torch.load(weights_only=True)``: a downloaded checkpoint can
never run code. Our checkpoints therefore hold only tensors and plain data. A file whose
zip archive fails its CRC-32 check, or whose weights hold NaN/inf, is refused.
"""
from __future__ import annotations

import colorsys
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .config import VARIANTS, SigmaConfig
from .data.modality import ModalityScaling
from .data.normalize import IMAGENET_MEAN, IMAGENET_STD
from .files import atomic_torch_save

FORMAT = "sigma_core.checkpoint"
FORMAT_VERSION = 1
ENCODER_PREFIX = "backbone.vssm."
LFS_MAGIC = b"version https://git-lfs"
ZIP_MAGIC = b"PK"  # torch.save (PyTorch >= 1.6): a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format: pickles, protocol 2 and up

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file/key and what to do."""


class LfsPointerError(CheckpointError):
    """The file is a Git LFS pointer, not the checkpoint it points to."""


class NotOurCheckpointError(CheckpointError):
    """The file holds weights but not our format (e.g. a published Sigma or VMamba checkpoint)."""


class DatasetNeededError(CheckpointError):
    """A published Sigma checkpoint was given without the dataset that supplies its classes and input handling."""


@dataclass
class LoadReport:
    """What load_weights did. Keys are the model's state-dict keys.

    kind: "sigma" (published or bare Sigma state dict), "sigma_core" (ours) or "vmamba_imagenet".
    loaded: keys copied from the checkpoint. missing: model keys the checkpoint lacks (for a VMamba
    checkpoint only encoder keys count, e.g. ``backbone.vssm.outnorm0.weight``). unexpected: checkpoint
    keys the model has no place for. dropped: checkpoint keys left out on purpose (the ImageNet classifier,
    or a class head of another size with allow_new_classes). renamed: old VMamba names -> new names.
    """

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

        parts = [f"{self.source}: {self.kind} checkpoint, {len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "dropped"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name}: {head(keys)}")
        return "; ".join(parts)


# --- reading files -------------------------------------------------------------------------------------


def read_checkpoint(path: PathLike) -> Any:
    """torch.load(path, weights_only=True) on CPU, with clear errors for absent files and LFS pointers."""
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
    check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message suggests weights_only=False; we never do that, so say what is in the way instead.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if not found and "Unsupported" not in str(err):
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


def state_dict_of(obj: Any, source: str = "<state dict>") -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint object and its kind ("sigma_core", "sigma", "vmamba_imagenet").

    Accepts our format, {"model": sd}, {"state_dict": sd}, or a bare state dict; strips "module." prefixes.
    """
    kind = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        kind, obj = "sigma_core", obj["state_dict"]
    elif isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source}: found no state dict (expected tensors by name, bare or under 'model' / 'state_dict')"
        )
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    if kind is None:
        is_sigma = any(k.startswith(("backbone.", "decode_head.")) for k in state)
        is_vmamba = any(k.startswith(("layers.", "patch_embed.")) for k in state)
        if not is_sigma and not is_vmamba:
            raise CheckpointError(
                f"{source}: keys look neither like Sigma (backbone.*, decode_head.*) nor like VMamba "
                f"(patch_embed.*, layers.*); first keys: {list(state)[:5]}"
            )
        kind = "sigma" if is_sigma else "vmamba_imagenet"
    return state, kind


# Older VMamba releases name some modules differently; the published loader renames them like this.
_VMAMBA_RENAMES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def _vmamba_to_sigma_keys(state: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _VMAMBA_RENAMES:
            new = pattern.sub(repl, new)
        if new != key:
            report.renamed[key] = new
        if new.startswith("classifier."):
            report.dropped.append(key)  # the ImageNet head has no place in a segmentation model
            continue
        out[ENCODER_PREFIX + new] = value
    return out


# --- the architecture a state dict holds ------------------------------------------------------------------

_VARIANT_LABELS = {"nano": "Sigma-nano", "tiny": "Sigma-T", "small": "Sigma-S", "base": "Sigma-B"}
_ARCHITECTURE_FIELDS = ("depths", "dims", "decoder_depths", "d_state", "fusion_d_state", "decoder_d_state",
                        "ssm_ratio")
_ENCODER_BLOCK = re.compile(r"^backbone\.vssm\.layers\.(\d+)\.blocks\.(\d+)\.")
_DECODER_BLOCK = re.compile(r"^decode_head\.layers_up\.([123])\.blocks\.(\d+)\.")


def describe_config(cfg: SigmaConfig) -> str:
    """One line naming a network's variant and sizes, e.g. "Sigma-S (encoder depths 2-2-27-2, width 96, ...)"."""
    def dash(values: Sequence[int]) -> str:
        return "-".join(str(v) for v in values)

    label = _VARIANT_LABELS.get(cfg.variant, "a custom Sigma") if cfg.variant else "a custom Sigma"
    ratio = f", ssm_ratio {cfg.ssm_ratio:g}" if cfg.ssm_ratio != 2.0 else ""
    return (f"{label} (encoder depths {dash(cfg.depths)}, width {cfg.dims}; decoder depths {dash(cfg.decoder_depths)}; "
            f"d_state {cfg.d_state}, fusion {cfg.fusion_d_state}, decoder {cfg.decoder_d_state}{ratio}; "
            f"{cfg.num_classes} classes)")


def _count_blocks(state: Mapping[str, torch.Tensor], pattern: re.Pattern, stages: Sequence[int]) -> list[int]:
    found: dict[int, set[int]] = {}
    for key in state:
        m = pattern.match(key)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    counts = []
    for stage in stages:
        blocks = found.get(stage, set())
        if blocks != set(range(len(blocks))) or not blocks:
            raise CheckpointError(f"stage {stage} has blocks {sorted(blocks)}; expected 0..n-1 with n >= 1")
        counts.append(len(blocks))
    return counts


def infer_sigma_config(state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> SigmaConfig:
    """The SigmaConfig whose model has exactly the keys and shapes of ``state``, from those alone.

    state: a Sigma state dict with the published key names ("module." already stripped, see state_dict_of).
    Reads the encoder's depths (blocks per stage) and width (``patch_embed.0`` output channels), the
    d_state of the encoder, fusion and decoder scans, ssm_ratio, the decoder's depths and width
    (published: the encoder's width) and the class count (``decode_head.output``); a size that matches
    a named variant gets that name. Any depths/width the published code can build are accepted.
    Raises CheckpointError naming the key that is missing or does not fit when no such config exists.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{source}: key {key!r} is missing, so it is not a complete Sigma state dict")
        return tuple(state[key].shape)

    try:
        dims = shape("backbone.vssm.patch_embed.0.weight")[0]
        depths = _count_blocks(state, _ENCODER_BLOCK, range(4))
        decoder_depths = _count_blocks(state, _DECODER_BLOCK, (1, 2, 3))
    except CheckpointError as err:
        raise CheckpointError(f"{source}: cannot infer the Sigma architecture: {err}") from None
    a_logs = shape("backbone.vssm.layers.0.blocks.0.op.A_logs")  # (4 * d_inner, d_state)
    decoder_width = shape("decode_head.norm_up.weight")[0]
    if decoder_width != dims:
        raise CheckpointError(f"{source}: decoder width {decoder_width} differs from the encoder width {dims}; "
                              "the published Sigma (and sigma_core) ties them")
    sizes: dict[str, Any] = {
        "depths": tuple(depths), "dims": dims, "decoder_depths": tuple(decoder_depths), "d_state": a_logs[1],
        "fusion_d_state": shape("backbone.cross_mamba.0.op.CMA_ssm.A_log_1")[1],
        "decoder_d_state": shape("decode_head.layers_up.1.blocks.0.op.A_logs")[1],
        "ssm_ratio": a_logs[0] / 4 / dims,
        "num_classes": shape("decode_head.output.weight")[0],
    }
    variant = next((name for name, v in VARIANTS.items()
                    if all(tuple(v[k]) == sizes[k] if isinstance(v[k], tuple) else v[k] == sizes[k]
                           for k in ("depths", "dims", "decoder_depths"))
                    and (sizes["d_state"], sizes["fusion_d_state"], sizes["decoder_d_state"]) == (16, 4, 4)
                    and sizes["ssm_ratio"] == 2.0), None)
    try:
        if variant is not None:
            cfg = SigmaConfig(variant=variant, num_classes=sizes["num_classes"])
        else:
            cfg = SigmaConfig(**sizes)
    except ValueError as err:
        raise CheckpointError(f"{source}: the sizes its keys give are not a Sigma sigma_core builds: {err}") from None
    _check_keys_fit(cfg, state, source)
    return cfg


def _check_keys_fit(cfg: SigmaConfig, state: Mapping[str, torch.Tensor], source: str) -> None:
    from .models.sigma import build_sigma

    expected = {k: tuple(v.shape) for k, v in build_sigma(cfg, device="meta").state_dict().items()}
    problems = [f"{k} missing" for k in expected if k not in state]
    problems += [f"{k} unexpected" for k in state if k not in expected]
    problems += [f"{k} {tuple(state[k].shape)} instead of {shape}" for k, shape in expected.items()
                 if k in state and tuple(state[k].shape) != shape]
    if problems:
        more = f" ({len(problems)} in all)" if len(problems) > 4 else ""
        raise CheckpointError(f"{source}: its keys do not fit {describe_config(cfg)}, the network its sizes name: "
                              + "; ".join(problems[:4]) + more)


def _vmamba_sizes(state: Mapping[str, torch.Tensor]) -> Optional[tuple[tuple[int, ...], int, int]]:
    """(depths, width, d_state) of a VMamba encoder state dict with ``backbone.vssm.`` keys; None if incomplete."""
    try:
        dims = tuple(state[ENCODER_PREFIX + "patch_embed.0.weight"].shape)[0]
        depths = tuple(_count_blocks({k[len("backbone.vssm."):] if k.startswith(ENCODER_PREFIX) else k: v
                                      for k, v in state.items()},
                                     re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\."), range(4)))
        d_state = tuple(state[ENCODER_PREFIX + "layers.0.blocks.0.op.A_logs"].shape)[1]
    except (KeyError, CheckpointError, IndexError):
        return None
    return depths, dims, d_state


def _vmamba_label(depths: tuple[int, ...], dims: int) -> str:
    for name in ("tiny", "small", "base"):
        if (tuple(VARIANTS[name]["depths"]), VARIANTS[name]["dims"]) == (depths, dims):
            return f"VMamba-{name[0].upper()} ImageNet weights (vssm_{name}: depths {'-'.join(map(str, depths))}, " \
                   f"width {dims})"
    return f"VMamba ImageNet weights of depths {'-'.join(map(str, depths))}, width {dims}"


def _how_to_build(cfg: SigmaConfig) -> str:
    if cfg.variant is not None:
        return f"model.variant={cfg.variant} for sigma-train, build_sigma({cfg.variant!r}) in Python"
    return (f"model.variant=null model.depths=[{', '.join(map(str, cfg.depths))}] model.dims={cfg.dims} "
            f"model.decoder_depths=[{', '.join(map(str, cfg.decoder_depths))}] for sigma-train")


def _check_same_architecture(model: nn.Module, state: dict[str, torch.Tensor], kind: str, obj: Any,
                             source: str) -> None:
    """Refuse a file that holds another variant/size than ``model``, naming what the file holds."""
    built = getattr(model, "config", None)
    if not isinstance(built, SigmaConfig):
        return
    if kind == "vmamba_imagenet":
        sizes = _vmamba_sizes(state)
        if sizes is not None and sizes != (tuple(built.depths), built.dims, built.d_state):
            raise CheckpointError(
                f"{source} holds {_vmamba_label(sizes[0], sizes[1])}, d_state {sizes[2]}, but the model's encoder "
                f"is that of {describe_config(built)}: use the VMamba checkpoint of the model's size, or build "
                f"the model to fit the file")
        return
    try:
        held = SigmaConfig.from_dict(obj["config"]) if kind == "sigma_core" else infer_sigma_config(state, source)
    except (CheckpointError, KeyError, TypeError, ValueError):
        return  # incomplete or unusual: the key-by-key shape check below reports what does not fit
    fields_ = [f for f in _ARCHITECTURE_FIELDS if getattr(held, f) != getattr(built, f)]
    if fields_:
        raise CheckpointError(
            f"{source} holds {describe_config(held)}, but the model is {describe_config(built)} "
            f"({', '.join(fields_)} differ): build the model as the file's ({_how_to_build(held)}), "
            "or use a file of the model's variant")


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError if any floating-point tensor of ``state`` holds NaN or inf (naming them)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        head = ", ".join(bad[:4]) + (f", ... ({len(bad)} tensors in all)" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{source}: weights hold NaN or infinite values ({head}): the file is damaged or was saved from a "
            "diverged training run, and would give meaningless masks. Use another copy or an earlier checkpoint.")


# --- loading weights into a model ------------------------------------------------------------------------


def load_weights(
    model: nn.Module,
    src: Union[PathLike, Mapping[str, Any]],
    strict: bool = False,
    allow_new_classes: bool = False,
    source: Optional[str] = None,
) -> LoadReport:
    """Copy the weights of ``src`` into ``model`` (a Sigma from build_sigma) and report what happened.

    src: a path or an already loaded object: a published Sigma checkpoint (state dict under "model" or
        bare, with or without a DistributedDataParallel "module." prefix), a VMamba ImageNet checkpoint
        (goes into the encoder only: classifier dropped, old key names renamed), or our own checkpoint.
    strict: raise CheckpointError if anything is missing or unexpected.
    allow_new_classes: drop (instead of raising on) a class head whose size differs (fine-tuning to
        another class count); the head keeps its initialisation and is listed in report.dropped.
    source: the name messages use for an already loaded ``src`` (default "<state dict>").
    Raises CheckpointError for: a file holding another variant or size than the model (naming what it
    holds, e.g. Sigma-S weights into a Sigma-T; VMamba ImageNet weights of another size likewise), NaN/inf
    weights, other shape mismatches (naming every mismatched key and both shapes). Tensors are cast to
    the model's dtypes (a half-precision checkpoint loads into a float32 model).
    """
    if isinstance(src, Mapping):
        source, obj = source or "<state dict>", src
    else:
        source, obj = str(src), read_checkpoint(src)
    state, kind = state_dict_of(obj, source)
    report = LoadReport(source=source, kind=kind)
    if kind == "vmamba_imagenet":
        state = _vmamba_to_sigma_keys(state, report)
    _check_same_architecture(model, state, kind, obj, source)
    check_finite(state, source)
    target = model.state_dict()
    head_keys = {"decode_head.output.weight", "decode_head.output.bias"}
    mismatched = []
    to_load = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            if allow_new_classes and key in head_keys:
                report.dropped.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
        else:
            to_load[key] = value
    if mismatched:
        cfg = getattr(model, "config", None)
        built = f" (model built as {cfg.name}, {cfg.num_classes} classes)" if cfg is not None else ""
        raise CheckpointError(
            f"{source} does not fit the model{built}: {len(mismatched)} shape mismatches: " + "; ".join(mismatched)
            + ". Build the model with the checkpoint's variant/dims/depths and num_classes "
            "(or pass allow_new_classes=True to re-initialise only the class head)."
        )
    scope = ENCODER_PREFIX if kind == "vmamba_imagenet" else ""
    report.missing = [k for k in target if k.startswith(scope) and k not in to_load]
    report.loaded = list(to_load)
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"strict loading failed: {report}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        params.update(model.named_buffers())
        for key, value in to_load.items():
            params[key].copy_(value)
    return report


# --- our own checkpoint --------------------------------------------------------------------------------


def default_normalization() -> dict[str, list[float]]:
    """ImageNet mean/std for 0..1 values, applied to RGB and to the 3-channel-replicated modality alike."""
    return {"mean": [float(v) for v in IMAGENET_MEAN], "std": [float(v) for v in IMAGENET_STD]}


def default_palette(num_classes: int) -> list[list[int]]:
    """num_classes distinct, saturated [r, g, b] colours (0..255); class 0 is black (often 'unlabeled')."""
    colours = [[0, 0, 0]]
    golden = 0.618033988749895  # hue steps by the golden ratio stay apart for any count
    for i in range(1, num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * golden) % 1.0, 0.75 if i % 2 else 1.0, 1.0 if i % 3 else 0.8)
        colours.append([round(r * 255), round(g * 255), round(b * 255)])
    return colours[:num_classes]


@dataclass
class CheckpointMeta:
    """Everything a checkpoint says about its model besides the weights.

    config: the network; class_names: one per class id; palette: one [r, g, b] (0..255) per class;
    scaling: raw thermal/depth -> [0, 1] (its ``modality`` is "thermal" or "depth"); normalization:
    {"mean": [3], "std": [3]} for 0..1 inputs, both modalities; input_size: (H, W) the network runs at,
    or None for each image's own size; extra: free plain data (training run, metrics, ...).
    notes / warnings: what load_model inferred (a published file's architecture, its dataset) / ignored
    (a dataset given for our own checkpoint), for the tools to print or log; published: the metadata
    came from a dataset, not from the file. None of these three is saved.
    """

    config: SigmaConfig
    class_names: list[str]
    palette: list[list[int]]
    scaling: ModalityScaling
    normalization: dict[str, list[float]] = field(default_factory=default_normalization)
    input_size: Optional[tuple[int, int]] = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None
    notes: list[str] = field(default_factory=list)  # what load_model inferred (not saved)
    warnings: list[str] = field(default_factory=list)  # what load_model ignored (not saved)
    published: bool = False  # built by load_model from a published file and a dataset (not saved)

    @property
    def modality(self) -> str:
        return self.scaling.modality

    @property
    def num_classes(self) -> int:
        return self.config.num_classes


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    cfg: Optional[SigmaConfig] = None,
    class_names: Optional[Sequence[str]] = None,
    modality: str = "thermal",
    palette: Optional[Sequence[Sequence[int]]] = None,
    normalization: Optional[Mapping[str, Sequence[float]]] = None,
    extra: Optional[Mapping[str, Any]] = None,
    scaling: Optional[ModalityScaling] = None,
    input_size: Optional[Sequence[int]] = None,
    half: bool = False,
) -> Path:
    """Write our self-describing checkpoint atomically (temporary file, then os.replace). Returns the path.

    cfg: defaults to model.config. class_names: default "class_0" ... palette: default default_palette().
    scaling: defaults to ModalityScaling(modality); its modality must equal ``modality``.
    normalization: {"mean": [3], "std": [3]}, default ImageNet. input_size: (H, W) or None (native size).
    extra: plain data only (str, numbers, bool, None, lists, dicts), so the file loads with weights_only.
    half: store floating-point weights as float16 (half the size; load_checkpoint returns float32).
    """
    cfg = cfg if cfg is not None else getattr(model, "config", None)
    if not isinstance(cfg, SigmaConfig):
        raise ValueError("save_checkpoint needs the model's SigmaConfig (cfg=...)")
    k = cfg.num_classes
    class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
    palette = [list(map(int, c)) for c in palette] if palette is not None else default_palette(k)
    scaling = scaling if scaling is not None else ModalityScaling(modality=modality)
    normalization = {key: [float(v) for v in vals] for key, vals in (normalization or default_normalization()).items()}
    meta = CheckpointMeta(cfg, class_names, palette, scaling, normalization,
                          tuple(int(v) for v in input_size) if input_size is not None else None, dict(extra or {}))
    _validate_meta(meta, modality, source=str(path))
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        state[key] = value.half() if half and value.is_floating_point() else value.clone()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "state_dict": state,
        "class_names": meta.class_names,
        "palette": meta.palette,
        "scaling": scaling.to_dict(),
        "normalization": meta.normalization,
        "input_size": list(meta.input_size) if meta.input_size is not None else None,
        "extra": meta.extra,
    }
    return atomic_torch_save(payload, path)


def read_meta(obj: Mapping[str, Any], source: str = "<checkpoint>") -> CheckpointMeta:
    """CheckpointMeta from a loaded checkpoint object of our format."""
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise NotOurCheckpointError(
            f"{source} is not a sigma_core checkpoint (no format={FORMAT!r}); a published Sigma checkpoint loads "
            "with load_model(path, dataset=...) or converts with sigma-import; for VMamba weights build the model "
            "with build_sigma and use load_weights"
        )
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{source} has checkpoint format {obj['format_version']}, newer than this sigma_core "
                              f"reads ({FORMAT_VERSION}); update sigma_core")
    try:
        cfg = SigmaConfig.from_dict(obj["config"])
        scaling = ModalityScaling.from_dict(obj["scaling"])
        size = obj.get("input_size")
        meta = CheckpointMeta(
            config=cfg,
            class_names=list(obj["class_names"]),
            palette=[list(c) for c in obj["palette"]],
            scaling=scaling,
            normalization=dict(obj.get("normalization") or default_normalization()),
            input_size=tuple(size) if size is not None else None,
            extra=dict(obj.get("extra") or {}),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid sigma_core checkpoint metadata: {err}") from err
    _validate_meta(meta, scaling.modality, source)
    return meta


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu",
                    scan_backend: Optional[str] = None) -> tuple[nn.Module, CheckpointMeta]:
    """Our checkpoint -> (model in eval mode, float32, on ``device``; its CheckpointMeta).

    scan_backend: overrides the config's selective-scan backend (e.g. "cpu", "triton").
    """
    obj = read_checkpoint(path)
    return _build_and_load(obj, read_meta(obj, str(path)), scan_backend, device)


# --- any checkpoint a user has: ours, or published Sigma plus a dataset ------------------------------------

DatasetLike = Union[str, os.PathLike, "DatasetSpec"]  # noqa: F821 - sigma_core.data.dataset.DatasetSpec


def dataset_choices() -> str:
    """The dataset presets and file kinds ``dataset`` accepts, for messages."""
    from .data.dataset import PRESETS

    return f"a preset ({', '.join(PRESETS)}), a dataset.yaml (or its folder) or a class-list file (one name a line)"


def resolve_dataset(dataset: DatasetLike) -> Any:
    """A dataset as users name it -> its sigma_core.data.dataset.DatasetSpec.

    dataset: a preset name as users spell it ("mfnet", "PST900", "nyudv2", "NYU-Depth-v2", "sunrgbd"), a
        dataset.yaml (as written by sigma-extract / sigma-synth) or the folder holding one, a class-list
        file (a .txt with one class name per line, blank lines and # comments skipped, or a YAML list:
        thermal modality, 8-bit full-range scaling, default palette), or a DatasetSpec (returned as is).
    Raises CheckpointError when it is none of these or names no classes.
    """
    from .data.dataset import DATASET_YAML, PRESETS, DatasetSpec, preset_key
    from .files import read_yaml_mapping

    # As typed in a launch file or YAML: " mfnet", "NYU Depth V2" name the presets too.
    named = preset_key(dataset.strip().replace(" ", "")) if isinstance(dataset, str) else None
    if isinstance(dataset, DatasetSpec):
        spec = dataset
    elif named in PRESETS:
        spec = PRESETS[named]
    else:
        path = Path(dataset)
        if path.is_dir():
            path = path / DATASET_YAML
        if not path.is_file():
            raise CheckpointError(f"dataset {str(dataset)!r} is neither a known preset nor an existing file; "
                                  f"give {dataset_choices()}")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                loaded = yaml.safe_load(path.read_text())
                spec = (DatasetSpec.from_dict(read_yaml_mapping(path), source=str(path)) if isinstance(loaded, dict)
                        else _class_list_spec(path, loaded))
            else:
                lines = [line.strip() for line in path.read_text().splitlines()]
                spec = _class_list_spec(path, [line for line in lines if line and not line.startswith("#")])
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
            raise CheckpointError(f"dataset file {path} cannot be read: {err}") from err
    if not spec.classes:
        raise CheckpointError(f"dataset {spec.name!r} names no classes; add `classes:` to its dataset.yaml")
    return spec


def _class_list_spec(path: Path, names: Any) -> Any:
    from .data.dataset import DatasetSpec

    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise ValueError("a class list is one class name per line (or a YAML list of names)")
    return DatasetSpec(name=path.stem, classes=tuple(str(n) for n in names))


def meta_from_dataset(cfg: SigmaConfig, dataset: DatasetLike, source: str) -> CheckpointMeta:
    """CheckpointMeta of a published checkpoint from what a dataset says (classes, palette, scaling, size).

    Raises CheckpointError when the class counts of the file (cfg) and the dataset differ, naming both.
    """
    spec = resolve_dataset(dataset)
    classes = list(spec.classes)
    if len(classes) != cfg.num_classes:
        raise CheckpointError(
            f"{source} predicts {cfg.num_classes} classes but dataset {spec.name!r} has {len(classes)}: "
            "give the dataset the checkpoint was trained on")
    palette = [list(c) for c in spec.palette] if spec.palette is not None else default_palette(len(classes))
    scaling, notes = spec.scaling, []
    if scaling.modality != spec.modality:
        # The NYU Depth V2 / SUN RGB-D presets read the benchmarks' 8-bit depth images over 0..255; a robot's
        # depth topic is metres (32FC1) or millimetres (16UC1), so the model gets depth scaling, default range.
        scaling = ModalityScaling(modality=spec.modality)
        notes.append(f"dataset {spec.name!r} stores {spec.modality} as 8-bit images; robot {spec.modality} is mapped "
                     f"to 0..1 over 0..{scaling.max_range:g} m (node parameter depth.max_range): check that this "
                     "matches how the training data was encoded")
    meta = CheckpointMeta(config=cfg, class_names=classes, palette=palette, scaling=scaling,
                          input_size=tuple(spec.image_size) if spec.image_size is not None else None,
                          extra={"imported_from": source, "dataset": spec.name}, source=source, notes=notes,
                          published=True)
    _validate_meta(meta, scaling.modality, source)
    return meta


def load_model(path: PathLike, dataset: Optional[DatasetLike] = None, device: Union[str, torch.device] = "cpu",
               scan_backend: Optional[str] = None) -> tuple[nn.Module, CheckpointMeta]:
    """Any Sigma checkpoint -> (model in eval mode, float32, on ``device``; its CheckpointMeta).

    The one loader behind Segmenter, the node, sigma-evaluate, sigma-import and the replay tools.
    - Our checkpoint: loaded as load_checkpoint does; ``dataset`` is ignored (the file names its own
      classes), which meta.warnings says.
    - A published Sigma checkpoint (state dict bare or under "model", "module." prefixes stripped,
      other entries such as optimizer/epoch ignored): the architecture is inferred from its keys and
      shapes (infer_sigma_config); classes, palette, modality scaling and input size come from
      ``dataset`` (see resolve_dataset), ImageNet normalisation as published. meta.notes says what was
      inferred.
    scan_backend: overrides the config's selective-scan backend.
    Raises DatasetNeededError for a published file without ``dataset`` (naming the presets),
    CheckpointError for a class-count mismatch (both numbers), a VMamba ImageNet backbone (no
    segmentation head), damaged files and NaN/inf weights (see read_checkpoint, load_weights).
    """
    from .models.sigma import build_sigma

    source = str(path)
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        model, meta = _build_and_load(obj, read_meta(obj, source), scan_backend, device)
        if dataset is not None:
            meta.warnings.append(f"dataset {str(getattr(dataset, 'name', dataset))!r} ignored: {source} is a "
                                 "sigma_core checkpoint and names its own classes, palette and scaling")
        return model, meta
    state, kind = state_dict_of(obj, source)
    if kind == "vmamba_imagenet":
        raise CheckpointError(
            f"{source} is a VMamba ImageNet backbone (encoder only, no segmentation head), so it cannot segment; "
            "start a training run from it (sigma-train ... model.init=FILE)")
    cfg = infer_sigma_config(state, source)
    if dataset is None:
        raise DatasetNeededError(
            f"{source} is a published Sigma checkpoint ({describe_config(cfg)}); it holds no class names, palette "
            f"or input handling, so name the dataset it was trained on: {dataset_choices()} "
            "(node: -p dataset:=mfnet; tools: --dataset mfnet)")
    if scan_backend is not None:
        cfg = SigmaConfig.from_dict({**cfg.to_dict(), "scan_backend": scan_backend})
    meta = meta_from_dataset(cfg, dataset, source)
    meta.notes.insert(0, f"{source}: published Sigma checkpoint, architecture inferred from its keys: "
                      f"{describe_config(cfg)}; classes, palette, scaling and input size from dataset "
                      f"{meta.extra['dataset']!r}")
    model = build_sigma(cfg)
    load_weights(model, state, strict=True, source=source)
    return model.to(device).eval(), meta


def _build_and_load(obj: Mapping[str, Any], meta: CheckpointMeta, scan_backend: Optional[str],
                    device: Union[str, torch.device]) -> tuple[nn.Module, CheckpointMeta]:
    from .models.sigma import build_sigma

    if scan_backend is not None:
        meta.config = SigmaConfig.from_dict({**meta.config.to_dict(), "scan_backend": scan_backend})
    model = build_sigma(meta.config)
    load_weights(model, obj, strict=True, source=meta.source)
    return model.to(device).eval(), meta


def _validate_meta(meta: CheckpointMeta, modality: str, source: str) -> None:
    k = meta.config.num_classes
    if len(meta.class_names) != k:
        raise CheckpointError(f"{source}: {len(meta.class_names)} class names for a model with {k} classes")
    if len(meta.palette) != k or any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in meta.palette):
        raise CheckpointError(f"{source}: palette must be {k} [r, g, b] colours with values 0..255")
    if meta.scaling.modality != modality:
        raise CheckpointError(f"{source}: modality {modality!r} but scaling is for {meta.scaling.modality!r}")
    norm = meta.normalization
    if set(norm) != {"mean", "std"} or len(norm["mean"]) != 3 or len(norm["std"]) != 3 or min(norm["std"]) <= 0:
        raise CheckpointError(f"{source}: normalization must be {{'mean': [3 floats], 'std': [3 floats > 0]}}, "
                              f"got {norm}")
    if meta.input_size is not None and (len(meta.input_size) != 2 or min(meta.input_size) < 4):
        raise CheckpointError(f"{source}: input_size must be (H, W) with both >= 4, or None; got {meta.input_size}")
    _check_plain(meta.extra, f"{source}: extra")


def _check_plain(value: Any, where: str) -> None:
    """Only plain data survives torch.load(weights_only=True); refuse the rest when saving."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: dict keys must be str, got {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"{where}: {type(value).__name__} is not plain data (str, number, bool, None, list, dict)")
