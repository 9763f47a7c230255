"""Segmenter: numpy images in, class-id masks and confidences out.

It owns everything between camera images and the network: modality scaling (raw
thermal/depth -> [0, 1], recorded in the checkpoint), replicating the single-channel
modality to 3 channels, ImageNet normalisation of both inputs (sigma_core.data.normalize),
resizing the modality to the RGB size and both to the model's input size (if the
checkpoint fixes one) and the result back, batching, inference mode, mixed precision,
argmax and softmax confidence.

    seg = Segmenter.from_checkpoint("model.pt", device="cpu", precision="fp32")
    mask, confidence = seg(rgb_u8_hwc, thermal_u16_hw)   # (H, W) uint8, (H, W) float32

Any checkpoint a user has loads here (sigma_core.checkpoints.load_model): ours, or a
published Sigma file with ``dataset=`` naming what it was trained on (a preset such as
"mfnet", a dataset.yaml or a class list).

Mixed precision (``precision="fp16"``/``"bf16"``) runs the network under torch.autocast:
matmuls and convolutions in 16 bits; parameters, the patch embedding, every LayerNorm and
the residual streams between them, the selective scan (state and output) and the softmax
in float32, on the CPU and on CUDA alike. Measured (CPU autocast, issue 11; the tests
check the same bounds): the bundled model on 2 real + 8 synthetic frames, fp16 masks
99.97 % equal to fp32, bf16 99.79 % (real MFNet frame 99.68 %); the parity fixture
(random weights, logits within +-0.97), fp16 99.88 % of mask pixels and max |logit
difference| 0.0012, bf16 99.38 % and 0.010 (40-class head: fp16 99.89 %, bf16 0.011).
A frame whose logits are not all finite raises NonFiniteOutputError instead of giving
a confident-looking mask.
On a CPU, bf16 and fp16 are offered only where the CPU computes them natively (bf16: x86
AVX512-BF16 or AMX, Arm BF16; fp16: x86 AMX-FP16): elsewhere they would be emulated and slower
than fp32 (fp16: 6x on our x86 machine), and the Segmenter refuses them with that reason.
"""
from __future__ import annotations

import contextlib
import logging
import platform
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .allocator import reuse_freed_memory
from .checkpoints import CheckpointMeta, DatasetLike, PathLike, load_model
from .model_io import (  # noqa: F401 (public here)
    ModelDescription,
    NonFiniteOutputError,
    images_to_inputs,
    modal_to_unit,
    resize_unit,
)
from .onnx_runtime import is_onnx_path
from .ops.selective_scan import load_backend, resolve_backend

log = logging.getLogger(__name__)

try:  # the CPU's logits -> mask in one pass (14 -> ~4 ms a 640x480 frame of the bundled model)
    from .ops.mask_numba import logits_to_mask as _numba_logits_to_mask
except ImportError:  # no numba: torch's ops, the same result
    _numba_logits_to_mask = None

PRECISIONS = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
_CANONICAL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_FROM_CHECKPOINT = "checkpoint"


def parse_precision(precision: str) -> torch.dtype:
    """"fp32" | "fp16" | "bf16" (or float32/float16/half/bfloat16) -> torch dtype."""
    try:
        return PRECISIONS[str(precision).lower()]
    except KeyError:
        raise ValueError(f"precision {precision!r} is unknown; choose one of fp32, fp16, bf16") from None


