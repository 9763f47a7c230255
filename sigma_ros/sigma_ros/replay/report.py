"""Replay reports a person would rather look at than read: summary, Markdown/HTML page and plots.

Offline replay (``replay.replay_eval``) and live replay (``replay.live_evaluator``, the demo)
both fill one :class:`ReplaySummary`; this module turns it into

- ``summary.json`` (machine-readable; what tests and scripts check),
- ``latency.png`` (latency over the run and its histogram),
- ``class_iou.png`` (per-class IoU, through ``sigma_core.engine.reports``),
- ``frames.png`` (a strip of RGB / modality / overlay frames),
- ``report.md`` and ``report.html`` (the page that shows them), and a text summary for the terminal.

Only numpy and matplotlib (Agg) are needed: no ROS import here.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from sigma_core.engine.metrics import SegmentationMetrics
from sigma_core.engine.reports import metrics_table, per_class_table, plot_class_iou, write_json
from sigma_core.files import check_folder_can_be_made


@dataclass
class FrameSample:
    """One frame for the strip: (H, W, 3) uint8 RGB, (H, W) raw modality (any dtype; the strip stretches all
    samples to one shared range), (H, W, 3) uint8 overlay; mask and label: (H, W) uint8 class ids (the
    prediction, and the ground truth where the bag has one, 255 = unlabelled) for the ground-truth and error rows."""

    stamp_ns: int
    rgb: np.ndarray
    modal: np.ndarray
    overlay: np.ndarray
    mask: Optional[np.ndarray] = None
    label: Optional[np.ndarray] = None


ERROR_COLOURS = {"correct": (40, 150, 60), "wrong": (230, 30, 30), "unlabelled": (0, 0, 0)}


def error_map(mask: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(H, W) predicted and true class ids -> (H, W, 3) uint8: green where right, red where wrong, black where
    the label says unlabelled (255)."""
    out = np.zeros((*mask.shape, 3), np.uint8)
    labelled = label != 255
    out[labelled & (mask == label)] = ERROR_COLOURS["correct"]
    out[labelled & (mask != label)] = ERROR_COLOURS["wrong"]
    return out


