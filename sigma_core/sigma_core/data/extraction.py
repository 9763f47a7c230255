"""Bag -> dataset folder: pair RGB and thermal/depth frames exactly as the live node would.

Two passes over the bag. Pass 1 reads only stamps: messages are fed in bag
order (receive time) into :class:`ApproximateTimePairer`, the node's pairing
policy, so the extracted pairs are the ones the node would have segmented.
Labels (``mono8`` class ids stamped like RGB) attach to an RGB frame with the
identical stamp. Thinning and the train/test split are then decided on the
pair list. Pass 2 decodes and writes only the chosen messages.

Output (the published layout): ``RGB/<stamp_ns>.png`` (8-bit RGB),
``Modal/<stamp_ns>.png`` (8/16-bit, lossless) or ``.tiff`` (32-bit float depth
in metres, lossless), ``Label/<stamp_ns>.png``, ``train.txt``, ``test.txt``,
``pairs.csv`` (both stamps of each pair and its split) and ``dataset.yaml``.
Frames are named by the RGB header stamp in nanoseconds. Files are written
atomically (temporary file + rename) and existing files are kept, so an
interrupted run can simply be rerun.
"""
from __future__ import annotations

import bisect
import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from ..files import atomic_write_image, atomic_write_text, read_yaml_mapping
from .bags import IMAGE_TYPES, BagError, bag_topics, describe_topics, message_to_array, open_bag, stamp_ns
from .dataset import DATASET_YAML, DatasetSpec
from .image_encoding import to_rgb8
from .modality import MODALITIES, ModalityScaling
from .pairing import ApproximateTimePairer

DEPTH_ENCODINGS = ("16UC1", "32FC1")
FLOAT_EXT = ".tiff"  # OpenCV writes and reads 32-bit float TIFF losslessly (NaN kept)


class ExtractError(ValueError):
    """Bad input for extraction; the message names the topic/file/value and what to do."""


