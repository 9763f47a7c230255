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

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .data.modality import ModalityScaling
from .model_io import (
    MAX_INPUT_SIDE,
    ModelDescription,
    NonFiniteOutputError,
    check_description,
    images_to_inputs,
    inference_threads,
    logits_to_mask,
    threads_from_environment,
    usable_cpus,
)
from .onnx_file import ExternalDataError, check_external_data

INSTALL_HINT = "pip install onnxruntime (NVIDIA GPU: pip install onnxruntime-gpu)"
FORMAT = "sigma-onnx/1"
KEY_PREFIX = "sigma."
# Every key sigma_core.export writes; a file missing one was not written by it.
REQUIRED_KEYS = ("format", "model", "classes", "palette", "modality", "normalization", "input_size", "precision",
                 "source_checkpoint", "sigma_core_version")
INPUT_NAMES = ("rgb", "modal")
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "fp16")
MAX_METADATA_CHARS = 1 << 20  # per sigma.* value: a whole 255-class description is a few kB


class OnnxModelError(ValueError):
    """An ONNX file that cannot be used as a Sigma model; the message says why and what to do."""


class OnnxRunError(RuntimeError):
    """ONNX Runtime failed to run the model on an input (out of memory, a kernel error); the message says which."""


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
    """metadata_props (ONNX Runtime's custom_metadata_map) -> OnnxModelMeta; OnnxModelError naming what is missing
    or wrong (the rules of sigma_core.model_io.check_description, as for a checkpoint)."""
    missing = [KEY_PREFIX + k for k in REQUIRED_KEYS if KEY_PREFIX + k not in props]
    if missing:
        raise OnnxModelError(
            f"{source} is an ONNX model without sigma_core's metadata (missing {', '.join(missing)}): it was not "
            "written by sigma-export, so its classes, palette and input scaling are unknown; export the checkpoint "
            f"with: sigma-export CHECKPOINT --out {Path(source).name}")
    huge = [f"{KEY_PREFIX}{k} ({len(props[KEY_PREFIX + k])} characters)" for k in REQUIRED_KEYS
            if len(props[KEY_PREFIX + k]) > MAX_METADATA_CHARS]
    if huge:
        raise OnnxModelError(f"{source}: metadata {', '.join(huge)} is larger than sigma-export writes (at most "
                             f"{MAX_METADATA_CHARS} characters a value); export the checkpoint again")
    try:
        value = {k: parse_metadata_value(props[KEY_PREFIX + k]) for k in REQUIRED_KEYS}
        if value["format"] != FORMAT:
            raise OnnxModelError(f"{source} has format {value['format']!r}; this sigma_core reads {FORMAT!r}: "
                                 "export it again with this version's sigma-export")
        if value["precision"] not in PRECISIONS:
            raise ValueError(f"precision {value['precision']!r} is none of {', '.join(PRECISIONS)}")
        texts = [k for k in ("model", "source_checkpoint", "sigma_core_version") if not isinstance(value[k], str)]
        if texts:
            raise ValueError(f"{', '.join(KEY_PREFIX + k for k in texts)} must be a string")
        classes, palette, size = value["classes"], value["palette"], value["input_size"]
        try:
            check_description(len(classes) if isinstance(classes, list) else 0, classes, palette,
                              value["normalization"], size, source)
        except ValueError as e:
            raise OnnxModelError(f"{e}; export the checkpoint again") from None
        return OnnxModelMeta(
            model_name=value["model"], class_names=list(classes), palette=[list(c) for c in palette],
            scaling=ModalityScaling.from_dict(value["modality"]),
            normalization={k: [float(v) for v in value["normalization"][k]] for k in ("mean", "std")},
            input_size=tuple(size) if size is not None else None, precision=value["precision"],
            source=source, source_checkpoint=value["source_checkpoint"],
            sigma_core_version=value["sigma_core_version"])
    except (ValueError, TypeError, KeyError) as e:
        if isinstance(e, OnnxModelError):
            raise
        raise OnnxModelError(f"{source}: sigma_core metadata is malformed ({e}); export the checkpoint again") from None