@dataclass
class ReplaySummary:
    """What a replay measured. Times in milliseconds unless named otherwise.

    frames: masks produced (offline) or received (live). expected_pairs: pairs the
    node's pairing policy makes from the bag's streams (offline: all segmented).
    dropped: expected pairs with no mask. latency_ms / latency_t: per-frame end-to-end
    latency and when it was measured (seconds since the first frame); empty offline.
    """

    mode: str  # "offline" or "live"
    source: dict[str, Any] = field(default_factory=dict)  # bag, topics, checkpoint, model, device...
    rgb_messages: int = 0
    modal_messages: int = 0
    expected_pairs: int = 0
    frames: int = 0
    dropped: int = 0
    unpaired_rgb: int = 0
    unpaired_modal: int = 0
    wall_seconds: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    latency_t: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    sync_skew_ms: list[float] = field(default_factory=list)
    modality_coverage: list[float] = field(default_factory=list)  # per frame: RGB pixels the modality covers
    metrics: Optional[SegmentationMetrics] = None
    frames_scored: int = 0
    class_pixels: dict[str, int] = field(default_factory=dict)  # predicted pixels per class over all frames
    samples: list[FrameSample] = field(default_factory=list)
    legend: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)  # class name, overlay (r, g, b)
    notes: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Masks per wall-clock second."""
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (no arrays of images; NaN as None)."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "source": self.source,
            "rgb_messages": self.rgb_messages,
            "modal_messages": self.modal_messages,
            "expected_pairs": self.expected_pairs,
            "frames": self.frames,
            "dropped": self.dropped,
            "unpaired_rgb": self.unpaired_rgb,
            "unpaired_modal": self.unpaired_modal,
            "wall_seconds": round(self.wall_seconds, 3),
            "fps": round(self.fps, 3),
            "latency_ms": percentiles(self.latency_ms),
            "inference_ms": percentiles(self.inference_ms),
            "sync_skew_ms": percentiles(self.sync_skew_ms, absolute=True),
            "modality_coverage": percentiles(self.modality_coverage),
            "frames_scored": self.frames_scored,
            "class_pixels": self.class_pixels,
            "notes": self.notes,
        }
        out["metrics"] = self.metrics.to_dict() if self.metrics is not None else None
        return out


def percentiles(values: Sequence[float], absolute: bool = False) -> dict[str, Optional[float]]:
    """count, mean, p50, p95, p99, max of ``values`` (of their absolute values with ``absolute``); None if empty."""
    v = np.abs(np.asarray(values, np.float64)) if absolute else np.asarray(values, np.float64)
    if v.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": int(v.size),
        "mean": round(float(v.mean()), 3),
        "p50": round(float(np.percentile(v, 50)), 3),
        "p95": round(float(np.percentile(v, 95)), 3),
        "p99": round(float(np.percentile(v, 99)), 3),
        "max": round(float(v.max()), 3),
    }


def _fmt(v: Optional[float], unit: str = "", digits: int = 1) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}{unit}"


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def format_summary(summary: ReplaySummary) -> str:
    """The terminal summary: frames, FPS, latency, inference time, sync, accuracy and per-class lines."""
    d = summary.to_dict()
    lat, inf, skew = d["latency_ms"], d["inference_ms"], d["sync_skew_ms"]
    lines = [
        f"Sigma {summary.mode} replay summary",
        f"  frames segmented : {summary.frames} of {summary.expected_pairs} synchronized pairs "
        f"({summary.dropped} dropped); {summary.rgb_messages} RGB and {summary.modal_messages} modality messages, "
        f"unpaired {summary.unpaired_rgb} RGB / {summary.unpaired_modal} modality",
        f"  throughput       : {summary.fps:.2f} FPS over {summary.wall_seconds:.1f} s",
    ]
    if lat["count"]:
        lines.append(f"  latency          : p50 {_fmt(lat['p50'], ' ms')}, p95 {_fmt(lat['p95'], ' ms')}, "
                     f"max {_fmt(lat['max'], ' ms')} (RGB received -> mask received)")
    if inf["count"]:
        lines.append(f"  inference        : p50 {_fmt(inf['p50'], ' ms')}, p95 {_fmt(inf['p95'], ' ms')}")
    if skew["count"]:
        lines.append(f"  sync skew |RGB-X|: p50 {_fmt(skew['p50'], ' ms')}, max {_fmt(skew['max'], ' ms')}")
    cover = d["modality_coverage"]
    if cover["count"] and cover["mean"] is not None and cover["mean"] < 1.0:
        low = sum(c < 0.5 for c in summary.modality_coverage)
        lines.append(f"  modality coverage: mean {_pct(cover['mean'])}, lowest {_pct(min(summary.modality_coverage))}"
                     f" of the RGB image after registration" + (f"; {low} frames below 50 %" if low else ""))
    m = summary.metrics
    if m is not None:
        lines.append(f"  accuracy         : mIoU {_pct(m.miou)}, pixel acc. {_pct(m.pixel_accuracy)}, "
                     f"mean class acc. {_pct(m.mean_class_accuracy)} on {summary.frames_scored} labelled frames")
    else:
        lines.append("  accuracy         : n/a (no labels)")
    total_pred = sum(summary.class_pixels.values())
    names = m.class_names if m is not None else list(summary.class_pixels)
    if names:
        lines.append("  per class        : IoU      share of predicted pixels")
        for k, name in enumerate(names):
            iou = _pct(m.iou[k]) if m is not None else "n/a"
            share = summary.class_pixels.get(name, 0) / total_pred if total_pred else float("nan")
            lines.append(f"    {name:<16s} {iou:>8s}  {_pct(share):>8s}")
    lines += [f"  note: {n}" for n in summary.notes]
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(summary: ReplaySummary, path: Path) -> Optional[Path]:
    """Latency (live) or inference time (offline) over the run and as a histogram; None if there is nothing."""
    if summary.latency_ms:
        values, t, label = np.asarray(summary.latency_ms), np.asarray(summary.latency_t), "end-to-end latency"
    elif summary.inference_ms:
        values, t, label = np.asarray(summary.inference_ms), np.arange(len(summary.inference_ms)), "inference time"
    else:
        return None
    plt = _pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    ax0.plot(t, values, ".-", lw=0.8, ms=3)
    for q, style in ((50, "--"), (95, ":")):
        level = np.percentile(values, q)
        ax0.axhline(level, color="gray", ls=style, lw=1, label=f"p{q} {level:.1f} ms")
    ax0.set_xlabel("time since first frame (s)" if summary.latency_ms else "frame")
    ax0.set_ylabel(f"{label} (ms)")
    ax0.set_title(f"{label} over the run")
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3)
    ax1.hist(values, bins=min(30, max(5, len(values) // 3)), color="tab:blue", alpha=0.8)
    ax1.set_xlabel(f"{label} (ms)")
    ax1.set_ylabel("frames")
    ax1.set_title("histogram")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_frames(samples: Sequence[FrameSample], path: Path,
                legend: Sequence[tuple[str, Sequence[int]]] = ()) -> Optional[Path]:
    """A strip: one column per sample, rows RGB / modality / (ground truth) / prediction overlay / (error map:
    green right, red wrong, black unlabelled), and below it the class colours (``legend``: (class name, (r, g, b)
    0..255) per class). The ground-truth and error rows appear when a sample has a label. None if no samples."""
    if not samples:
        return None
    plt = _pyplot()
    n = len(samples)
    h, w = samples[0].rgb.shape[:2]
    value_range = shared_range([s.modal for s in samples])  # one scale: brightness compares across frames
    table = np.zeros((256, 3), np.uint8)
    for k, (_, colour) in enumerate(legend):
        table[k] = colour
    labelled = any(s.label is not None and s.mask is not None for s in samples)
    names = ["RGB", "modality", *(["ground truth"] if labelled else []), "prediction", *(["error"] if labelled else [])]
    col_w = 2.6
    fig, axes = plt.subplots(len(names), n, figsize=(col_w * n, len(names) * col_w * h / w + 0.6), squeeze=False)
    for j, s in enumerate(samples):
        has_label = s.label is not None and s.mask is not None and s.label.shape == s.mask.shape
        blank = np.full((h, w, 3), 255, np.uint8)  # a frame whose label did not arrive
        images = [s.rgb, modal_for_display(s.modal, value_range)]
        if labelled:
            images.append(table[s.label] if has_label else blank)
        images.append(s.overlay)
        if labelled:
            images.append(error_map(s.mask, s.label) if has_label else blank)
        for i, (img, name) in enumerate(zip(images, names)):
            ax = axes[i][j]
            ax.imshow(img, cmap="inferno" if img.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
        if has_label:
            valid = s.label != 255
            right = float((s.mask[valid] == s.label[valid]).mean()) if valid.any() else float("nan")
            axes[names.index("error")][j].set_title(f"{100 * right:.1f} % right", fontsize=7)
        axes[0][j].set_title(f"+{(s.stamp_ns - samples[0].stamp_ns) / 1e9:.2f} s", fontsize=8)
    fig.tight_layout()
    if legend:
        from matplotlib.patches import Patch

        columns = max(1, min(len(legend), int(col_w * n / 1.3)))
        rows = -(-len(legend) // columns)
        height = fig.get_figheight()
        extra = 0.25 * rows + 0.15
        fig.set_figheight(height + extra)
        fig.subplots_adjust(bottom=extra / (height + extra))
        fig.legend(handles=[Patch(facecolor=np.asarray(c, float) / 255, edgecolor="black", label=name)
                            for name, c in legend], loc="lower center", ncol=columns, fontsize=7, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- pages --------------------------------------------------------------------------------------------


def _markdown(summary: ReplaySummary, images: dict[str, Optional[Path]]) -> str:
    d = summary.to_dict()
    src = "\n".join(f"- {k}: `{v}`" for k, v in summary.source.items())
    rows = [
        ("frames segmented", f"{summary.frames} of {summary.expected_pairs} pairs"),
        ("dropped pairs", str(summary.dropped)),
        ("unpaired RGB / modality", f"{summary.unpaired_rgb} / {summary.unpaired_modal}"),
        ("throughput", f"{summary.fps:.2f} FPS over {summary.wall_seconds:.1f} s"),
    ]
    for key, name in (("latency_ms", "latency (RGB in -> mask out)"), ("inference_ms", "inference time"),
                      ("sync_skew_ms", "sync skew abs(RGB - modality)")):
        p = d[key]
        if p["count"]:
            rows.append((name, f"p50 {_fmt(p['p50'], ' ms')}, p95 {_fmt(p['p95'], ' ms')}, "
                               f"p99 {_fmt(p['p99'], ' ms')}, max {_fmt(p['max'], ' ms')}"))
    classes = ", ".join(f"{k} {name}" for k, (name, _) in enumerate(summary.legend))
    how = ["- mode: whole image at the model's input size, single scale, no flip (what the node runs)"]
    if classes:
        how.append(f"- classes ({len(summary.legend)}): {classes}")
    md = [f"# Sigma {summary.mode} replay report", "", src, *how, "", "| measure | value |", "| --- | --- |"]
    md += [f"| {a} | {b} |" for a, b in rows]
    md.append("")
    if summary.metrics is not None:
        md += [f"## Accuracy ({summary.frames_scored} labelled frames, %)", "",
               metrics_table({"replay": summary.metrics}), "", per_class_table({"IoU": summary.metrics}), ""]
    else:
        md += ["## Accuracy", "", "No labels in the bag or label folder: accuracy not measured.", ""]
    for key, title in (("latency", "Latency"), ("class_iou", "Per-class IoU"), ("frames", "Frames")):
        if images.get(key) is not None:
            md += [f"## {title}", "", f"![{title}]({images[key].name})", ""]
    if summary.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in summary.notes] + [""]
    return "\n".join(md)


def _html(markdown: str) -> str:
    """A small self-contained HTML rendering of our own Markdown (headings, lists, tables, images)."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table():
        if table:
            head, rows = table[0], [r for r in table[2:]]
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        flush_table()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('`', '')}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "\n".join(body) + "</body></html>\n"


