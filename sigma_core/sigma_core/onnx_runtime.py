"""OnnxSegmenter: a file written by ``sigma-export`` run by ONNX Runtime, with no torch anywhere.

Same interface as the torch Segmenter (sigma_core.inference): numpy images in, (mask, confidence) out,
the same pre- and post-processing (sigma_core.model_io), and the same attributes the node and the replay
tools read. Everything the model needs besides its weights (classes, palette, modality scaling, input
normalisation, source checkpoint) is read from the file's ONNX ``metadata_props`` (keys ``sigma.*``,
written by sigma_core.export).

    seg = OnnxSegmenter("model.onnx", device="cpu")       # or Segmenter.from_checkpoint("model.onnx")
    mask, confidence = seg(rgb_u8_hwc, thermal_u16_hw)

Execution providers by ``device``: "cpu" -> CPUExecutionProvider; "cuda"/"cuda:N" -> CUDAExecutionProvider
(onnxruntime-gpu); "tensorrt"/"tensorrt:N" -> TensorrtExecutionProvider, then CUDA; "auto" -> CUDA where
installed, else the CPU.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .data.modality import ModalityScaling
from .model_io import NonFiniteOutputError, images_to_inputs, logits_to_mask

INSTALL_HINT = "pip install onnxruntime (NVIDIA GPU: pip install onnxruntime-gpu)"
FORMAT = "sigma-onnx/1"
KEY_PREFIX = "sigma."
# Every key sigma_core.export writes; a file missing one was not written by it.
REQUIRED_KEYS = ("format", "model", "classes", "palette", "modality", "normalization", "input_size", "precision",
                 "source_checkpoint", "sigma_core_version")
INPUT_NAMES = ("rgb", "modal")
OUTPUT_NAME = "logits"


class OnnxModelError(ValueError):
    """An ONNX file that cannot be used as a Sigma model; the message says why and what to do."""


class OnnxRuntimeMissing(ImportError):
    """onnxruntime is not installed; the message gives the install command."""


@dataclass(frozen=True)
class DeviceInfo:
    """Where the file runs: type "cpu" or "cuda" (as torch.device.type), the index, and the provider."""

    type: str
    index: Optional[int]
    provider: str

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


@dataclass
class OnnxModelMeta:
    """What the file's metadata says; the attribute names of sigma_core.checkpoints.CheckpointMeta that tools read."""

    model_name: str
    class_names: list[str]
    palette: list[list[int]]
    scaling: ModalityScaling
    normalization: dict[str, list[float]]
    input_size: Optional[tuple[int, int]]
    precision: str
    source: str
    source_checkpoint: str
    sigma_core_version: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return self.scaling.modality

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def import_onnxruntime():
    """The onnxruntime module; OnnxRuntimeMissing with the install command when it is not installed."""
    try:
        import onnxruntime
    except ImportError as e:
        raise OnnxRuntimeMissing(f"running an .onnx model needs ONNX Runtime, which is not installed ({e}): "
                                 f"{INSTALL_HINT}") from None
    return onnxruntime


def is_onnx_path(path: Union[str, Path]) -> bool:
    """Whether ``path`` names an ONNX model by its suffix (how every tool tells an exported file from a checkpoint)."""
    return str(path).lower().endswith(".onnx")


def read_metadata(props: dict[str, str], source: str) -> OnnxModelMeta:
    """metadata_props (ONNX Runtime's custom_metadata_map) -> OnnxModelMeta; OnnxModelError naming what is missing."""
    missing = [KEY_PREFIX + k for k in REQUIRED_KEYS if KEY_PREFIX + k not in props]
    if missing:
        raise OnnxModelError(
            f"{source} is an ONNX model without sigma_core's metadata (missing {', '.join(missing)}): it was not "
            "written by sigma-export, so its classes, palette and input scaling are unknown; export the checkpoint "
            f"with: sigma-export CHECKPOINT --out {Path(source).name}")
    try:
        value = {k: json.loads(props[KEY_PREFIX + k]) for k in REQUIRED_KEYS}
        if value["format"] != FORMAT:
            raise OnnxModelError(f"{source} has format {value['format']!r}; this sigma_core reads {FORMAT!r}: "
                                 "export it again with this version's sigma-export")
        size = value["input_size"]
        return OnnxModelMeta(
            model_name=str(value["model"]), class_names=[str(c) for c in value["classes"]],
            palette=[[int(v) for v in c] for c in value["palette"]],
            scaling=ModalityScaling.from_dict(value["modality"]),
            normalization={"mean": [float(v) for v in value["normalization"]["mean"]],
                           "std": [float(v) for v in value["normalization"]["std"]]},
            input_size=tuple(int(v) for v in size) if size is not None else None, precision=str(value["precision"]),
            source=source, source_checkpoint=str(value["source_checkpoint"]),
            sigma_core_version=str(value["sigma_core_version"]))
    except (ValueError, TypeError, KeyError) as e:
        raise OnnxModelError(f"{source}: sigma_core metadata is malformed ({e}); export the checkpoint again") from None


