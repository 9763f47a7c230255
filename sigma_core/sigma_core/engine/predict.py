"""sigma-predict's work: segment every pair of a source and write masks, colour masks, overlays and confidences.

Each pair goes through ``sigma_core.segmentation_step`` (the node's per-frame step; batched through
``segment_pairs`` when ``batch_size`` > 1, which gives the same masks), so a mask written here is the mask the
node would publish for the same images. Output folder (never overwritten: it must be new or empty)::

    mask/<name>.png         class ids, 8-bit grey (255: unlabelled)
    color/<name>.png        the mask in the checkpoint's palette
    overlay/<name>.png      the colour mask blended over the RGB image
    confidence/<name>.tiff  max softmax probability, float32 (only when asked)
    summary.json            source, checkpoint, frames, FPS (after the warm-up forward), per-class pixel share
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import cv2
import numpy as np

from ..data.frame_sources import FramePair, PairSource
from ..data.registration import Registration
from ..files import atomic_write_image, atomic_write_text
from ..mask_rendering import colorize, lookup_palette, overlay
from ..segmentation_step import FrameResult, segment_pair, segment_pairs

OUTPUTS = ("mask", "color", "overlay", "confidence")
DEFAULT_OUTPUTS = ("mask", "color", "overlay")


@dataclass(frozen=True)
class PredictOptions:
    out: Path
    outputs: Sequence[str] = DEFAULT_OUTPUTS
    batch_size: int = 1
    overlay_alpha: float = 0.5
    progress: bool = True
    registration: Optional[Registration] = None  # of the modality into the RGB view, as the node's (None: none)


def check_output_folder(out: Path) -> None:
    """ValueError unless ``out`` is new or an empty folder: sigma-predict never overwrites a file."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: name a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} already holds files (sigma-predict never overwrites): name a new folder")


def _batches(pairs: PairSource, size: int) -> Iterator[list[FramePair]]:
    batch: list[FramePair] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _segment(segmenter: Any, batch: list[FramePair], registration: Optional[Registration]) -> list[FrameResult]:
    if len(batch) == 1:
        p = batch[0]
        return [segment_pair(segmenter, p.rgb, p.rgb_encoding, p.modal, registration=registration)]
    # one RGB encoding per call: a folder may mix grey and colour images
    results: list[Optional[FrameResult]] = [None] * len(batch)
    by_encoding: dict[str, list[int]] = {}
    for i, p in enumerate(batch):
        by_encoding.setdefault(p.rgb_encoding, []).append(i)
    for encoding, idx in by_encoding.items():
        out = segment_pairs(segmenter, [batch[i].rgb for i in idx], encoding, [batch[i].modal for i in idx],
                            max_batch=len(idx), registration=registration)
        for i, r in zip(idx, out):
            results[i] = r
    return results  # type: ignore[return-value]


def _write(out: Path, name: str, result: FrameResult, outputs: Sequence[str], table: np.ndarray,
           alpha: float) -> None:
    if "mask" in outputs:
        atomic_write_image(out / "mask" / f"{name}.png", result.mask)
    if "color" in outputs or "overlay" in outputs:
        color = colorize(result.mask, table)
        if "color" in outputs:
            atomic_write_image(out / "color" / f"{name}.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        if "overlay" in outputs:
            blended = overlay(result.rgb, color, alpha)
            atomic_write_image(out / "overlay" / f"{name}.png", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    if "confidence" in outputs:
        atomic_write_image(out / "confidence" / f"{name}.tiff", result.confidence)


def predict(pairs: PairSource, segmenter: Any, options: PredictOptions, checkpoint: str = "") -> dict[str, Any]:
    """Segment every pair of ``pairs`` and write the outputs; the summary (also in summary.json).

    Raises ValueError for an output folder that holds files, or a pair the step refuses (naming the frame).
    """
    from tqdm import tqdm

    out = options.out
    check_output_folder(out)
    unknown = sorted(set(options.outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"unknown outputs {unknown}: choose from {', '.join(OUTPUTS)}")
    out.mkdir(parents=True, exist_ok=True)
    table = lookup_palette(np.asarray(segmenter.palette, np.uint8))
    pixels = np.zeros(segmenter.num_classes, np.int64)
    frames, model_s, names, notes = 0, 0.0, [], set()
    warmup_s = 0.0
    started = time.perf_counter()
    bar = tqdm(total=len(pairs), unit="frame", desc="sigma-predict", disable=not options.progress)
    try:
        for batch in _batches(pairs, max(1, options.batch_size)):
            if not frames:  # the first forward compiles the scan kernels: timed apart, as the node's warm-up
                warm = time.perf_counter()
                segmenter.warmup(segmenter.input_size or batch[0].rgb.shape[:2])
                warmup_s = time.perf_counter() - warm
            try:
                results = _segment(segmenter, batch, options.registration)
            except ValueError as e:
                raise ValueError(f"frame {batch[0].name}: {e}") from e
            for pair, result in zip(batch, results):
                _write(out, pair.name, result, options.outputs, table, options.overlay_alpha)
                pixels += result.counts.pixel_count
                model_s += result.inference_ms / 1e3
                names.append(pair.name)
                if result.aspect_warning:  # two cameras without --calibration: said once, in the summary
                    notes.add(result.aspect_warning.replace("registration.mode (rig or homography) with "
                                                            "registration.calibration_file", "--calibration"))
            frames += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    seconds = time.perf_counter() - started - warmup_s
    total = max(int(pixels.sum()), 1)
    summary = {
        "source": pairs.description,
        "skipped": pairs.skipped,
        "notes": sorted(notes),
        "registration": options.registration.mode if options.registration is not None else "none",
        "checkpoint": checkpoint,
        "model": segmenter.model_name,
        "modality": segmenter.modality,
        "device": str(segmenter.device),
        "precision": segmenter.precision,
        "batch_size": options.batch_size,
        "frames": frames,
        "seconds": round(seconds, 3),
        "warmup_seconds": round(warmup_s, 3),
        "fps": round(frames / seconds, 3) if seconds > 0 else None,
        "model_fps": round(frames / model_s, 3) if model_s > 0 else None,
        "class_pixel_share": {name: float(n) / total for name, n in zip(segmenter.class_names, pixels)},
        "outputs": list(options.outputs),
        "frame_names": names,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The console summary: frames, FPS, and each class's share of the pixels (largest first)."""
    lines = [f"{summary['frames']} frames from {summary['source']} in {summary['seconds']:.1f} s "
             f"(after a {summary['warmup_seconds']:.1f} s warm-up): "
             f"{summary['fps'] or 0:.2f} FPS overall, {summary['model_fps'] or 0:.2f} FPS in the model "
             f"({summary['model']}, {summary['device']}, {summary['precision']}, batch {summary['batch_size']})"]
    lines += [f"left out: {s}" for s in summary["skipped"]]
    lines += [f"note: {s}" for s in summary["notes"]]
    lines.append("class pixel share:")
    share = sorted(summary["class_pixel_share"].items(), key=lambda kv: -kv[1])
    width = max((len(n) for n, _ in share), default=5)
    lines += [f"  {name:<{width}} {100 * value:6.2f} %" for name, value in share]
    return lines


__all__ = ["DEFAULT_OUTPUTS", "OUTPUTS", "PredictOptions", "check_output_folder", "predict", "summary_lines"]