REPORT_FILES = ("summary.json", "report.md", "report.html", "latency.png", "class_iou.png", "frames.png")


def check_report_folder(out_dir: str | Path) -> None:
    """ValueError if writing a replay report into ``out_dir`` would replace files no replay report wrote (a user's
    report.md, another tool's summary.json); a replay report written before (its summary.json says its mode)
    may be replaced. Call it before the replay, not only when writing."""
    out = Path(out_dir)
    check_folder_can_be_made(out, "report folder")
    taken = [name for name in REPORT_FILES if (out / name).exists()]
    if not taken:
        return
    try:
        ours = json.loads((out / "summary.json").read_text()).get("mode") in ("offline", "live")
    except (OSError, ValueError, TypeError, AttributeError):
        ours = False
    if not ours:
        raise ValueError(f"--out {out} holds {', '.join(taken)} that no replay report wrote: they are left as they "
                         "are; give another --out folder")


def write_report(summary: ReplaySummary, out_dir: str | Path, html_page: bool = True) -> dict[str, Path]:
    """Write summary.json, the plots, report.md (and report.html) into ``out_dir``; returns their paths.

    ValueError (check_report_folder) when ``out_dir`` holds files of the same names that no replay report wrote.
    """
    out = Path(out_dir)
    check_report_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": out / "summary.json"}
    write_json(paths["json"], summary.to_dict())
    images: dict[str, Optional[Path]] = {
        "latency": plot_latency(summary, out / "latency.png"),
        "class_iou": plot_class_iou(summary.metrics, out / "class_iou.png", title="Per-class IoU (replay)")
        if summary.metrics is not None else None,
        "frames": plot_frames(summary.samples, out / "frames.png", summary.legend),
    }
    paths.update({k: v for k, v in images.items() if v is not None})
    md = _markdown(summary, images)
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text(md)
    if html_page:
        paths["html"] = out / "report.html"
        paths["html"].write_text(_html(md))
    return paths