def providers_for(device: str, available: Sequence[str]) -> tuple[list, DeviceInfo]:
    """ONNX Runtime providers (with options) for ``device``, most preferred first; ValueError when it is not here."""
    kind, _, index_text = str(device).partition(":")
    index = int(index_text) if index_text.isdigit() else None
    if kind == "auto":
        kind = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if kind == "cpu":
        return ["CPUExecutionProvider"], DeviceInfo("cpu", None, "CPUExecutionProvider")
    if kind not in ("cuda", "tensorrt") or (index_text and index is None):
        raise ValueError(f"device {device!r} is unknown for an ONNX model; use auto, cpu, cuda, cuda:N, tensorrt or "
                         "tensorrt:N")
    options = {"device_id": index or 0}
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if kind == "tensorrt" else ["CUDAExecutionProvider"]
    if wanted[0] not in available:
        raise ValueError(f"device {device!r} needs ONNX Runtime's {wanted[0]}, which this onnxruntime lacks "
                         f"(it has {', '.join(available)}): pip install onnxruntime-gpu (and TensorRT for "
                         "'tensorrt'), or use device 'cpu'")
    chosen = [(p, dict(options)) for p in wanted if p in available]
    return chosen + ["CPUExecutionProvider"], DeviceInfo("cuda", index, wanted[0])


