"""sigma-predict's work: segment every pair of a source and write masks, colour masks, overlays and confidences.

Each pair goes through ``sigma_core.segmentation_step`` (the node's per-frame step; batched through
``segment_pairs`` when ``batch_size`` > 1, which gives the same masks), so a mask written here is the mask the
node would publish for the same images. Output folder (never overwritten: it must be new or empty)::

    mask/<name>.png         class ids, 8-bit grey (255: unlabelled)
    color/<name>.png        the mask in the checkpoint's palette
    overlay/<name>.png      the colour mask blended over the RGB image
    confidence/<name>.tiff  max softmax probability, float32 (only when asked)
    summary.json            source, checkpoint, frames, FPS (after the warm-up forward), per-class pixel share,
                            frames left out and why, and "complete" (false: interrupted or stopped by an error)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import cv2
import numpy as np

from ..data.errors import DataError
from ..data.frame_sources import FramePair, PairSource
from ..data.modality import depth_stream_evidence
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
    if out.is_symlink() and not out.exists():
        raise ValueError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist: name a new "
                         "folder")
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


def _segment_each(segmenter: Any, batch: list[FramePair], registration: Optional[Registration],
                  left_out: list[str]) -> list[tuple[FramePair, FrameResult]]:
    """The batch's results; a pair the step refuses (ValueError: a size, a value range) is left out, said why."""
    try:
        return list(zip(batch, _segment(segmenter, batch, registration)))
    except ValueError:
        if len(batch) == 1:
            return _refused(segmenter, batch[0], registration, left_out)
    done = []  # one refused pair fails its whole batch: the others go through one at a time
    for pair in batch:
        done += _refused(segmenter, pair, registration, left_out)
    return done


def _refused(segmenter: Any, pair: FramePair, registration: Optional[Registration],
             left_out: list[str]) -> list[tuple[FramePair, FrameResult]]:
    try:
        return [(pair, _segment(segmenter, [pair], registration)[0])]
    except ValueError as e:
        left_out.append(f"{pair.name}: {e}")
        return []


def _modality_mismatch(pairs: PairSource, pair: FramePair, segmenter: Any) -> Optional[str]:
    """The note for a thermal model fed depth images (a range cannot fix that), or a depth model fed 8-bit images
    or a path saying thermal; None when the images fit the model."""
    if segmenter.scaling.modality == "depth":
        reasons = []
        if pair.modal.dtype == np.uint8:
            reasons.append("they are 8-bit, which a depth model reads as 0-255 mm (depth images are 16-bit "
                           "millimetres or 32-bit float metres; 8-bit ones are thermal or a depth visualisation)")
        if any(word in pairs.modal_path.lower() for word in ("thermal", "lwir", "flir", "infrared")):
            reasons.append(f"the path {pairs.modal_path} says thermal")
        if not reasons:
            return None
        return (f"the modality images may not be depth ({'; '.join(reasons)}) but {segmenter.model_name} is a "
                "depth model: --modality thermal (the bundled thermal model) or --checkpoint <a thermal "
                "checkpoint>, or 16-bit millimetre depth files")
    encoding = {np.dtype(np.uint16): "16UC1", np.dtype(np.float32): "32FC1"}.get(pair.modal.dtype, "")
    reasons = depth_stream_evidence(pairs.modal_path, encoding, pair.modal, False, named="the path")
    if not reasons:
        return None
    return (f"the modality images look like depth ({'; '.join(reasons)}) but {segmenter.model_name} is a thermal "
            "model, so its masks mean nothing here: --modality depth (the bundled depth model) or --checkpoint "
            "<a depth checkpoint>")


