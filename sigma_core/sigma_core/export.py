"""Export a Sigma network to one self-describing ONNX file, checked against torch before it is kept.

    from sigma_core.export import export_onnx
    report = export_onnx(model, meta, "model.onnx", source="model.pt")        # dynamic height and width
    report = export_onnx(model, meta, "model_fp16.onnx", source=..., precision="fp16", height=480, width=640)

How: every selective scan is routed to the "onnx" backend (sigma_core.ops.scan_onnx), which traces as one
custom op and is then written as standard ONNX ops around one chunked ``Scan``; the rest of the network is
torch.onnx.export's (dynamo exporter, opset >= 18). The graph does not grow with the image; height,
width and batch are symbolic unless the size is fixed (then the batch is 1). Inputs ``rgb`` and ``modal``,
(B, 3, H, W) float32, normalised as ``sigma.normalization`` says; output ``logits`` (B, K, H, W) float32.
``metadata_props``
(keys ``sigma.*``, see sigma_core.onnx_runtime.REQUIRED_KEYS) hold classes, palette, modality scaling,
normalisation, checkpoint input size, precision, source checkpoint and the sigma_core version.

fp16: the float32 graph's matmuls and convolutions run in float16 (weights stored float16, their inputs cast
to float16 and their outputs back to float32), the policy of the torch Segmenter's autocast: the patch
embedding, every LayerNorm, the scans (state and output) and the residual streams stay float32 (the scan
output exceeds float16's range, see sigma_core.ops.selective_scan). (torch 2.13 cannot export under autocast.)

Before the file is kept it runs in ONNX Runtime on a full-size frame and is compared with torch (float32):
beyond MAX_RELATIVE_DIFFERENCE (fp32) or below MIN_MASK_AGREEMENT (fp16) nothing is kept. An existing
file is never overwritten: the file is written under a temporary name and moved into place without
replacing anything (files.place_new_file: also where the filesystem has no hard links).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import __version__
from .checkpoints import CheckpointMeta
from .files import place_new_file
from .onnx_runtime import FORMAT, INPUT_NAMES, KEY_PREFIX, OUTPUT_NAME, OnnxSegmenter
from .ops import scan_onnx

OPSET = 18
MAX_RELATIVE_DIFFERENCE = 1e-3  # max |logit difference| / max |torch logit| an fp32 file may show
MIN_MASK_AGREEMENT = 0.995  # fraction of mask pixels an fp16 file must share with torch float32
CHECK_SIZE = (480, 640)  # the full-size frame of the check when neither the file nor the checkpoint fixes one
TRACE_SIZE = (64, 96)  # the example input size torch traces with (any size; symbolic in the file)
PRECISIONS = ("fp32", "fp16")
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # torch's exporter, its ONNX builder, the check's runtime


class ExportError(RuntimeError):
    """The export failed or the written file disagreed with torch; nothing was kept."""


@dataclass(frozen=True)
class ExportReport:
    """path: the file kept; seconds: export and check; file_bytes / weight_bytes: its size and the float32
    weights'; check_size: (H, W) of the check frame; max_abs_difference / relative_difference: logits against
    torch float32; mask_agreement: fraction of equal mask pixels; scans: Scan loops in the file."""

    path: Path
    seconds: float
    file_bytes: int
    weight_bytes: int
    check_size: tuple[int, int]
    max_abs_difference: float
    relative_difference: float
    mask_agreement: float
    scans: int


def export_onnx(model: torch.nn.Module, meta: CheckpointMeta, out: str | os.PathLike, *, source: str,
                height: Optional[int] = None, width: Optional[int] = None, precision: str = "fp32",
                check_size: Optional[tuple[int, int]] = None, opset: int = OPSET,
                log: Callable[[str], None] = lambda line: None) -> ExportReport:
    """Write ``model`` (a Sigma network, with ``meta`` from sigma_core.checkpoints.load_model) to ``out``.

    height/width: fix the input size (both or neither; default symbolic). precision: "fp32" or "fp16".
    check_size: (H, W) of the verification frame (default the fixed size, else the checkpoint's input size,
    else 480x640). Raises FileExistsError (``out`` exists), ValueError (arguments), ExportError (export or
    check failed; nothing is left behind).
    """
    out = Path(out)
    start = time.perf_counter()
    fixed = check_arguments(out, height, width, precision, opset, check_size)
    check_size = tuple(check_size or fixed or meta.input_size or CHECK_SIZE)
    model = model.float().eval()
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        log(f"exporting {meta.config.name} ({'x'.join(map(str, fixed)) if fixed else 'any size'}, {precision}) ...")
        proto = trace_to_onnx(model, fixed, precision, opset)
        sites = scan_onnx.expand_scan_nodes(proto)
        strip_trace_metadata(proto)
        deduplicate_initializers(proto)
        if precision == "fp16":
            matmuls_to_fp16(proto)
        write_metadata(proto, meta, source, precision, sites)
        import onnx

        onnx.checker.check_model(proto)
        onnx.save(proto, str(partial))
        log(f"written in {time.perf_counter() - start:.0f} s; checking {out.name} against torch on a "
            f"{check_size[0]}x{check_size[1]} frame ...")
        diff, rel, agreement = compare_with_torch(model, partial, check_size)
        if precision == "fp32" and not rel <= MAX_RELATIVE_DIFFERENCE:
            raise ExportError(f"the exported model disagrees with torch: largest logit difference {diff:.3g} "
                              f"({rel:.3g} relative, limit {MAX_RELATIVE_DIFFERENCE:g}); nothing was written")
        if precision == "fp16" and not agreement >= MIN_MASK_AGREEMENT:
            raise ExportError(f"the fp16 model's masks agree with torch float32 on {agreement:.2%} of the pixels "
                              f"(limit {MIN_MASK_AGREEMENT:.1%}); export fp32 instead; nothing was written")
        place_new_file(partial, out)  # never replaces: fails if out appeared meanwhile
    except FileExistsError:
        raise FileExistsError(f"{out} exists; sigma-export never overwrites a file: choose another --out") from None
    except ExportError:
        raise
    except Exception as e:  # the exporter raises many kinds; one line says which step failed
        raise ExportError(f"export failed: {type(e).__name__}: {' '.join(str(e).split())[:500]}") from e
    finally:
        partial.unlink(missing_ok=True)
        model.set_scan_backend("auto")
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    return ExportReport(out, time.perf_counter() - start, out.stat().st_size, weight_bytes, check_size, diff, rel,
                        agreement, len(sites))


def check_arguments(out: Path, height: Optional[int], width: Optional[int], precision: str, opset: int,
                    check_size: Optional[tuple[int, int]] = None) -> Optional[tuple[int, int]]:
    """Checks before any work (an export takes minutes); returns the fixed (H, W) or None. FileExistsError for an
    existing ``out`` (a symbolic link too, even a dangling one), ValueError for the rest, OSError when nothing can
    be written in ``out``'s folder."""
    if out.is_symlink():
        raise FileExistsError(f"{out} is a symbolic link (to {os.readlink(out)}); sigma-export never writes through "
                              "or replaces one: choose another --out")
    if out.exists():
        kind = "a folder" if out.is_dir() else "a file"
        raise FileExistsError(f"{out} exists ({kind}); sigma-export never overwrites: choose another --out")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {out} must end in .onnx (the tools tell an exported model from a checkpoint by it)")
    if not out.parent.is_dir():
        raise ValueError(f"folder {out.parent} of --out {out} does not exist")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if opset < OPSET:
        raise ValueError(f"opset {opset} is too old; the export needs opset {OPSET} or later")
    if (height is None) != (width is None):
        raise ValueError("give both --height and --width to fix the input size, or neither (any size)")
    fixed = None
    if height is not None:
        if not (32 <= height <= 8192 and 32 <= width <= 8192):
            raise ValueError(f"input size {height}x{width} is outside 32..8192 pixels a side")
        fixed = int(height), int(width)
    if check_size is not None:
        if len(check_size) != 2 or not all(4 <= v <= 8192 for v in check_size):
            raise ValueError(f"check size {' x '.join(map(str, check_size))} is outside 4..8192 pixels a side")
        if fixed is not None and tuple(check_size) != fixed:
            raise ValueError(f"check size {check_size[0]}x{check_size[1]} differs from the fixed size "
                             f"{fixed[0]}x{fixed[1]}, the only size the file runs at: leave --check-size out")
    missing = [name for name in EXPORT_PACKAGES if not _importable(name)]
    if missing:
        raise ImportError(f"sigma-export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                          f"installed: pip install {' '.join(EXPORT_PACKAGES)}")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:  # the exporter's converter fails after the trace, with a traceback of its own
        raise ValueError(f"opset {opset} is newer than this onnx package knows ({newest}): choose {OPSET}..{newest}")
    try:  # a read-only or full folder fails now, not after the export
        probe, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(probe)
        os.unlink(name)
    except OSError as e:
        raise OSError(f"cannot write in {out.parent} (--out {out}): {e.strerror or e}") from None
    return fixed


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def trace_to_onnx(model: torch.nn.Module, fixed: Optional[tuple[int, int]], precision: str, opset: int):
    """torch.onnx.export (dynamo) with the scans as placeholders; returns the ModelProto."""
    if fixed is None:  # batch, height and width symbolic (a traced batch of 1 would be fixed at 1)
        example = (torch.zeros(2, 3, *TRACE_SIZE), torch.zeros(2, 3, *TRACE_SIZE))
        dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
        dynamic = {"rgb": dims, "x": dict(dims)}
    else:  # all static, batch 1: exports ~4x faster, and runtimes such as TensorRT prefer it
        example = (torch.zeros(1, 3, *fixed), torch.zeros(1, 3, *fixed))
        dynamic = None
    model.set_scan_backend("onnx")
    with torch.no_grad():
        program = torch.onnx.export(
            model, example, None, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, custom_translation_table=scan_onnx.onnx_translation(),
            optimize=False, verbose=False)  # ONNX Runtime folds constants itself; the optimizer took 1/3 of the time
    return program.model_proto


# Ops that only move or repeat values: a weight reaches a MatMul through them (Linear's Transpose, the scans'
# Reshape + Transpose, block_diag's Split/Concat of zeros), and they run as well on float16 values.
# {op: indices of its data inputs (None: all)}; the other inputs are integer shapes, indices or axes.
LAYOUT_OPS = {"Transpose": (0,), "Reshape": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Flatten": (0,),
              "Identity": (0,), "Slice": (0,), "Gather": (0,), "Expand": (0,), "Split": (0,), "Tile": (0,),
              "Concat": None}


def matmuls_to_fp16(proto) -> int:
    """MatMul/Conv/Gemm of the main graph in float16, as autocast runs them; returns how many were converted.

    Their float32 weights are stored float16, also where they reach the MatMul through layout ops
    (LAYOUT_OPS: Linear's Transpose, the scans' Reshape/Transpose, block_diag's Concat; those run on the
    float16 values); the float32 copy is dropped when nothing else reads it. Other inputs are cast to float16
    and each output cast back to float32, so everything between (the scans, LayerNorms) stays float32. The
    patch embedding (the convolution reading 3 channels) stays float32, as in VSSEncoder.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    producer = {out: node for node in proto.graph.node for out in node.output}
    new_nodes, half, converted = [], {}, 0

    def data_inputs(node) -> list[int]:
        indices = LAYOUT_OPS[node.op_type]
        return list(range(len(node.input))) if indices is None else [i for i in indices if i < len(node.input)]

    def constant_value(node):  # a float32 Constant's tensor, else None
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name != "value":
            return None
        value = node.attribute[0].t
        return value if value.data_type == TensorProto.FLOAT else None

    def halvable(name: str) -> bool:  # float32 computed from weights by layout ops alone
        if name in inits:
            return inits[name].data_type == TensorProto.FLOAT
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type in LAYOUT_OPS:
            return all(halvable(node.input[i]) for i in data_inputs(node))
        return constant_value(node) is not None

    def to_half(name: str) -> str:  # the float16 twin of a halvable tensor, made once
        if name in half:
            return half[name]
        if name in inits:
            weight16 = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), name + "_fp16")
            proto.graph.initializer.append(weight16)
            half[name] = weight16.name
            return weight16.name
        node = producer[name]
        twin = helper.make_node(node.op_type, list(node.input), [out + "_fp16" for out in node.output],
                                name=(node.name or node.output[0]) + "_fp16")
        value = constant_value(node)
        if value is not None:
            twin.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                numpy_helper.to_array(value).astype(np.float16), value.name + "_fp16")))
        else:
            twin.attribute.extend(node.attribute)
            for i in data_inputs(node):
                twin.input[i] = to_half(node.input[i])
        new_nodes.append(twin)  # after its inputs' producers, before the MatMul reading it
        for out, out16 in zip(node.output, twin.output):
            half[out] = out16
        return half[name]

    for node in proto.graph.node:
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        patch_embed = node.op_type == "Conv" and weight is not None and len(weight.dims) == 4 and weight.dims[1] == 3
        if node.op_type not in ("MatMul", "Conv", "Gemm") or patch_embed:
            new_nodes.append(node)
            continue
        converted += 1
        for i, name in enumerate(node.input):
            if not name:
                continue
            if halvable(name):
                node.input[i] = to_half(name)
            else:
                cast = f"{name}_to_fp16_{converted}"
                new_nodes.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT16))
                node.input[i] = cast
        out = node.output[0]
        node.output[0] = out + "_fp16"
        new_nodes.append(node)
        new_nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT))
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    drop_unused(proto)
    return converted


def drop_unused(proto) -> None:
    """Remove the main graph's nodes whose outputs nothing reads (the float32 layout chains matmuls_to_fp16
    replaced), then the initializers nothing reads. Names read inside subgraphs (If branches) count as read."""

    def names_read(graph) -> set[str]:
        read = set()
        for node in graph.node:
            read.update(node.input)
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    read |= names_read(sub)
        return read

    outputs = {o.name for o in proto.graph.output}
    while True:
        read = names_read(proto.graph) | outputs
        live = [node for node in proto.graph.node if any(out in read for out in node.output)]
        if len(live) == len(proto.graph.node):
            break
        del proto.graph.node[:]
        proto.graph.node.extend(live)
    keep = [i for i in proto.graph.initializer if i.name in read]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


def strip_trace_metadata(proto) -> None:
    """Drop the exporter's per-node debugging metadata (Python stack traces, module paths): a third of a nano file."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def deduplicate_initializers(proto) -> int:
    """Keep one copy of identical initializers (same dtype, shape and bytes); returns how many were dropped."""
    from onnx import numpy_helper

    seen, rename, keep = {}, {}, []
    for init in proto.graph.initializer:
        data = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data.tobytes()).hexdigest())
        if key in seen:
            rename[init.name] = seen[key]
        else:
            seen[key] = init.name
            keep.append(init)
    if rename:
        for node in proto.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
    return len(rename)