class OnnxSegmenter:
    """An exported Sigma model with its input/output handling. Call it on numpy images (see module docstring).

    path: a .onnx file written by sigma-export. device: auto | cpu | cuda[:N] | tensorrt[:N]. precision: the
    file's own (fp32 or fp16, chosen at export); asking for another is noted in ``meta.warnings``; fp16/bf16 asked
    for on the CPU is refused (ValueError), as the torch Segmenter refuses emulated half precision.
    input_size: (H, W) to run at, None for each image's size; default the file's fixed size, else the
    checkpoint's. threads: ONNX Runtime intra-op threads (default $OMP_NUM_THREADS, else its own default).
    Raises OnnxModelError (not ONNX, no sigma metadata, a size its fixed dimensions refuse), OnnxRuntimeMissing,
    ValueError (device).
    """

    scan_backend = "onnx"

    def __init__(self, path: Union[str, Path], device: str = "cpu", precision: str = "fp32",
                 input_size: Union[tuple[int, int], None, str] = "checkpoint", threads: Optional[int] = None):
        ort = import_onnxruntime()
        self.path = Path(path)
        source = str(self.path)
        if not self.path.is_file():
            raise OnnxModelError(f"no such file {source!r}")
        with open(self.path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise OnnxModelError(f"{source} is not an ONNX model but a PyTorch file (zip/pickle): rename it to .pt, "
                                 f"or export it with: sigma-export {self.path.with_suffix('.pt').name} --out {source}")
        options = ort.SessionOptions()
        threads = threads if threads is not None else int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers, self._device = providers_for(device, ort.get_available_providers())
        if str(precision).lower() not in ("fp32", "float32") and self._device.type == "cpu":
            # the same refusal as the torch Segmenter's (check_precision_for_device), for every tool alike
            raise ValueError(f"precision {precision!r} on the CPU (ONNX Runtime's CPUExecutionProvider) would be "
                             "emulated and slower than fp32: use precision 'fp32' on a CPU, and fp16/bf16 on a GPU "
                             "(device 'cuda' or 'tensorrt'); an ONNX file's own precision is chosen at export "
                             "(sigma-export --precision)")
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            text = " ".join(str(e).split())
            if "Protobuf parsing failed" in text or "INVALID_PROTOBUF" in text or "Load model" in text:
                raise OnnxModelError(f"{source} is not an ONNX model file (ONNX Runtime cannot parse it); pass a file "
                                     "written by sigma-export, or a checkpoint (.pt/.pth)") from None
            raise OnnxModelError(f"ONNX Runtime cannot load {source}: {text}") from None
        self.meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, source)
        self._check_io(source)
        self._fixed = self._fixed_size()
        if self.meta.precision != "fp32" and self._device.type == "cpu":
            self.meta.warnings.append(f"{self.path.name} holds a {self.meta.precision} model, made for GPU runtimes: "
                                      "for a CPU, export it with sigma-export --precision fp32")
        if precision not in (self.meta.precision, "fp32"):
            self.meta.warnings.append(f"precision {precision} asked for, but {self.path.name} holds a "
                                      f"{self.meta.precision} model (sigma-export --precision chooses it)")
        self.runtime = f"ONNX Runtime {ort.__version__} ({self.session.get_providers()[0]})"
        if input_size == "checkpoint":
            input_size = self._fixed or self.meta.input_size
        self.input_size: Optional[tuple[int, int]] = tuple(input_size) if input_size is not None else None
        if self._fixed is not None:
            self.check_size(self.input_size)
        self._scaling = self.meta.scaling

    # --- what the node and tools read (as sigma_core.inference.Segmenter) --------------------------------

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.meta.palette]

    @property
    def scaling(self) -> ModalityScaling:
        return self._scaling

    @scaling.setter
    def scaling(self, value: ModalityScaling) -> None:
        if not isinstance(value, ModalityScaling):
            raise TypeError(f"scaling must be a ModalityScaling, got {type(value).__name__}")
        self._scaling = value

    @property
    def modality(self) -> str:
        return self._scaling.modality

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def model_name(self) -> str:
        return self.meta.model_name

    @property
    def device(self) -> DeviceInfo:
        return self._device

    @property
    def precision(self) -> str:
        return self.meta.precision

    # --- running ---------------------------------------------------------------------------------------

    def __call__(self, rgb: np.ndarray, modal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB + raw modality -> ((H, W) uint8 class ids, (H, W) float32 confidence)."""
        return self.predict_batch([rgb], [modal])[0]

    def predict_batch(self, rgbs: Sequence[np.ndarray], modals: Sequence[np.ndarray],
                      max_batch: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
        """Lists of image pairs -> list of (mask, confidence), each at its RGB image's size (one run per pair)."""
        if len(rgbs) != len(modals):
            raise ValueError(f"predict_batch got {len(rgbs)} RGB images but {len(modals)} modality images")
        results = []
        for rgb, modal in zip(rgbs, modals):
            norm = self.meta.normalization
            rgb_in, modal_in = images_to_inputs(rgb, modal, self._scaling, self.input_size, norm["mean"], norm["std"])
            logits = self.logits(rgb_in[None], modal_in[None])
            results.append(logits_to_mask(logits[0], tuple(np.asarray(rgb).shape[:2])))
        return results

    def logits(self, rgb: np.ndarray, modal: np.ndarray) -> np.ndarray:
        """Normalised inputs (B, 3, h, w) float32 -> float32 logits (B, K, h, w); NonFiniteOutputError on NaN/inf."""
        self.check_size(tuple(rgb.shape[2:]))
        feeds = {INPUT_NAMES[0]: np.ascontiguousarray(rgb, np.float32),
                 INPUT_NAMES[1]: np.ascontiguousarray(modal, np.float32)}
        logits = self.session.run([OUTPUT_NAME], feeds)[0].astype(np.float32, copy=False)
        finite = np.isfinite(logits)
        if not finite.all():
            raise NonFiniteOutputError(
                f"{int(finite.size - finite.sum())} of {finite.size} logits are NaN or infinite (model "
                f"{self.model_name}, {self.path.name}, {self.precision}, {self.runtime}); no mask is given for this "
                "input")
        return logits

    def warmup(self, size: Optional[tuple[int, int]] = None) -> None:
        """One run on blank images (allocations, provider set-up) so that the first real frame is not slow."""
        height, width = size or self.input_size or (480, 640)
        self.check_size((height, width))
        blank = np.zeros((1, 3, height, width), np.float32)
        self.logits(blank, blank)

    def check_size(self, size: Optional[Sequence[int]]) -> None:
        """OnnxModelError when the file's fixed dimensions refuse an (H, W) network input (None: each image's own)."""
        if self._fixed is None or (size is not None and tuple(size) == self._fixed):
            return
        asked = "each image's own size" if size is None else f"{size[0]}x{size[1]}"
        raise OnnxModelError(
            f"{self.path.name} was exported for {self._fixed[0]}x{self._fixed[1]} inputs only (fixed dimensions) and "
            f"cannot run at {asked}: use its size, or export again without --height/--width (any size) or with "
            f"--height {'H' if size is None else size[0]} --width {'W' if size is None else size[1]}")

    def _check_io(self, source: str) -> None:
        names = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        if tuple(names) != INPUT_NAMES or OUTPUT_NAME not in outs:
            raise OnnxModelError(f"{source} has inputs {names} and outputs {outs}; a sigma-export file has inputs "
                                 f"{list(INPUT_NAMES)} and output {OUTPUT_NAME!r}: export the checkpoint again")

    def _fixed_size(self) -> Optional[tuple[int, int]]:
        shape = self.session.get_inputs()[0].shape  # [batch, 3, H, W]; symbolic dims are strings or None
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            return int(shape[2]), int(shape[3])
        return None