def modal_for_display(modal: np.ndarray, value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Any (H, W) modality array (uint8, uint16, float; NaN allowed) -> (H, W) uint8 for display.

    Values are stretched from ``value_range`` (default: the array's own finite min..max) to 0..255;
    invalid values (NaN, inf) show as 0.
    """
    a = np.asarray(modal)
    if a.ndim == 3:
        a = a[..., 0]
    v = a.astype(np.float32)
    finite = np.isfinite(v)
    if value_range is None:
        if not finite.any():
            return np.zeros(a.shape, np.uint8)
        value_range = (float(v[finite].min()), float(v[finite].max()))
    lo, hi = value_range
    scaled = (np.where(finite, v, lo) - lo) / (hi - lo if hi > lo else 1.0)
    return (255 * np.clip(scaled, 0.0, 1.0)).astype(np.uint8)


def shared_range(arrays: Sequence[np.ndarray]) -> Optional[tuple[float, float]]:
    """The 1st..99th percentile of the finite values of all ``arrays`` (one display range for a strip)."""
    values = [np.asarray(a, np.float32)[np.isfinite(np.asarray(a, np.float32))] for a in arrays]
    values = [v for v in values if v.size]
    if not values:
        return None
    allv = np.concatenate(values)
    return float(np.percentile(allv, 1)), float(np.percentile(allv, 99))


class SampleKeeper:
    """Keeps about ``count`` evenly spaced items of a stream of unknown length, in bounded memory.

    Item ``index`` (0, 1, 2, ... in arrival order) is kept while it is a multiple of the stride;
    the stride doubles whenever more than ``2 * count`` items are kept. Ask :meth:`wants` before
    preparing an item (e.g. rendering an overlay) to skip the work for items that would be dropped.
    """

    def __init__(self, count: int):
        self.count = max(0, int(count))
        self.stride = 1
        self._items: dict[int, Any] = {}

    def wants(self, index: int) -> bool:
        return self.count > 0 and index % self.stride == 0

    def add(self, index: int, item: Any) -> None:
        if not self.wants(index):
            return
        self._items[index] = item
        while len(self._items) > 2 * self.count:
            self.stride *= 2
            self._items = {i: v for i, v in self._items.items() if i % self.stride == 0}

    def kept(self) -> list:
        """Every item kept now (more than ``count`` until :meth:`items` picks)."""
        return list(self._items.values())

    def items(self) -> list:
        """At most ``count`` kept items, spread evenly, in arrival order."""
        keys = sorted(self._items)
        if len(keys) > self.count:
            keys = [keys[i] for i in np.linspace(0, len(keys) - 1, self.count).round().astype(int)]
        return [self._items[k] for k in keys]


class StripLabels:
    """Ground truth for the strip's frames, whichever of a frame's label and its mask arrives first.

    :meth:`scored` is called with every scored (stamp, label): it goes to the kept sample of that stamp, or waits
    (the last ``recent`` labels only) for :meth:`take` when the sample is made.
    """

    def __init__(self, keeper: SampleKeeper, recent: int = 32):
        self._keeper = keeper
        self._recent: dict[int, np.ndarray] = {}
        self._limit = recent

    def scored(self, stamp: int, label: np.ndarray) -> None:
        for sample in self._keeper.kept():
            if sample.stamp_ns == stamp:
                sample.label = label
                return
        self._recent[stamp] = label
        while len(self._recent) > self._limit:
            self._recent.pop(next(iter(self._recent)))

    def take(self, stamp: int) -> Optional[np.ndarray]:
        return self._recent.pop(stamp, None)
