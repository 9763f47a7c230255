"""Bag -> dataset folder: pair RGB and thermal/depth frames exactly as the live node would.

Two passes over the bag. Pass 1 reads stamps (and the class ids in each
label). Without labels, messages are fed in bag order (receive time) into
:class:`ApproximateTimePairer`, the node's pairing policy, so the extracted
pairs are the ones the node would have segmented. With a label topic
(``mono8`` class ids stamped like the RGB image they annotate, usually at a
lower rate), every label is kept with the RGB frame of its stamp and the
nearest modality frame strictly within the slop (one modality frame may serve
several labelled frames); labels without either are counted and reported, and
label ids beyond the ``--classes`` list stop the extraction. A stamp seen
twice on a topic (a looped recording) keeps its first message only, so RGB,
modality and label of a frame always come from the messages of one stamp.
Thinning and the train/test split are then decided on the pair list. Pass 2
decodes and writes only the chosen messages.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from ..files import atomic_write_image, atomic_write_text, read_yaml_mapping
from .bags import (
    IMAGE_TYPES,
    BagError,
    bag_topics,
    describe_topics,
    message_to_array,
    open_bag,
    read_messages,
    resolve_topic,
    stamp_ns,
)
from .calibration import CalibrationError, load_calibration
from .dataset import DATASET_YAML, DatasetSpec
from .errors import DataError
from .image_encoding import to_rgb8
from .labels import check_class_names, check_label_values, label_from_message
from .modality import MODALITIES, ModalityScaling
from .pairing import ApproximateTimePairer
from .registration import DEFAULT_DISTANCE_M, Registration

DEPTH_ENCODINGS = ("16UC1", "32FC1")
FLOAT_EXT = ".tiff"  # OpenCV writes and reads 32-bit float TIFF losslessly (NaN kept)


class ExtractError(DataError):
    """Bad input for extraction; the message names the topic/file/value and what to do."""


@dataclass
class ExtractOptions:
    """Everything that decides what is extracted (validated in :meth:`check`)."""

    bag: Path
    out: Path
    rgb_topic: str
    modal_topic: str
    label_topic: Optional[str] = None
    slop: Optional[float] = None  # seconds; None: the node's 0.05 without labels, fitted to the streams with labels
    queue_size: int = 10
    every: int = 1  # keep every N-th pair
    min_interval: float = 0.0  # seconds between kept pairs
    test_fraction: float = 0.0
    split_blocks: int = 10  # the time span is cut into this many blocks; whole blocks go to test
    split_gap: Optional[float] = None  # seconds: train frames this close to a test frame go to gap.txt, not train;
    # None: 1.0 without labels, 0 with labels (every labelled frame that pairs is in train or test)
    modality: Optional[str] = None  # thermal / depth; None guesses from encoding and topic name
    scaling: Optional[ModalityScaling] = None
    classes: Optional[list[str]] = None
    palette: Optional[list[list[int]]] = None
    progress: bool = True
    allow_partial: bool = False  # a damaged bag read in part is a warning (result.warnings), not an error
    # A two-camera calibration: modality frames are registered into the RGB view (sigma_core.data.registration),
    # exactly as the node does with registration.calibration_file. mode None: the file's.
    calibration: Optional[Path] = None
    registration_mode: Optional[str] = None
    registration_distance: float = DEFAULT_DISTANCE_M

    def check(self) -> None:
        if self.every < 1:
            raise ExtractError(f"--every must be >= 1, got {self.every}")
        if self.min_interval < 0:
            raise ExtractError(f"--min-interval must be >= 0 seconds, got {self.min_interval}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ExtractError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.split_blocks < 2:
            raise ExtractError(f"--split-blocks must be >= 2, got {self.split_blocks}")
        if self.split_gap is not None and self.split_gap < 0:
            raise ExtractError(f"--split-gap must be >= 0 seconds, got {self.split_gap}")
        if self.slop is not None and not self.slop > 0:
            raise ExtractError(f"--slop must be > 0 seconds, got {self.slop}")
        if self.queue_size < 1:
            raise ExtractError(f"--queue-size must be >= 1, got {self.queue_size}")
        if self.modality is not None and self.modality not in MODALITIES:
            raise ExtractError(f"--modality must be one of {MODALITIES}, got {self.modality!r}")
        topics = [t for t in (self.rgb_topic, self.modal_topic, self.label_topic) if t]
        if len(set(topics)) != len(topics):
            raise ExtractError(f"RGB, modality and label topics must differ, got {topics}")
        if self.registration_mode is not None and self.calibration is None:
            raise ExtractError(f"--registration-mode {self.registration_mode} needs --calibration FILE")
        if self.palette is not None and self.classes is not None and len(self.palette) != len(self.classes):
            raise ExtractError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if self.classes is not None:
            try:
                check_class_names(self.classes, "--classes")
            except ValueError as exc:
                raise ExtractError(str(exc)) from None


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
    near_test: list[FramePair] = field(default_factory=list)  # within --split-gap of test: written, in gap.txt
    counts: dict = field(default_factory=dict)
    written: int = 0  # files written in this run
    skipped: int = 0  # files that existed already (resume)
    notes: list[str] = field(default_factory=list)  # what was left out and why
    warnings: list[str] = field(default_factory=list)  # a damaged bag read in part (allow_partial)
    registration: Optional[Registration] = None  # of the modality into the RGB view (--calibration)
    coverage: list[float] = field(default_factory=list)  # per registered modality frame written


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
    (evenly spread) go to test; train frames within ``gap_s`` of any test frame go to neither split (near-
    duplicates of test frames), but are kept apart: the extraction still writes and lists them (gap.txt).

    Returns (train, test, near_test). Pairs must be sorted by RGB stamp.
    """
    if test_fraction <= 0 or len(pairs) < 2:
        return list(pairs), [], []
    t0, t1 = pairs[0].rgb_stamp, pairs[-1].rgb_stamp
    span = max(t1 - t0, 1)
    n_test = max(1, int(round(test_fraction * blocks)))
    test_blocks = {min(blocks - 1, int((i + 0.5) * blocks / n_test)) for i in range(n_test)}
    train, test = [], []
    for p in pairs:
        b = min(blocks - 1, int((p.rgb_stamp - t0) * blocks // span))
        (test if b in test_blocks else train).append(p)
    if not test:
        return train, test, []
    test_stamps = [p.rgb_stamp for p in test]
    gap = gap_s * 1e9
    kept, near_test = [], []
    for p in train:
        i = bisect.bisect_left(test_stamps, p.rgb_stamp)
        near = min(abs(test_stamps[j] - p.rgb_stamp) for j in (i - 1, i) if 0 <= j < len(test_stamps))
        (kept if near >= gap else near_test).append(p)
    return kept, test, near_test


NODE_SLOP_S = 0.05  # the node's sync.slop default: pairs without labels are the node's
UNLABELLED_SPLIT_GAP_S = 1.0
SLOP_PER_MODAL_INTERVAL = 0.55  # a label's nearest modality frame is at most half an interval away: 10 % margin


def _fit_defaults(scan: _Scan, opts: ExtractOptions) -> tuple[ExtractOptions, list[str]]:
    """--slop and --split-gap left unset, decided from the streams; (resolved options, notes saying the choice).

    Without labels: the node's sync.slop (0.05 s), so the pairs are the node's, and a 1 s split gap. With
    labels, every labelled frame that pairs is kept: the slop is 0.55 x the modality's median frame interval
    (at least 0.05 s), so a label finds its nearest modality frame even from a 9 Hz thermal camera (half its
    interval is 55 ms), and the split gap is 0 (no labelled frame is set aside).
    """
    notes = []
    slop, gap = opts.slop, opts.split_gap
    if gap is None:
        gap = 0.0 if opts.label_topic else UNLABELLED_SPLIT_GAP_S
    if slop is None:
        slop = NODE_SLOP_S
        stamps = np.sort(np.fromiter(scan.modal.first, np.int64))
        if opts.label_topic and stamps.size > 2:
            interval = float(np.median(np.diff(stamps))) * 1e-9
            slop = max(NODE_SLOP_S, round(SLOP_PER_MODAL_INTERVAL * interval, 3))
            notes.append(f"--slop {slop:g} s: 0.55 x the median interval of {opts.modal_topic} ({interval:.3f} s), so "
                         "each label finds its nearest modality frame; give --slop to choose another")
    return replace(opts, slop=slop, split_gap=gap), notes


def _clean_stale_tmp(folders: list[Path]) -> None:
    for d in folders:
        for p in d.glob(".*.tmp*"):
            p.unlink(missing_ok=True)


def _modal_ext(info: _TopicInfo) -> str:
    return FLOAT_EXT if info.dtype == "float32" else ".png"


def _registration(opts: ExtractOptions, modality: str, infos: dict[str, _TopicInfo]) -> Optional[Registration]:
    """The registration of ``opts.calibration`` (None without one), checked against the first frames' sizes before
    anything is written; infos["modality"] then describes the registered frames (dtype, so the file kind).
    ExtractError naming the file and what does not fit."""
    if opts.calibration is None:
        return None
    scaling = opts.scaling or ModalityScaling(modality)
    rgb, mod = infos["RGB"], infos["modality"]
    try:
        calibration = load_calibration(opts.calibration)
        registration = Registration(opts.registration_mode or calibration.mode, calibration, scaling,
                                    opts.registration_distance)
        registered = registration(np.zeros(mod.shape, np.dtype(mod.dtype)), rgb.shape[:2])
    except CalibrationError as e:
        raise ExtractError(f"--calibration: {e}") from None
    infos["modality"] = replace(mod, shape=registered.image.shape, dtype=str(registered.image.dtype))
    return registration


def _first_image_info(reader, conn, topic: str, bag, label: bool = False) -> _TopicInfo:
    for c, _, msg in read_messages(reader, [conn], bag):
        if label:
            arr = _label_array(msg, topic)
            return _TopicInfo(topic, c.msgtype, getattr(msg, "encoding", "") or msg.format, tuple(arr.shape),
                              str(arr.dtype))
        arr, enc = _to_array(msg, topic)
        return _TopicInfo(topic, c.msgtype, enc, tuple(arr.shape), str(arr.dtype))
    raise ExtractError(f"topic {topic} has no messages")


def _resolve_topics(reader, opts: ExtractOptions) -> ExtractOptions:
    """opts with each topic spelled as the bag lists it (ROS 1 bags may omit the leading slash)."""
    topics = bag_topics(reader)
    resolved = {}
    for role, field_name in (("RGB", "rgb_topic"), ("modality", "modal_topic"), ("label", "label_topic")):
        topic = getattr(opts, field_name)
        if not topic:
            continue
        found = resolve_topic(reader, topic)
        if found is None:
            raise ExtractError(f"{role} topic {topic} is not in {opts.bag}; the bag has: {describe_topics(reader)}")
        if topics[found] not in IMAGE_TYPES:
            raise ExtractError(f"{role} topic {found} carries {topics[found]}, not an Image or CompressedImage")
        resolved[field_name] = found
    return replace(opts, **resolved)


def extract(opts: ExtractOptions) -> ExtractResult:
    """Extract a dataset folder from a bag (see module docstring). Raises ExtractError/BagError on bad input."""
    opts.check()
    out = Path(opts.out)
    with open_bag(opts.bag) as reader:
        opts = _resolve_topics(reader, opts)
        wanted = {"RGB": opts.rgb_topic, "modality": opts.modal_topic}
        if opts.label_topic:
            wanted["label"] = opts.label_topic
        conns = {t: [c for c in reader.connections if c.topic == t] for t in set(wanted.values())}
        infos = {role: _first_image_info(reader, conns[t][0], t, opts.bag, role == "label")
                 for role, t in wanted.items()}
        _check_encodings(infos)
        modality = _decide_modality(opts, infos["modality"])
        registration = _registration(opts, modality, infos)
        all_conns = [c for t in conns for c in conns[t]]
        short_read: list[str] = []
        scan = _scan_stamps(reader, all_conns, opts, sum(c.msgcount for c in all_conns),
                            short_read if opts.allow_partial else None)
        opts, chosen = _fit_defaults(scan, opts)
        if opts.label_topic:
            pairs, counts = _labelled_frames(scan, opts)
            _check_label_values(pairs, scan, opts)
        else:
            pairs, counts = _node_pairs(scan, opts), {}
        counts = {**scan.counts(opts), **counts, "pairs": len(pairs)}
        _check_pairs(pairs, scan, opts)
        pairs.sort(key=lambda p: p.rgb_stamp)
        kept = _thin(pairs, opts.every, opts.min_interval)
        train, test, gap = split_by_time(kept, opts.test_fraction, opts.split_blocks, opts.split_gap)
        result = ExtractResult(out=out, train=train, test=test, near_test=gap,
                               notes=chosen + _notes(scan, counts, opts), warnings=short_read)
        result.counts = {
            **counts, "kept": len(kept), "train": len(train), "test": len(test), "near_test": len(gap),
            "slop_s": opts.slop, "split_gap_s": opts.split_gap,
        }
        _check_same_extraction(out, opts)
        sources = _check_existing_frames(out, train + test + gap, opts, _modal_ext(infos["modality"]))
        result.registration = registration
        folders = [out / "RGB", out / "Modal"] + ([out / "Label"] if opts.label_topic else [])
        for d in folders:
            d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SOURCES_CSV, sources)  # before the frames: a rerun after an interruption checks them
        _clean_stale_tmp(folders)
        _write_frames(reader, conns, wanted, infos, train + test + gap, out, opts, result)
    if result.coverage:
        mean = float(np.mean(result.coverage))
        result.counts["modality_coverage_mean"] = round(mean, 4)
        result.notes.append(f"modality frames registered into the RGB view ({registration.mode}, {opts.calibration}):"
                            f" they cover {mean:.1%} of the RGB image on average; the rest holds the missing value")
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


@dataclass
class _StreamStamps:
    """Pass 1's record of one topic: the first message of each stamp (index in bag order) and its span."""

    first: dict[int, int] = field(default_factory=dict)  # stamp ns -> index of its first message
    messages: int = 0
    repeated: int = 0  # messages whose stamp an earlier message of the topic already had
    lo: Optional[int] = None
    hi: Optional[int] = None

    def add(self, stamp: int) -> Optional[int]:
        """Record a message; its index, or None if its stamp was seen before (the first one is kept)."""
        i = self.messages
        self.messages += 1
        self.lo = stamp if self.lo is None else min(self.lo, stamp)
        self.hi = stamp if self.hi is None else max(self.hi, stamp)
        if stamp in self.first:
            self.repeated += 1
            return None
        self.first[stamp] = i
        return i

    def span(self) -> str:
        return "no messages" if self.lo is None else f"{self.lo * 1e-9:.3f}..{self.hi * 1e-9:.3f} s"


@dataclass
class _Scan:
    rgb: _StreamStamps
    modal: _StreamStamps
    label: _StreamStamps
    arrival: list  # (stream 0 RGB / 1 modality, stamp, index) of each first-of-its-stamp message, in bag order
    label_ids: dict  # label stamp -> class ids present in that label image (sorted int array)

    def counts(self, opts: ExtractOptions) -> dict:
        c = {"rgb_messages": self.rgb.messages, "modal_messages": self.modal.messages}
        if opts.label_topic:
            c["label_messages"] = self.label.messages
        for name, st in (("rgb", self.rgb), ("modal", self.modal), ("label", self.label)):
            if st.repeated:
                c[f"repeated_{name}_stamps"] = st.repeated
        return c


def _scan_stamps(reader, conns, opts: ExtractOptions, total: int, partial: Optional[list[str]]) -> _Scan:
    """Pass 1: stamps of every message (and the class ids of each label), in bag order; fewer messages than the
    bag declares is a ShortReadError, or a warning added to ``partial`` (a list)."""
    scan = _Scan(_StreamStamps(), _StreamStamps(), _StreamStamps(), [], {})
    streams = {opts.rgb_topic: (scan.rgb, 0), opts.modal_topic: (scan.modal, 1)}
    if opts.label_topic:
        streams[opts.label_topic] = (scan.label, None)
    bar = tqdm(total=total, desc="pairing", unit="msg", disable=not opts.progress, leave=False)
    for conn, _, msg in read_messages(reader, conns, opts.bag, partial):
        bar.update(1)
        st = stamp_ns(msg)
        stream, number = streams[conn.topic]
        i = stream.add(st)
        if i is None:
            continue  # a repeated stamp: keeping one message per stamp keeps RGB, modality and label together
        if number is None:
            scan.label_ids[st] = _label_ids(msg, conn.topic)
        else:
            scan.arrival.append((number, st, i))
    bar.close()
    return scan


def _to_array(msg, topic: str) -> tuple[np.ndarray, str]:
    try:
        return message_to_array(msg)
    except ValueError as exc:  # a corrupt or unsupported image: name the message
        raise ExtractError(f"cannot decode the image stamped {stamp_ns(msg)} ns on {topic}: {exc}") from None


def _label_array(msg, topic: str) -> np.ndarray:
    """A label message -> (H, W) uint8 class ids, read as label files are (indexed PNGs as indices, ...)."""
    where = f"the label stamped {stamp_ns(msg)} ns on {topic}"
    try:
        arr = label_from_message(msg, where)
    except DataError as exc:
        raise ExtractError(str(exc)) from None
    if arr.dtype != np.uint8:
        raise ExtractError(f"{where} is {arr.dtype}: labels must be mono8 class ids (0..255, 255 = ignore)")
    return arr


def _label_ids(msg, topic: str) -> np.ndarray:
    return np.flatnonzero(np.bincount(_label_array(msg, topic).reshape(-1), minlength=256))


def _node_pairs(scan: _Scan, opts: ExtractOptions) -> list[FramePair]:
    """The pairs the live node makes: messages fed to its pairer in bag (receive) order."""
    pairer = ApproximateTimePairer(queue_size=opts.queue_size, slop=opts.slop)
    pairs = []
    for number, st, i in scan.arrival:
        # the node's pairer takes float seconds; feed it exactly what the node would see
        pair = pairer.add(number, st * 1e-9, (st, i))
        if pair is not None:
            (rs, ri), (ms, mi) = pair.first, pair.second
            pairs.append(FramePair(str(rs), rs, ms, ri, mi))
    return pairs


def _labelled_frames(scan: _Scan, opts: ExtractOptions) -> tuple[list[FramePair], dict]:
    """Each label with the RGB frame of its stamp and the nearest modality frame strictly within the slop
    (one modality frame may serve several labelled frames). Returns (pairs, counts of labels not kept)."""
    modal_stamps = sorted(scan.modal.first)
    slop_ns = opts.slop * 1e9
    pairs, no_rgb, no_modal = [], 0, 0
    for st in sorted(scan.label.first):
        if st not in scan.rgb.first:
            no_rgb += 1
            continue
        j = bisect.bisect_left(modal_stamps, st)
        near = [modal_stamps[k] for k in (j - 1, j) if 0 <= k < len(modal_stamps)]
        best = min(near, key=lambda m: abs(m - st), default=None)  # ties: the earlier frame
        if best is None or not abs(best - st) < slop_ns:
            no_modal += 1
            continue
        pairs.append(FramePair(str(st), st, best, scan.rgb.first[st], scan.modal.first[best], scan.label.first[st]))
    return pairs, {"labelled_pairs": len(pairs), "labels_without_rgb": no_rgb, "labels_without_modal": no_modal}


def _check_label_values(pairs: list[FramePair], scan: _Scan, opts: ExtractOptions) -> None:
    if not opts.classes:
        return
    for p in pairs:
        ids = scan.label_ids[p.rgb_stamp]
        needed = int(ids[ids != 255].max(initial=0)) + 1
        check_label_values(ids, len(opts.classes), f"the label stamped {p.rgb_stamp} ns on {opts.label_topic}",
                           f"the --classes file must name every class id the labels use, in id order "
                           f"(at least {needed} names)")


def _check_pairs(pairs: list[FramePair], scan: _Scan, opts: ExtractOptions) -> None:
    if pairs:
        return
    if opts.label_topic and scan.label.first and not any(st in scan.rgb.first for st in scan.label.first):
        raise ExtractError(
            f"no label message on {opts.label_topic} has the stamp of an RGB frame on {opts.rgb_topic}; "
            "labels must be stamped exactly like the RGB image they annotate"
        )
    what = "labelled RGB frames and modality frames" if opts.label_topic else "RGB/modality pairs"
    a, b = scan.rgb, scan.modal
    overlap = None not in (a.lo, b.lo) and a.lo <= b.hi and b.lo <= a.hi
    why = (f"the streams overlap in time, but no frames are within {opts.slop} s of each other: raise --slop "
           "(e.g. --slop 0.05, half the slower camera's frame period)" if overlap else
           "the streams do not overlap in time (unsynchronised clocks?) or need a larger --slop")
    raise ExtractError(
        f"no {what} within --slop {opts.slop} s: {opts.rgb_topic} stamps span {a.span()}, "
        f"{opts.modal_topic} {b.span()}; {why}"
    )


def _notes(scan: _Scan, counts: dict, opts: ExtractOptions) -> list[str]:
    """What was left out and why, one sentence each (the CLI prints them; dataset.yaml keeps the counts)."""
    notes = []
    for role, topic, st in (("RGB", opts.rgb_topic, scan.rgb), ("modality", opts.modal_topic, scan.modal),
                            ("label", opts.label_topic, scan.label)):
        if st.repeated:
            notes.append(f"{st.repeated} {role} messages on {topic} repeat the stamp of an earlier one (a looped "
                         "recording or a driver fault?): kept the first message of each stamp")
    if opts.label_topic:
        lost = counts["labels_without_rgb"] + counts["labels_without_modal"]
        if lost:
            notes.append(
                f"{lost} of {len(scan.label.first)} labels not extracted: {counts['labels_without_rgb']} have no RGB "
                f"frame on {opts.rgb_topic} with their stamp (labels must be stamped like the RGB image they "
                f"annotate), {counts['labels_without_modal']} have no {opts.modal_topic} frame within --slop "
                f"{opts.slop} s"
            )
        if not opts.classes and scan.label_ids:
            ids = sorted({int(v) for a in scan.label_ids.values() for v in a} - {255})
            notes.append(f"the labels use class ids {ids}; name the classes with --classes (training needs them)")
    return notes


SOURCES_CSV = ".frame_sources.csv"  # what each file in RGB/, Modal/, Label/ was extracted from (for resuming)
_SOURCE_FIELDS = ("name", "rgb_topic", "rgb_stamp_ns", "modal_topic", "modal_stamp_ns", "label_topic")


def _check_existing_frames(out: Path, pairs: list[FramePair], opts: ExtractOptions, modal_ext: str) -> str:
    """Existing files are kept (resume), so each must be what this run would write: the same topic and message
    stamp, as recorded in ``out/.frame_sources.csv``. ExtractError otherwise (a rerun with another --slop,
    topic or --label-topic would mix messages into one frame). Returns the updated record's text."""
    path = out / SOURCES_CSV
    known: dict[str, dict] = {}
    if path.is_file():
        with open(path, newline="") as f:
            rows = ({k: r.get(k) or "" for k in _SOURCE_FIELDS} for r in csv.DictReader(f))
            known = {r["name"]: r for r in rows if r["name"]}  # a damaged record only makes files unknown
    conflicts = []
    for p in pairs:
        row = dict(known.get(p.name) or dict.fromkeys(_SOURCE_FIELDS, ""), name=p.name)
        wants = [(f"RGB/{p.name}.png", {"rgb_topic": opts.rgb_topic, "rgb_stamp_ns": str(p.rgb_stamp)}),
                 (f"Modal/{p.name}{modal_ext}",
                  {"modal_topic": opts.modal_topic, "modal_stamp_ns": str(p.modal_stamp)})]
        if opts.label_topic:
            wants.append((f"Label/{p.name}.png", {"label_topic": opts.label_topic}))
        for rel, fields in wants:
            if (out / rel).exists() and any(row[k] != v for k, v in fields.items()):
                was = ", ".join(f"{row[k] or '?'}" for k in fields)
                conflicts.append(f"{rel} is from {was}, this run takes {', '.join(fields.values())}")
            row.update(fields)
        known[p.name] = row
    if conflicts:
        raise ExtractError(
            f"{out} holds frames extracted with other pairs or topics ({len(conflicts)} files, e.g. {conflicts[0]}); "
            "files already there are kept, never overwritten, so this run would mix messages: extract into a new "
            "folder"
        )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_SOURCE_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(known[n] for n in sorted(known))
    return buf.getvalue()


def _write_frames(reader, conns, wanted, infos, pairs: list[FramePair], out: Path, opts, result) -> None:
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):  # one frame per RGB stamp is the invariant the scan keeps
        raise ExtractError(f"internal error: frame names repeat in {opts.bag}; please report it")
    modal_ext = _modal_ext(infos["modality"])
    jobs: dict[str, dict[int, list[Path]]] = {t: {} for t in conns}

    def want(topic, idx, path):
        if path.exists():
            result.skipped += 1
        else:
            jobs[topic].setdefault(idx, []).append(path)  # a modality frame may serve several labelled frames

    for p in pairs:
        want(opts.rgb_topic, p.rgb_index, out / "RGB" / f"{p.name}.png")
        want(opts.modal_topic, p.modal_index, out / "Modal" / f"{p.name}{modal_ext}")
        if opts.label_topic and p.label_index is not None:
            want(opts.label_topic, p.label_index, out / "Label" / f"{p.name}.png")
    n_jobs = sum(len(paths) for j in jobs.values() for paths in j.values())
    if n_jobs == 0:
        return
    role_of = {t: r for r, t in wanted.items()}
    todo_conns = [c for t, cs in conns.items() if jobs[t] for c in cs]
    index = dict.fromkeys(conns, 0)
    bar = tqdm(total=n_jobs, desc="writing", unit="file", disable=not opts.progress, leave=False)
    # A shortfall was an error or a warning on the first pass already.
    for conn, _, msg in read_messages(reader, todo_conns, opts.bag, [] if opts.allow_partial else None):
        topic = conn.topic
        i = index[topic]
        index[topic] = i + 1
        paths = jobs[topic].pop(i, None)
        if paths is None:
            continue
        role = role_of[topic]
        if role == "label":
            image = _label_array(msg, topic)
        else:
            arr, enc = _to_array(msg, topic)
            if role == "RGB":
                image = cv2.cvtColor(np.ascontiguousarray(to_rgb8(arr, enc)), cv2.COLOR_RGB2BGR)
            elif result.registration is not None:  # what the node feeds the model: one channel, in the RGB view
                try:
                    registered = result.registration(arr, infos["RGB"].shape[:2])
                except CalibrationError as e:
                    raise ExtractError(f"{topic} message {i}: {e}") from None
                image = registered.image
                result.coverage.append(registered.coverage)
            else:
                image = _modal_for_file(arr, enc)
        for path in paths:
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
    registration = {} if opts.calibration is None else {
        "calibration": str(Path(opts.calibration).resolve()), "registration_mode": opts.registration_mode,
        "registration_distance": opts.registration_distance}
    return {**registration,
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
        # No extraction finished here; one that was interrupted left its frame record. Without either, split
        # lists here are someone else's (a user's own dataset): replacing them would destroy their work.
        theirs = [n for n in ("train.txt", "test.txt", "gap.txt", "pairs.csv") if (out / n).exists()]
        if theirs and not (out / SOURCES_CSV).is_file():
            raise ExtractError(f"{out} holds {', '.join(theirs)} that no extraction wrote; extract into a new "
                               "folder (-o)")
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
    atomic_write_text(out / "gap.txt", "".join(f"{p.name}\n" for p in result.near_test))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "rgb_stamp_ns", "modal_stamp_ns", "skew_ms", "split"])
    rows = [(p, "train") for p in result.train] + [(p, "test") for p in result.test] + [
        (p, "gap") for p in result.near_test]
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
        splits={"train": ("train.txt",), "test": ("test.txt",), "gap": ("gap.txt",)},
        image_size=tuple(int(v) for v in rgb.shape[:2]),
        extra={
            "format": "sigma-rgbx-1",
            "encodings": {
                "rgb": rgb.encoding, "rgb_msgtype": rgb.msgtype,
                "modal": mod.encoding, "modal_msgtype": mod.msgtype,
                "modal_stored": f"{mod.dtype} " + ("png" if _modal_ext(mod) != FLOAT_EXT else
                                                   "tiff (metres)" if modality == "depth" else "tiff"),
                **({"registered_with": str(opts.calibration)} if opts.calibration is not None else {}),
                **({"label": infos["label"].encoding} if "label" in infos else {}),
            },
            "source": _source(opts),
            "counts": result.counts,
        },
    )
    spec.write_yaml(out)


__all__ = ["BagError", "ExtractError", "ExtractOptions", "ExtractResult", "FramePair", "extract", "load_class_file",
           "split_by_time"]