def parse_metadata_value(text: str):
    """One sigma.* metadata value (JSON) -> its value. ValueError for anything sigma-export does not write: not
    JSON, NaN/Infinity, more than MAX_METADATA_CHARS characters, nesting deeper than Python recurses (json raises
    RecursionError there, which no caller's ``except ValueError`` took)."""
    if len(text) > MAX_METADATA_CHARS:
        raise ValueError(f"{len(text)} characters, more than sigma-export writes (at most {MAX_METADATA_CHARS})")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested deeper than sigma-export writes") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number sigma-export writes")


def _open_session(ort, source: str, options, providers: list, model: Optional[bytes] = None):
    """ort.InferenceSession of the file ``source`` (or of ``model``, that file as edited); OnnxModelError saying
    whether the file is no ONNX model at all or which part of it ONNX Runtime refuses (an operator, a type,
    external data outside the model's folder, ...)."""
    try:
        return ort.InferenceSession(model if model is not None else source, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        text = " ".join(str(e).split())
        if "Protobuf parsing failed" in text or "No graph was found in the protobuf" in text:
            raise OnnxModelError(f"{source} is not an ONNX model file (ONNX Runtime cannot parse it; truncated, or "
                                 "another format); pass a file written by sigma-export, or a checkpoint (.pt/.pth)"
                                 ) from None
        raise OnnxModelError(f"ONNX Runtime cannot load {source}: {text[:1000]}") from None


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


class OnnxSegmenter(ModelDescription):
    """An exported Sigma model with its input/output handling. Call it on numpy images (see module docstring).

    path: a .onnx file written by sigma-export. device: auto | cpu | cuda[:N] | tensorrt[:N]. precision: the
    file's own (fp32 or fp16, chosen at export); asking for another is noted in ``meta.warnings``; fp16/bf16 asked
    for on the CPU is refused (ValueError), as the torch Segmenter refuses emulated half precision.
    input_size: (H, W) to run at, None for each image's size; default the file's fixed size, else the
    checkpoint's. threads: ONNX Runtime intra-op threads (default $OMP_NUM_THREADS, else its own default), and the
    native scan kernel's (0: every CPU this process may use). scan_backend: auto (the native scan kernel in ONNX
    Runtime on the CPU where it can run, else the file's own scan ops, with a warning in ``meta.warnings`` saying
    why) | native (the kernel or ValueError) | onnx (the file's own ops, as any runtime runs them); the attribute
    ``scan_backend`` then says which runs ("native" or "onnx").
    Raises OnnxModelError (not ONNX, no sigma metadata, a size its fixed dimensions refuse), OnnxRuntimeMissing,
    ValueError (device, precision, threads, scan_backend unknown or "native" where the kernel cannot run).
    """

    def __init__(self, path: Union[str, Path], device: str = "cpu", precision: str = "fp32",
                 input_size: Union[tuple[int, int], None, str] = "checkpoint", threads: Optional[int] = None,
                 scan_backend: str = "auto"):
        ort = import_onnxruntime()
        self.path = Path(path)
        source = str(self.path)
        if not self.path.is_file():
            raise OnnxModelError(f"{source!r} is not a file" if self.path.exists() else f"no such file {source!r}")
        with open(self.path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise OnnxModelError(f"{source} is not an ONNX model but a PyTorch file (zip/pickle): rename it to .pt, "
                                 f"or export it with: sigma-export {self.path.with_suffix('.pt').name} --out {source}")
        try:  # before ONNX Runtime reads any of it: older releases follow any path a file names
            check_external_data(self.path)
        except ExternalDataError as e:
            raise OnnxModelError(f"{source}: {e}") from None
        options = ort.SessionOptions()
        if threads is not None:  # ValueError naming a count that is no integer 0..MAX_THREADS (a million threads
            inference_threads(threads)  # got the process killed inside ONNX Runtime's pool)
        threads = threads if threads is not None else threads_from_environment()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Fatal only: every error ONNX Runtime logs it also raises, and we say it once, in one line (the node
        # throttled); its own log lines would repeat it unthrottled on stderr for every frame.
        options.log_severity_level = 4
        providers, self._device = providers_for(device, ort.get_available_providers())
        if str(precision).lower() not in ("fp32", "float32") and self._device.type == "cpu":
            # the same refusal as the torch Segmenter's (check_precision_for_device), for every tool alike
            raise ValueError(f"precision {precision!r} on the CPU (ONNX Runtime's CPUExecutionProvider) would be "
                             "emulated and slower than fp32: use precision 'fp32' on a CPU, and fp16/bf16 on a GPU "
                             "(device 'cuda' or 'tensorrt'); an ONNX file's own precision is chosen at export "
                             "(sigma-export --precision)")
        model, scan_note = self._scan_kernel_model(scan_backend, threads, options)
        try:
            self.session = _open_session(ort, source, options, providers, model)
        except OnnxModelError as err:  # the file with the kernel's ops refused (an edited file, another release)
            if model is None or scan_backend == "native":
                raise
            self.scan_backend, scan_note = "onnx", self._own_scans_note(str(err))
            self.session = _open_session(ort, source, options, providers)
        fallback = self._check_provider(device)
        self.meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, source)
        self.meta.warnings.extend(note for note in (fallback, scan_note) if note)
        self._check_io(source)
        self._fixed = self._fixed_size()
        if self.meta.precision != "fp32" and self._device.type == "cpu":
            self.meta.warnings.append(f"{self.path.name} holds a {self.meta.precision} model, made for GPU runtimes: "
                                      "for a CPU, export it with sigma-export --precision fp32")
        if precision not in (self.meta.precision, "fp32"):
            self.meta.warnings.append(f"precision {precision} asked for, but {self.path.name} holds a "
                                      f"{self.meta.precision} model (sigma-export --precision chooses it)")
        self.runtime = f"ONNX Runtime {ort.__version__} ({self.session.get_providers()[0]})"
        if self.scan_backend == "native":
            self.runtime += " with the native scan kernel (onnxruntime-extensions)"
        if input_size == "checkpoint":
            input_size = self._fixed or self.meta.input_size
        self.input_size: Optional[tuple[int, int]] = tuple(input_size) if input_size is not None else None
        if self._fixed is not None:
            self.check_size(self.input_size)
        self._scaling = self.meta.scaling

    # --- what the node and tools read (as sigma_core.inference.Segmenter) --------------------------------

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

    @property
    def fixed_size(self) -> Optional[tuple[int, int]]:
        """(H, W) the file was exported for (sigma-export --height/--width), the only size it runs at; None: any."""
        return self._fixed

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
        """Normalised inputs (B, 3, h, w) float32 -> float32 logits (B, K, h, w); NonFiniteOutputError on NaN/inf,
        ValueError for inputs smaller than 4x4 (as the torch network), OnnxRunError when ONNX Runtime fails."""
        self.check_size(tuple(rgb.shape[2:]))
        if min(rgb.shape[2:]) < 4:
            raise ValueError(f"Sigma needs images of at least 4x4 pixels, got {tuple(rgb.shape[2:])}")
        feeds = {INPUT_NAMES[0]: np.ascontiguousarray(rgb, np.float32),
                 INPUT_NAMES[1]: np.ascontiguousarray(modal, np.float32)}
        self._scan_failure()  # one left by another session's run on this thread is not this run's
        try:
            with self._signals_held():
                logits, error = self.session.run([OUTPUT_NAME], feeds)[0], None
        except Exception as e:  # onnxruntime's own types (Fail, RuntimeException, ...): one line naming the input
            logits, error = None, " ".join(str(e).split())
        failure = self._scan_failure()  # a scan op's own error is the cause of what followed it
        if failure is not None and not isinstance(failure, Exception):
            raise failure  # Ctrl-C (KeyboardInterrupt) met inside a scan op: raised where the caller takes it
        if failure is not None:
            error = f"{type(failure).__name__}: {' '.join(str(failure).split())}"
        if error:
            raise OnnxRunError(f"ONNX Runtime failed to run {self.path.name} ({self.runtime}) on a "
                               f"{rgb.shape[0]}x3x{rgb.shape[2]}x{rgb.shape[3]} input: {error[:500]}")
        expected = (rgb.shape[0], self.num_classes, rgb.shape[2], rgb.shape[3])
        if logits.shape != expected or logits.dtype != np.float32:
            raise OnnxModelError(f"{self.path.name} gave logits {logits.dtype} {list(logits.shape)} for a "
                                 f"{rgb.shape[2]}x{rgb.shape[3]} input; a sigma-export file gives float32 (B, K, H, W) "
                                 f"= {list(expected)} (K: its {self.num_classes} classes): export the checkpoint again")
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
        """OnnxModelError unless inputs and output are the (B, 3, H, W) float32 ``rgb``/``modal`` and the float32
        (B, K, H, W) ``logits`` sigma-export writes (K: the metadata's class count), with a fixed size (if any) of
        4..MAX_INPUT_SIDE pixels a side: checked before any frame, so a foreign or edited file is refused at
        load, not by a cryptic error (or a wrong mask) later."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names, outs = [i.name for i in inputs], [o.name for o in outputs]
        redo = "export the checkpoint again"
        if tuple(names) != INPUT_NAMES or OUTPUT_NAME not in outs:
            raise OnnxModelError(f"{source} has inputs {names} and outputs {outs}; a sigma-export file has inputs "
                                 f"{list(INPUT_NAMES)} and output {OUTPUT_NAME!r}: {redo}")
        wanted = "float32 (B, 3, H, W)"
        shapes = [i.shape for i in inputs]
        for arg in inputs:
            shape = arg.shape
            if (arg.type != "tensor(float)" or len(shape) != 4 or shape[1] != 3
                    or (isinstance(shape[0], int) and shape[0] != 1)):
                raise OnnxModelError(f"{source}: input {arg.name!r} is {arg.type} {shape}; a sigma-export file takes "
                                     f"{wanted} (B 1 or any): {redo}")
            sides = [d for d in shape[2:] if isinstance(d, int)]
            if sides and (len(sides) != 2 or not all(4 <= d <= MAX_INPUT_SIDE for d in sides)):
                raise OnnxModelError(f"{source}: input {arg.name!r} declares size {shape[2]}x{shape[3]}; a fixed size "
                                     f"is 4..{MAX_INPUT_SIDE} pixels a side, both fixed or neither: {redo}")
        if any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(*shapes)):
            raise OnnxModelError(f"{source}: inputs rgb {shapes[0]} and modal {shapes[1]} differ in shape: {redo}")
        logits = outputs[outs.index(OUTPUT_NAME)]
        shape = logits.shape
        if (logits.type != "tensor(float)" or (shape is not None and len(shape) != 4)
                or (shape and isinstance(shape[1], int) and shape[1] != self.meta.num_classes)):
            raise OnnxModelError(f"{source}: output {OUTPUT_NAME!r} is {logits.type} {shape}, but its metadata names "
                                 f"{self.meta.num_classes} classes: a sigma-export file gives float32 (B, "
                                 f"{self.meta.num_classes}, H, W) logits: {redo}")

    def _scan_kernel_model(self, scan_backend: str, threads: int, options) -> tuple[Optional[bytes], Optional[str]]:
        """The model with its scans on the native kernel (onnx_scan_ops), for the CPU provider where it can run, and
        ``options`` made ready for it; else (None, why not, for meta.warnings). Sets self.scan_backend ("native":
        the kernel, "onnx": the file's own ops). scan_backend: auto | native (refused, ValueError, where it cannot
        run) | onnx (the file as written)."""
        from . import onnx_scan_ops

        if scan_backend not in ("auto", "native", "onnx"):
            raise ValueError(f"scan backend {scan_backend!r} is unknown for an ONNX model; use auto, native or onnx")
        self.scan_backend = "onnx"
        if scan_backend == "onnx":
            return None, None
        if self._device.type != "cpu":
            if scan_backend == "native":
                raise ValueError(f"scan backend 'native' runs on the CPU only; {self.path.name} runs on "
                                 f"{self._device.provider}: use scan backend auto or onnx")
            return None, None
        try:  # threads 0: ONNX Runtime's own default, a thread per core; the kernel then takes every CPU allowed
            model = onnx_scan_ops.kernel_model(self.path, threads or usable_cpus())
            why = None
        except onnx_scan_ops.ScanKernelUnavailable as err:
            why = str(err)
        if why is None:
            try:
                onnx_scan_ops.session_options(options)
            except Exception as err:  # noqa: BLE001 - onnxruntime's own types: the library built for another release
                why = (f"onnxruntime-extensions does not load into this onnxruntime ({type(err).__name__}: "
                       f"{' '.join(str(err).split())[:300]}): install matching releases ({onnx_scan_ops.INSTALL_HINT})")
        if why is not None:
            if scan_backend == "native":
                raise ValueError(f"scan backend 'native' for {self.path.name}: {why}") from None
            return None, self._own_scans_note(why)
        self.scan_backend = "native"
        return model, None

    def _own_scans_note(self, why: str) -> str:
        """The warning of scan_backend 'auto' where the native kernel cannot take the file's scans."""
        return (f"the scans run as {self.path.name}'s own ONNX ops, 1.7-3.2x slower than with the native scan "
                f"kernel (Sigma-T to nano, 480x640): {why}")

    def _signals_held(self):
        """onnx_scan_ops.signals_held where the scans are the native kernel's Python ops, else nothing."""
        if self.scan_backend != "native":
            return contextlib.nullcontext()
        from .onnx_scan_ops import signals_held

        return signals_held()

    def _scan_failure(self) -> Optional[BaseException]:
        """The exception a native scan op met in this thread's last run (onnx_scan_ops.take_failure: the ops cannot
        raise), cleared; None where none, or the scans are the file's own ops."""
        if self.scan_backend != "native":
            return None
        from .onnx_scan_ops import take_failure

        return take_failure()

    def _check_provider(self, device: str) -> Optional[str]:
        """ONNX Runtime falls back to the CPU when the provider asked for cannot start (e.g. CUDA's libraries are
        missing), with a log line only: a GPU asked for by name is refused (ValueError), "auto" runs on the CPU
        and returns the warning saying so; never the CPU silently."""
        wanted, got = self._device.provider, self.session.get_providers()
        if wanted == "CPUExecutionProvider" or got[0] == wanted:
            return None
        why = (f"ONNX Runtime could not start its {wanted} (the session got {', '.join(got)}): check that CUDA, "
               "cuDNN (and TensorRT for 'tensorrt') are installed in the versions this onnxruntime-gpu needs")
        if str(device) != "auto":
            raise ValueError(f"device {device!r}: {why}, or use device 'cpu'")
        self._device = DeviceInfo("cpu", None, "CPUExecutionProvider")
        return f"device 'auto' runs on the CPU: {why}"

    def _fixed_size(self) -> Optional[tuple[int, int]]:
        shape = self.session.get_inputs()[0].shape  # [batch, 3, H, W]; symbolic dims are strings or None
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            return int(shape[2]), int(shape[3])
        return None