def cpu_bf16_is_native() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware: x86 AVX512-BF16 or AMX, or Arm's BF16 extension.

    Without it, oneDNN emulates bf16 matmuls and convolutions by converting to float32: slower than fp32.
    """
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith("features") and "bf16" in line.split(":", 1)[1].split():
                    return True
        except OSError:
            return False
    return False


def cpu_fp16_is_native() -> bool:
    """Whether this CPU has float16 matrix arithmetic in hardware (x86 AMX-FP16).

    Elsewhere oneDNN converts float16 matmuls and convolutions to float32 and back: on our 2-core x86 machine
    the bundled model's warm-up took 91 s in fp16 against 17.5 s in fp32, and replay 6x longer.
    """
    return bool(getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)())


def check_precision_for_device(dtype: torch.dtype, device: torch.device) -> None:
    """Raise ValueError when ``dtype`` would be emulated on ``device`` (fp16 or bf16 on a CPU without it in
    hardware): emulated half precision is slower than fp32 and no more accurate, so it is never what a user wants.
    """
    if device.type != "cpu" or dtype == torch.float32:
        return
    name, native, hardware = (("bf16", cpu_bf16_is_native(), "x86 AVX512-BF16/AMX, Arm BF16")
                              if dtype == torch.bfloat16 else ("fp16", cpu_fp16_is_native(), "x86 AMX-FP16"))
    if not native:
        raise ValueError(
            f"precision {name!r} on this CPU ({platform.processor() or platform.machine()}) would be emulated and "
            f"slower than fp32 (fp16 measured 6x slower): it has no native {name} arithmetic ({hardware}); use "
            "precision 'fp32' on a CPU, and fp16/bf16 on a GPU (device 'cuda')"
        )


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """The torch device for ``device``: "auto" is CUDA when available, else the CPU; "cpu", "cuda", "cuda:N" as given.

    Raises ValueError when CUDA is asked for but not available, or ``device`` is none of these (tensorrt: an
    exported .onnx model's device).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).partition(":")[0] == "tensorrt":  # a device of ONNX Runtime's, not torch's
        raise ValueError(f"device {str(device)!r} runs an exported .onnx model (TensorRT through ONNX Runtime), not a "
                         "PyTorch checkpoint: export it with sigma-export CHECKPOINT --out model.onnx and pass that "
                         "file, or use device 'cuda'")
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch lists its twenty device types
        raise ValueError(f"device {str(device)!r} is unknown; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available here (torch {torch.__version__}); use 'cpu'")
    return dev


class Segmenter(ModelDescription):
    """A Sigma model with its input/output handling. Call it on numpy images.

    seg(rgb, modal) -> (mask (H, W) uint8 class ids, confidence (H, W) float32 max softmax probability).
    device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    precision: "fp32", "fp16" or "bf16" (autocast; the scan state and
    the softmax stay float32); fp16/bf16 on a CPU only where it is native (else ValueError, see
    check_precision_for_device; allow_emulated_precision=True lifts that, to measure numerics).
    scan_backend: "auto" or a backend name (see sigma_core.ops).
    input_size: (H, W) to run the network at, None for each image's own size; default: the checkpoint's.
    """

    def __init__(
        self,
        model: nn.Module,
        meta: CheckpointMeta,
        device: Union[str, torch.device] = "cpu",
        precision: str = "fp32",
        scan_backend: str = "auto",
        input_size: Union[tuple[int, int], None, str] = _FROM_CHECKPOINT,
        *,
        allow_emulated_precision: bool = False,
    ):
        self.meta = meta
        self._device = resolve_device(device)
        self._dtype = parse_precision(precision)
        if not allow_emulated_precision:  # True only to measure half-precision numerics on a CPU (the tests)
            check_precision_for_device(self._dtype, self._device)
        num_classes = meta.config.num_classes
        if num_classes > 255:
            raise ValueError(f"{num_classes} classes do not fit a uint8 mask (at most 255)")
        self.model = model.to(self._device).eval()
        self.model.set_scan_backend(scan_backend)
        # Resolve now so a missing backend fails here with its install hint, not on the first frame.
        self._scan_backend = resolve_backend(scan_backend, self._device.type)
        load_backend(self._scan_backend)
        # Large maps freed by one frame are reused by the next instead of page-faulted in again (7 % of a forward).
        self.cpu_memory = reuse_freed_memory() if self._device.type == "cpu" else "not used (GPU)"
        log.info("Segmenter runs on %s in %s, scan backend %r; freed CPU memory %s", self._device, self.precision,
                 self._scan_backend, self.cpu_memory)
        if input_size == _FROM_CHECKPOINT:
            input_size = meta.input_size
        self.input_size: Optional[tuple[int, int]] = tuple(input_size) if input_size is not None else None
        self.scaling = meta.scaling

    @classmethod
    def from_checkpoint(
        cls,
        path: PathLike,
        device: Union[str, torch.device] = "cpu",
        precision: str = "fp32",
        scan_backend: str = "auto",
        input_size: Union[tuple[int, int], None, str] = _FROM_CHECKPOINT,
        dataset: Optional[DatasetLike] = None,
        *,
        allow_emulated_precision: bool = False,
    ) -> Segmenter:
        """Load a checkpoint and wrap it: ours (see sigma_core.save_checkpoint), a published Sigma file, or a
        ``.onnx`` file from sigma-export (then an OnnxSegmenter, same interface, run by ONNX Runtime).

        scan_backend: "auto" or a backend of sigma_core.ops for a checkpoint; for an ``.onnx`` file auto, native
            (the native kernel inside ONNX Runtime) or onnx (the file's own scan ops): see OnnxSegmenter.
        dataset: for a published Sigma file, the dataset it was trained on (preset name, dataset.yaml or
            class list), which supplies classes, palette, modality scaling and input size; ignored, with a
            note in ``meta.notes`` and a logged warning, for our own checkpoints.
        Raises sigma_core.checkpoints.CheckpointError (DatasetNeededError for a published file without
        ``dataset``) when the file cannot be used; see sigma_core.checkpoints.load_model.
        """
        if is_onnx_path(path):  # a sigma-export file: ONNX Runtime runs it (see sigma_core.onnx_runtime)
            from .onnx_runtime import OnnxSegmenter

            seg = OnnxSegmenter(path, device=str(device), precision=precision, input_size=input_size,
                                scan_backend=scan_backend)  # auto | native | onnx there
            if dataset is not None:
                seg.meta.warnings.append(f"dataset {dataset!r} ignored: {Path(path).name} names its classes itself")
            return seg  # type: ignore[return-value]
        model, meta = load_model(path, dataset=dataset, device="cpu", scan_backend=scan_backend)
        return cls(model, meta, device=device, precision=precision, scan_backend=scan_backend, input_size=input_size,
                   allow_emulated_precision=allow_emulated_precision)

    # --- what the node and tools read ---------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.meta.config.num_classes

    @property
    def model_name(self) -> str:
        return self.meta.config.name

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> str:
        return _CANONICAL[self._dtype]

    @property
    def runtime(self) -> str:
        """What runs the network, for logs ("PyTorch 2.13.0"; ONNX files: "ONNX Runtime 1.32.0 (provider)")."""
        return f"PyTorch {torch.__version__}"

    @property
    def scan_backend(self) -> str:
        """The selective-scan backend actually used (e.g. "cpu", "triton"), "auto" resolved."""
        return self._scan_backend

    # --- running ------------------------------------------------------------------------------------

    def __call__(self, rgb: np.ndarray, modal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB + raw modality -> ((H, W) uint8 class ids, (H, W) float32 confidence)."""
        return self.predict_batch([rgb], [modal])[0]

    def predict_batch(self, rgbs: Sequence[np.ndarray], modals: Sequence[np.ndarray],
                      max_batch: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
        """Lists of image pairs -> list of (mask, confidence), each at its RGB image's size.

        Pairs that run at the same network size go through the network together, max_batch at a time.
        Raises NonFiniteOutputError when the logits of a pair are not all finite (e.g. a 16-bit overflow
        in a model not built by sigma_core's rules), naming how many and the precision.
        """
        if len(rgbs) != len(modals):
            raise ValueError(f"predict_batch got {len(rgbs)} RGB images but {len(modals)} modality images")
        inputs = [self._inputs(rgb, modal) for rgb, modal in zip(rgbs, modals)]
        results: list[Optional[tuple[np.ndarray, np.ndarray]]] = [None] * len(inputs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (rgb_in, _) in enumerate(inputs):
            by_size.setdefault(tuple(rgb_in.shape[1:]), []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), max_batch):
                chunk = indices[start:start + max_batch]
                rgb_t = torch.from_numpy(np.stack([inputs[i][0] for i in chunk]))
                modal_t = torch.from_numpy(np.stack([inputs[i][1] for i in chunk]))
                logits = self.logits(rgb_t, modal_t)
                self._check_finite(logits)
                for j, i in enumerate(chunk):
                    results[i] = self._decide(logits[j:j + 1], tuple(np.asarray(rgbs[i]).shape[:2]))
        return results  # type: ignore[return-value]

    def logits(self, rgb: torch.Tensor, modal: torch.Tensor) -> torch.Tensor:
        """Normalised inputs (B, 3, h, w) -> float32 logits (B, K, h, w), in inference mode at this precision."""
        with torch.inference_mode(), self._autocast():
            out = self.model(rgb.to(self._device, non_blocking=True), modal.to(self._device, non_blocking=True))
        return out.float()

    def warmup(self, size: Optional[tuple[int, int]] = None) -> None:
        """One forward pass on blank images (compiles/caches kernels) so the first real frame is not slow.

        size: (H, W) to warm up at; default the input size, else 480x640.
        """
        height, width = size or self.input_size or (480, 640)
        self._decide(self.logits(torch.zeros(1, 3, height, width), torch.zeros(1, 3, height, width)), (height, width))
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _inputs(self, rgb: np.ndarray, modal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        norm = self.meta.normalization
        return images_to_inputs(rgb, modal, self._scaling, self.input_size, norm["mean"], norm["std"])

    def _check_finite(self, logits: torch.Tensor) -> None:
        finite = torch.isfinite(logits)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            hint = " (fp32 avoids 16-bit overflow)" if self._dtype != torch.float32 else ""
            raise NonFiniteOutputError(
                f"{bad} of {finite.numel()} logits are NaN or infinite (model {self.model_name}, precision "
                f"{self.precision}{hint}, scan backend {self._scan_backend}); no mask is given for this input")

    def _decide(self, logits: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(1, K, h, w) float32 finite logits -> the mask and confidence at ``size``: the logits resized bilinearly,
        their arg max, and the largest softmax probability (on a CPU the same in one compiled pass)."""
        if logits.device.type == "cpu" and _numba_logits_to_mask is not None:
            return _numba_logits_to_mask(logits[0].numpy(), size)
        if tuple(logits.shape[2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        confidence, mask = torch.softmax(logits[0], dim=0).max(dim=0)
        return mask.to(torch.uint8).cpu().numpy(), confidence.cpu().numpy().astype(np.float32, copy=False)

    def _autocast(self):
        if self._dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=self._dtype)