def write_metadata(proto, meta: CheckpointMeta, source: str, precision: str, sites: Sequence[dict]) -> None:
    """The sigma.* metadata_props sigma_core.onnx_runtime reads (everything needed to run the file); ``sites``:
    the scans (scan_onnx.expand_scan_nodes), for the native scan kernel in ONNX Runtime (onnx_scan_ops, which
    refuses an empty list: no default)."""
    values = {
        "format": FORMAT,
        "model": meta.config.name,
        "config": meta.config.to_dict(),
        "classes": list(meta.class_names),
        "palette": [list(map(int, c)) for c in meta.palette],
        "modality": meta.scaling.to_dict(),
        "normalization": meta.normalization,
        "input_size": list(meta.input_size) if meta.input_size is not None else None,
        "precision": precision,
        "source_checkpoint": str(source),
        "sigma_core_version": __version__,
        "scan_chunk": scan_onnx.STEPS,
        "scan_sites": list(sites),
    }
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = KEY_PREFIX + key, json.dumps(value)
    proto.producer_name = "sigma_core.export"
    proto.producer_version = __version__


def compare_with_torch(model: torch.nn.Module, path: Path, size: tuple[int, int]) -> tuple[float, float, float]:
    """(max |logit difference|, relative to max |torch logit|, mask agreement) of the file against torch float32
    on one random normalised frame of ``size``."""
    generator = torch.Generator().manual_seed(0)
    rgb, modal = (torch.randn(1, 3, *size, generator=generator) for _ in range(2))
    model.set_scan_backend("auto")
    with torch.inference_mode():
        expected = model(rgb, modal).float().numpy()
    got = OnnxSegmenter(path, device="cpu", scan_backend="onnx").logits(rgb.numpy(), modal.numpy())  # as written
    diff = float(np.abs(got - expected).max())
    rel = diff / max(float(np.abs(expected).max()), 1e-12)
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    return diff, rel, agreement