@dataclass
class ExtractOptions:
    """Everything that decides what is extracted (validated in :meth:`check`)."""

    bag: Path
    out: Path
    rgb_topic: str
    modal_topic: str
    label_topic: Optional[str] = None
    slop: float = 0.05  # seconds
    queue_size: int = 10
    every: int = 1  # keep every N-th pair
    min_interval: float = 0.0  # seconds between kept pairs
    test_fraction: float = 0.0
    split_blocks: int = 10  # the time span is cut into this many blocks; whole blocks go to test
    split_gap: float = 1.0  # seconds: train frames this close to a test frame are dropped
    modality: Optional[str] = None  # thermal / depth; None guesses from encoding and topic name
    scaling: Optional[ModalityScaling] = None
    classes: Optional[list[str]] = None
    palette: Optional[list[list[int]]] = None
    progress: bool = True

    def check(self) -> None:
        if self.every < 1:
            raise ExtractError(f"--every must be >= 1, got {self.every}")
        if self.min_interval < 0:
            raise ExtractError(f"--min-interval must be >= 0 seconds, got {self.min_interval}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ExtractError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.split_blocks < 2:
            raise ExtractError(f"--split-blocks must be >= 2, got {self.split_blocks}")
        if self.split_gap < 0:
            raise ExtractError(f"--split-gap must be >= 0 seconds, got {self.split_gap}")
        if not self.slop > 0:
            raise ExtractError(f"--slop must be > 0 seconds, got {self.slop}")
        if self.queue_size < 1:
            raise ExtractError(f"--queue-size must be >= 1, got {self.queue_size}")
        if self.modality is not None and self.modality not in MODALITIES:
            raise ExtractError(f"--modality must be one of {MODALITIES}, got {self.modality!r}")
        topics = [t for t in (self.rgb_topic, self.modal_topic, self.label_topic) if t]
        if len(set(topics)) != len(topics):
            raise ExtractError(f"RGB, modality and label topics must differ, got {topics}")
        if self.palette is not None and self.classes is not None and len(self.palette) != len(self.classes):
            raise ExtractError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")


@dataclass(frozen=True)
class FramePair:
    name: str  # file stem: the RGB stamp in ns
    rgb_stamp: int
    modal_stamp: int
    rgb_index: int  # index of the message within its topic, in bag order
    modal_index: int
    label_index: Optional[int] = None


@dataclass
class ExtractResult:
    out: Path
    train: list[FramePair] = field(default_factory=list)
    test: list[FramePair] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    written: int = 0  # files written in this run
    skipped: int = 0  # files that existed already (resume)


@dataclass
class _TopicInfo:
    topic: str
    msgtype: str
    encoding: str = ""
    shape: tuple = ()
    dtype: str = ""


def load_class_file(path: str | os.PathLike) -> dict:
    """Classes (and palette, modality, scaling if present) from a YAML file with a ``classes`` list (e.g. a
    dataset.yaml or the synthetic world's description), or a text file with one class name per line."""
    path = Path(path)
    is_yaml = path.suffix in (".yaml", ".yml")
    try:
        content = read_yaml_mapping(path) if is_yaml else path.read_text()
    except OSError as exc:
        raise ExtractError(f"cannot read classes file {path}: {exc.strerror}") from None
    except ValueError as exc:  # not YAML, or not a mapping
        raise ExtractError(str(exc)) from None
    if is_yaml:
        if not isinstance(content.get("classes"), list):
            raise ExtractError(f"{path} has no 'classes' list")
        return {k: content[k] for k in ("classes", "palette", "modality", "scaling") if content.get(k) is not None}
    names = [s.strip() for s in content.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if not names:
        raise ExtractError(f"{path} lists no class names (one per line)")
    return {"classes": names}


def _decide_modality(opts: ExtractOptions, info: _TopicInfo) -> str:
    if opts.modality:
        return opts.modality
    if info.encoding in DEPTH_ENCODINGS or "depth" in opts.modal_topic.lower():
        return "depth"
    return "thermal"


def _thin(pairs: list[FramePair], every: int, min_interval: float) -> list[FramePair]:
    kept = pairs[::every]
    if min_interval > 0:
        out, last = [], None
        for p in kept:
            if last is None or (p.rgb_stamp - last) >= min_interval * 1e9:
                out.append(p)
                last = p.rgb_stamp
        kept = out
    return kept


def split_by_time(pairs: list[FramePair], test_fraction: float, blocks: int, gap_s: float):
    """Contiguous time blocks: the span is cut into ``blocks`` equal blocks, about test_fraction of them
    (evenly spread) go to test; train frames within ``gap_s`` of any test frame are dropped.

    Returns (train, test, dropped_count). Pairs must be sorted by RGB stamp.
    """
    if test_fraction <= 0 or len(pairs) < 2:
        return list(pairs), [], 0
    t0, t1 = pairs[0].rgb_stamp, pairs[-1].rgb_stamp
    span = max(t1 - t0, 1)
    n_test = max(1, int(round(test_fraction * blocks)))
    test_blocks = {min(blocks - 1, int((i + 0.5) * blocks / n_test)) for i in range(n_test)}
    train, test = [], []
    for p in pairs:
        b = min(blocks - 1, int((p.rgb_stamp - t0) * blocks // span))
        (test if b in test_blocks else train).append(p)
    if not test:
        return train, test, 0
    test_stamps = [p.rgb_stamp for p in test]
    gap = gap_s * 1e9
    kept = []
    for p in train:
        i = bisect.bisect_left(test_stamps, p.rgb_stamp)
        near = min(abs(test_stamps[j] - p.rgb_stamp) for j in (i - 1, i) if 0 <= j < len(test_stamps))
        if near >= gap:
            kept.append(p)
    return kept, test, len(train) - len(kept)


def _clean_stale_tmp(folders: list[Path]) -> None:
    for d in folders:
        for p in d.glob(".*.tmp*"):
            p.unlink(missing_ok=True)


def _modal_ext(info: _TopicInfo) -> str:
    return FLOAT_EXT if info.dtype == "float32" else ".png"


def _first_image_info(reader, conn, topic: str) -> _TopicInfo:
    for c, _, raw in reader.messages(connections=[conn]):
        arr, enc = message_to_array(reader.deserialize(raw, c.msgtype))
        return _TopicInfo(topic, c.msgtype, enc, tuple(arr.shape), str(arr.dtype))
    raise ExtractError(f"topic {topic} has no messages")


def extract(opts: ExtractOptions) -> ExtractResult:
    """Extract a dataset folder from a bag (see module docstring). Raises ExtractError/BagError on bad input."""
    opts.check()
    out = Path(opts.out)
    with open_bag(opts.bag) as reader:
        topics = bag_topics(reader)
        wanted = {"RGB": opts.rgb_topic, "modality": opts.modal_topic}
        if opts.label_topic:
            wanted["label"] = opts.label_topic
        for role, topic in wanted.items():
            if topic not in topics:
                raise ExtractError(f"{role} topic {topic} is not in {opts.bag}; the bag has: {describe_topics(reader)}")
            if topics[topic] not in IMAGE_TYPES:
                raise ExtractError(f"{role} topic {topic} carries {topics[topic]}, not an Image or CompressedImage")
        conns = {t: [c for c in reader.connections if c.topic == t] for t in set(wanted.values())}
        infos = {role: _first_image_info(reader, conns[t][0], t) for role, t in wanted.items()}
        _check_encodings(infos)
        modality = _decide_modality(opts, infos["modality"])
        all_conns = [c for t in conns for c in conns[t]]
        total = sum(c.msgcount for c in all_conns)
        pairs, counts = _pair_stamps(reader, all_conns, opts, total)
        _check_pairs(pairs, counts, opts)
        pairs.sort(key=lambda p: p.rgb_stamp)
        labelled = len(pairs)
        if opts.label_topic:
            labelled = sum(p.label_index is not None for p in pairs)
            if labelled == 0:
                raise ExtractError(
                    f"no label message on {opts.label_topic} has the stamp of a paired RGB frame on {opts.rgb_topic}; "
                    "labels must be stamped exactly like the RGB image they annotate"
                )
            pairs = [p for p in pairs if p.label_index is not None]
        kept = _thin(pairs, opts.every, opts.min_interval)
        train, test, dropped = split_by_time(kept, opts.test_fraction, opts.split_blocks, opts.split_gap)
        result = ExtractResult(out=out, train=train, test=test)
        result.counts = {
            **counts, "labelled_pairs": labelled, "kept": len(kept), "train": len(train),
            "test": len(test), "dropped_at_split": dropped,
        }
        _check_same_extraction(out, opts)
        folders = [out / "RGB", out / "Modal"] + ([out / "Label"] if opts.label_topic else [])
        for d in folders:
            d.mkdir(parents=True, exist_ok=True)
        _clean_stale_tmp(folders)
        _write_frames(reader, conns, wanted, infos, train + test, out, opts, result)
    _write_lists_and_yaml(out, opts, infos, modality, result)
    return result


def _check_encodings(infos: dict[str, _TopicInfo]) -> None:
    rgb = infos["RGB"]
    try:
        to_rgb8(np.zeros(rgb.shape, rgb.dtype), rgb.encoding)
    except ValueError as exc:
        raise ExtractError(f"RGB topic {rgb.topic}: {exc}") from None
    label = infos.get("label")
    if label is not None:
        if label.dtype != "uint8" or len(label.shape) != 2:
            raise ExtractError(
                f"label topic {label.topic} must carry mono8 class ids, got {label.encoding} {label.shape}"
            )
        if label.shape != rgb.shape[:2]:
            raise ExtractError(f"label topic {label.topic} is {label.shape}, RGB {rgb.topic} is {rgb.shape[:2]}")


def _pair_stamps(reader, conns, opts: ExtractOptions, total: int) -> tuple[list[FramePair], dict]:
    pairer = ApproximateTimePairer(queue_size=opts.queue_size, slop=opts.slop)
    index = {opts.rgb_topic: 0, opts.modal_topic: 0}
    if opts.label_topic:
        index[opts.label_topic] = 0
    span = {t: [None, None] for t in index}
    labels: dict[int, int] = {}
    raw_pairs = []
    bar = tqdm(total=total, desc="pairing", unit="msg", disable=not opts.progress, leave=False)
    for conn, _, raw in reader.messages(connections=conns):
        bar.update(1)
        topic = conn.topic
        st = stamp_ns(reader.deserialize(raw, conn.msgtype))
        i = index[topic]
        index[topic] = i + 1
        lo_hi = span[topic]
        lo_hi[0] = st if lo_hi[0] is None else min(lo_hi[0], st)
        lo_hi[1] = st if lo_hi[1] is None else max(lo_hi[1], st)
        if topic == opts.label_topic:
            labels.setdefault(st, i)
            continue
        # the node's pairer takes float seconds; feed it exactly what the node would see
        pair = pairer.add(0 if topic == opts.rgb_topic else 1, st * 1e-9, (st, i))
        if pair is not None:
            raw_pairs.append((pair.first, pair.second))
    bar.close()
    pairs = [
        FramePair(str(rs), rs, ms, ri, mi, labels.get(rs)) for (rs, ri), (ms, mi) in raw_pairs
    ]
    counts = {"rgb_messages": index[opts.rgb_topic], "modal_messages": index[opts.modal_topic], "pairs": len(pairs),
              "spans": span}
    if opts.label_topic:
        counts["label_messages"] = index[opts.label_topic]
    return pairs, counts


def _check_pairs(pairs: list[FramePair], counts: dict, opts: ExtractOptions) -> None:
    if pairs:
        counts.pop("spans")
        return
    span = counts.pop("spans")

    def fmt(topic):
        lo, hi = span[topic]
        return "no messages" if lo is None else f"{lo * 1e-9:.3f}..{hi * 1e-9:.3f} s"

    (a_lo, a_hi), (b_lo, b_hi) = span[opts.rgb_topic], span[opts.modal_topic]
    overlap = None not in (a_lo, b_lo) and a_lo <= b_hi and b_lo <= a_hi
    why = (f"the streams overlap in time, but no frames are within {opts.slop} s of each other: raise --slop "
           "(e.g. --slop 0.05, half the slower camera's frame period)" if overlap else
           "the streams do not overlap in time (unsynchronised clocks?) or need a larger --slop")
    raise ExtractError(
        f"no RGB/modality pairs within --slop {opts.slop} s: {opts.rgb_topic} stamps span {fmt(opts.rgb_topic)}, "
        f"{opts.modal_topic} {fmt(opts.modal_topic)}; {why}"
    )


def _write_frames(reader, conns, wanted, infos, pairs: list[FramePair], out: Path, opts, result) -> None:
    modal_ext = _modal_ext(infos["modality"])
    jobs: dict[str, dict[int, Path]] = {t: {} for t in conns}

    def want(topic, idx, path):
        if path.exists():
            result.skipped += 1
        else:
            jobs[topic][idx] = path

    for p in pairs:
        want(opts.rgb_topic, p.rgb_index, out / "RGB" / f"{p.name}.png")
        want(opts.modal_topic, p.modal_index, out / "Modal" / f"{p.name}{modal_ext}")
        if opts.label_topic and p.label_index is not None:
            want(opts.label_topic, p.label_index, out / "Label" / f"{p.name}.png")
    n_jobs = sum(len(j) for j in jobs.values())
    if n_jobs == 0:
        return
    role_of = {t: r for r, t in wanted.items()}
    todo_conns = [c for t, cs in conns.items() if jobs[t] for c in cs]
    index = dict.fromkeys(conns, 0)
    bar = tqdm(total=n_jobs, desc="writing", unit="file", disable=not opts.progress, leave=False)
    for conn, _, raw in reader.messages(connections=todo_conns):
        topic = conn.topic
        i = index[topic]
        index[topic] = i + 1
        path = jobs[topic].pop(i, None)
        if path is None:
            continue
        arr, enc = message_to_array(reader.deserialize(raw, conn.msgtype))
        role = role_of[topic]
        if role == "RGB":
            image = cv2.cvtColor(np.ascontiguousarray(to_rgb8(arr, enc)), cv2.COLOR_RGB2BGR)
        elif role == "label":
            if arr.dtype != np.uint8 or arr.ndim != 2:
                raise ExtractError(f"label message {i} on {topic} is {enc}, expected mono8 class ids")
            image = arr
        else:
            image = _modal_for_file(arr, enc)
        atomic_write_image(path, image)
        result.written += 1
        bar.update(1)
        if not any(jobs.values()):
            break
    bar.close()
    missing = sum(len(j) for j in jobs.values())
    if missing:
        raise ExtractError(f"{missing} selected messages were not found on the second pass over {opts.bag}")


def _modal_for_file(arr: np.ndarray, enc: str) -> np.ndarray:
    """Modality array -> what the file stores: mono as is (8/16-bit PNG, float TIFF), colour as BGR."""
    if arr.ndim == 3:
        rgb = to_rgb8(arr, enc)
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    return arr


def _source(opts: ExtractOptions) -> dict:
    """The options that decide an extraction's frames and splits, as dataset.yaml records them."""
    return {
        "bag": str(Path(opts.bag).resolve()), "rgb_topic": opts.rgb_topic, "modal_topic": opts.modal_topic,
        "label_topic": opts.label_topic, "slop": opts.slop, "queue_size": opts.queue_size,
        "every": opts.every, "min_interval": opts.min_interval, "test_fraction": opts.test_fraction,
        "split_blocks": opts.split_blocks, "split_gap": opts.split_gap,
    }


def _check_same_extraction(out: Path, opts: ExtractOptions) -> None:
    """A rerun into ``out`` resumes the extraction it holds; with other options it would replace the split lists
    and leave the other run's frames beside the new ones, so it is refused before anything is written."""
    yaml_path = out / DATASET_YAML
    if not yaml_path.is_file():
        return
    try:
        before = read_yaml_mapping(yaml_path).get("source") or {}
    except (ValueError, OSError):
        before = {}
    now = _source(opts)
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if k in before and before[k] != v]
    if changed:
        raise ExtractError(f"{out} holds an extraction made with other options ({'; '.join(changed)}); a rerun "
                           "into the same folder only resumes that extraction. Extract into a new folder (-o), "
                           "or delete this one first")


def _write_lists_and_yaml(out: Path, opts: ExtractOptions, infos, modality: str, result: ExtractResult) -> None:
    atomic_write_text(out / "train.txt", "".join(f"{p.name}\n" for p in result.train))
    atomic_write_text(out / "test.txt", "".join(f"{p.name}\n" for p in result.test))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "rgb_stamp_ns", "modal_stamp_ns", "skew_ms", "split"])
    rows = [(p, "train") for p in result.train] + [(p, "test") for p in result.test]
    for p, split in sorted(rows, key=lambda r: r[0].rgb_stamp):
        w.writerow([p.name, p.rgb_stamp, p.modal_stamp, f"{(p.rgb_stamp - p.modal_stamp) * 1e-6:.3f}", split])
    atomic_write_text(out / "pairs.csv", buf.getvalue())
    rgb, mod = infos["RGB"], infos["modality"]
    scaling = opts.scaling or ModalityScaling(modality)
    spec = DatasetSpec(
        name=Path(opts.bag).stem or Path(opts.bag).name,
        classes=tuple(opts.classes) if opts.classes else None,
        palette=tuple(tuple(c) for c in opts.palette) if opts.palette else None,
        modality=modality,
        scaling=scaling,
        label_dir="Label" if opts.label_topic else None,
        modal_ext=_modal_ext(mod),
        splits={"train": ("train.txt",), "test": ("test.txt",)},
        image_size=tuple(int(v) for v in rgb.shape[:2]),
        extra={
            "format": "sigma-rgbx-1",
            "encodings": {
                "rgb": rgb.encoding, "rgb_msgtype": rgb.msgtype,
                "modal": mod.encoding, "modal_msgtype": mod.msgtype,
                "modal_stored": f"{mod.dtype} {'tiff (metres)' if _modal_ext(mod) == FLOAT_EXT else 'png'}",
                **({"label": infos["label"].encoding} if "label" in infos else {}),
            },
            "source": _source(opts),
            "counts": result.counts,
        },
    )
    spec.write_yaml(out)


__all__ = ["BagError", "ExtractError", "ExtractOptions", "ExtractResult", "FramePair", "extract", "load_class_file",
           "split_by_time"]