def predict(pairs: PairSource, segmenter: Any, options: PredictOptions, checkpoint: str = "",
            warn: Any = None) -> dict[str, Any]:
    """Segment every pair of ``pairs`` and write the outputs; the summary (also in summary.json).

    A pair whose files cannot be read (corrupt, empty, oversized) or that the step refuses is left out and
    listed in the summary's ``left_out`` with its reason; ``warn(text)`` (default: nothing) hears a note at once.
    Interrupted or stopped by an error, the run still writes summary.json with ``"complete": false`` and the
    frames written so far (a folder it created and wrote nothing into is removed), then re-raises: a partial
    folder never looks like a finished one.
    Raises ValueError for an output folder that holds files, or when no pair at all could be segmented
    (DataError when every pair's files were unreadable).
    """
    from tqdm import tqdm

    out = options.out
    check_output_folder(out)
    unknown = sorted(set(options.outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"unknown outputs {unknown}: choose from {', '.join(OUTPUTS)}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    table = lookup_palette(np.asarray(segmenter.palette, np.uint8))
    pixels = np.zeros(segmenter.num_classes, np.int64)
    frames, model_s, names, notes, left_out, unreadable, seen = 0, 0.0, [], [], [], 0, 0
    resized = 0
    skipped = list(pairs.skipped)  # what the source left out, and frames a truncated video never delivered
    warmup_s = 0.0
    started = time.perf_counter()
    bar = tqdm(total=len(pairs), unit="frame", desc="sigma-predict", disable=not options.progress)

    def note(text: str) -> None:
        if text not in notes:
            notes.append(text)
            if warn is not None:
                warn(text)

    def summary(complete: bool, stopped: str = "") -> dict[str, Any]:
        if not names and created:  # nothing written: leave no folder behind, as if the run had not started
            out.rmdir()
            return {}
        seconds = time.perf_counter() - started - warmup_s
        total = max(int(pixels.sum()), 1)
        result = {
            "complete": complete,
            **({"stopped": stopped} if stopped else {}),
            "source": pairs.description,
            "skipped": skipped,
            "left_out": left_out,
            "notes": notes,
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
            "fps": round(frames / seconds, 3) if seconds > 0 and frames else None,
            "model_fps": round(frames / model_s, 3) if model_s > 0 else None,
            "class_pixel_share": {name: float(n) / total for name, n in zip(segmenter.class_names, pixels)},
            "outputs": list(options.outputs),
            "frame_names": names,
        }
        atomic_write_text(out / "summary.json", json.dumps(result, indent=2) + "\n")
        return result

    try:
        for batch in _batches(pairs, max(1, options.batch_size)):
            readable = []
            for pair in batch:
                if pair.problem is not None:
                    left_out.append(pair.problem)
                    unreadable += 1
                else:
                    readable.append(pair)
            if readable and not names and not warmup_s:
                # the first forward compiles the scan kernels: timed apart, as the node's warm-up
                warm = time.perf_counter()
                segmenter.warmup(segmenter.input_size or readable[0].rgb.shape[:2])
                warmup_s = time.perf_counter() - warm
                mismatch = _modality_mismatch(pairs, readable[0], segmenter)
                if mismatch:
                    note(mismatch)
            for pair, result in _segment_each(segmenter, readable, options.registration, left_out):
                names.append(pair.name)  # before its files: an interruption between the two is reconciled below
                _write(out, pair.name, result, options.outputs, table, options.overlay_alpha)
                pixels += result.counts.pixel_count
                model_s += result.inference_ms / 1e3
                if result.modal_resized:
                    resized += 1
                if result.aspect_warning:  # two cameras without --calibration: said once, in the summary
                    note(result.aspect_warning.replace("registration.mode (rig or homography) with "
                                                       "registration.calibration_file", "--calibration"))
            frames = len(names)
            seen += len(batch)
            bar.update(len(batch))
    except BaseException as e:  # Ctrl-C, a full disk, ...: the folder says it is partial, then the error goes on
        bar.close()
        if names and not (out / "mask" / f"{names[-1]}.png").exists():
            names.pop()  # stopped before its mask was written
        frames = len(names)
        summary(False, "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}")
        raise
    bar.close()
    if resized:  # as the node says it: the model saw a resampled modality
        note(f"{resized} of {len(names)} pairs had a modality image of another size than the RGB image: resized to "
             f"it ({'nearest' if segmenter.scaling.modality == 'depth' else 'bilinear'})")
    if seen < len(pairs):  # a video whose header promises more frames than its data holds (truncated, damaged)
        skipped.append(f"{len(pairs) - seen} of the {len(pairs)} pairs {pairs.description} declared: the source "
                        f"ended after {seen} (a truncated or damaged video)")
    if not names:
        summary(False, "no pair could be segmented")
        if len(left_out) == 1:  # one pair: its own reason, as a bad file (DataError) or a refused image
            raise (DataError if unreadable else ValueError)(left_out[0])
        error = DataError if left_out and unreadable == len(left_out) else ValueError
        raise error(f"no pair could be segmented ({len(left_out)} left out), e.g. {left_out[0]}"
                    if left_out else "no pair to segment")
    return summary(True)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The console summary: frames, FPS, and each class's share of the pixels (largest first)."""
    lines = [f"{summary['frames']} frames from {summary['source']} in {summary['seconds']:.1f} s "
             f"(after a {summary['warmup_seconds']:.1f} s warm-up): "
             f"{summary['fps'] or 0:.2f} FPS overall, {summary['model_fps'] or 0:.2f} FPS in the model "
             f"({summary['model']}, {summary['device']}, {summary['precision']}, batch {summary['batch_size']})"]
    lines += [f"left out: {s}" for s in summary["skipped"]]
    if summary["left_out"]:
        lines.append(f"left out: {len(summary['left_out'])} frames that could not be read or segmented, e.g. "
                     f"{summary['left_out'][0]} (all in summary.json)")
    lines += [f"note: {s}" for s in summary["notes"]]
    lines.append("class pixel share:")
    share = sorted(summary["class_pixel_share"].items(), key=lambda kv: -kv[1])
    width = max((len(n) for n, _ in share), default=5)
    lines += [f"  {name:<{width}} {100 * value:6.2f} %" for name, value in share]
    return lines


__all__ = ["DEFAULT_OUTPUTS", "OUTPUTS", "PredictOptions", "check_output_folder", "predict", "summary_lines"]
