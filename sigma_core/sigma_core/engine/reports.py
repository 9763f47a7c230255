"""Evaluation reports a person can read: JSON, a confusion-matrix PNG, a per-class IoU chart, markdown.

Charts use matplotlib's Agg backend (no display needed). Published numbers are
shown beside ours for the known benchmarks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data.dataset import preset_key
from ..files import atomic_write_text, check_folder_can_be_made
from .metrics import SegmentationMetrics

# mIoU (%) of the published Sigma checkpoints, from the "Results" tables of the
# public Sigma README (github.com/zifuwan/Sigma). Only what is stated there. Keyed like dataset PRESETS.
PUBLISHED_MIOU: dict[str, dict[str, float]] = {
    "mfnet": {"tiny": 60.2, "small": 61.1, "base": 61.3},
    "pst900": {"tiny": 88.6, "small": 87.8},
    "nyudepthv2": {"tiny": 53.9, "small": 57.0},
    "sunrgbd": {"tiny": 50.0, "small": 52.4},
}


def published_miou(preset: Optional[str], variant: Optional[str]) -> Optional[dict[str, Any]]:
    """The published mIoU (%) for a benchmark preset and variant, or None where nothing was published."""
    table = PUBLISHED_MIOU.get(preset_key(preset)) if preset else None
    if not table:
        return None
    out: dict[str, Any] = {"source": "Sigma (WACV 2025), github.com/zifuwan/Sigma README", "miou_by_variant": table}
    if variant in table:
        out["miou_same_variant"] = table[variant]
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (readers never see half a report)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported late: only reports need it, and no display is needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)  # pyplot keeps every open figure alive otherwise
    return path


def plot_confusion(metrics: SegmentationMetrics, path: Path, title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix (each true class sums to 1) as a PNG."""
    plt = _pyplot()
    cm = metrics.confusion.astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(metrics.class_names)
    size = max(4.0, 0.45 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), metrics.class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), metrics.class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save_figure(fig, path)


def plot_class_iou(metrics: SegmentationMetrics, path: Path, title: str = "Per-class IoU",
                   compare: Optional[dict[str, SegmentationMetrics]] = None) -> Path:
    """Bar chart of per-class IoU (%); ``compare`` adds named bar series (e.g. "thermal blanked")."""
    plt = _pyplot()
    series = {"model": metrics, **(compare or {})}
    k = len(metrics.class_names)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * k * len(series) + 2.0), 4.0))
    for n, (label, m) in enumerate(series.items()):
        values = np.nan_to_num(100 * m.iou, nan=0.0)
        pos = np.arange(k) + (n - (len(series) - 1) / 2) * width
        ax.bar(pos, values, width, label=f"{label} (mIoU {_pct(m.miou)})")
    ax.set_xticks(range(k), metrics.class_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, path)


def plot_training_curves(epochs_csv: Path, path: Path) -> Path:
    """A run's epochs.csv -> PNG: mean training loss per epoch (left) and validation mIoU (right), written
    atomically (a reader never sees half a picture)."""
    import csv

    from ..files import atomic_open

    with open(epochs_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{epochs_csv} has no epochs yet")
    epochs = [int(r["epoch"]) for r in rows]
    loss = [float(r["mean_loss"]) for r in rows]
    val = [(int(r["epoch"]), 100 * float(r["miou"])) for r in rows if r.get("miou")]
    plt = _pyplot()
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, loss, marker="o", ms=3)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean training loss")
    ax_loss.grid(alpha=0.3)
    if val:
        ax_miou.plot([e for e, _ in val], [m for _, m in val], marker="o", ms=3, color="tab:green")
        best = max(val, key=lambda v: v[1])
        ax_miou.set_title(f"best {best[1]:.1f} at epoch {best[0]}", fontsize=9)
    else:
        ax_miou.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_miou.transAxes)
    ax_miou.set_xlabel("epoch")
    ax_miou.set_ylabel("validation mIoU (%)")
    ax_miou.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_miou):  # epochs are whole (no 1.25 ticks on a short run), both panels the same span
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def metrics_table(results: dict[str, SegmentationMetrics]) -> str:
    """Markdown table: one row per named result (mIoU, mAcc, aAcc, fwIoU in %)."""
    lines = ["| evaluation | mIoU | mean class acc. | pixel acc. | fwIoU |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in results.items():
        lines.append(f"| {name} | {_pct(m.miou)} | {_pct(m.mean_class_accuracy)} | {_pct(m.pixel_accuracy)} "
                     f"| {_pct(m.fw_iou)} |")
    return "\n".join(lines)


def per_class_table(results: dict[str, SegmentationMetrics]) -> str:
    """Markdown table of per-class IoU (%), one column per named result."""
    names = list(results)
    first = results[names[0]]
    lines = ["| class | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for k, cls in enumerate(first.class_names):
        lines.append(f"| {cls} | " + " | ".join(_pct(results[n].iou[k]) for n in names) + " |")
    return "\n".join(lines)


REPORT_FILES = ("report.json", "report.md", "confusion_matrix.png", "class_iou.png")


def check_report_folder(out_dir: Path, checkpoint: Optional[str] = None) -> None:
    """Raise ValueError if writing a report into ``out_dir`` would overwrite files an evaluation did not write
    (a user's report.md, say) or the report of another checkpoint; a report written before for the same
    checkpoint file (``checkpoint``; None: any) may be replaced."""
    out_dir = Path(out_dir)
    check_folder_can_be_made(out_dir, "report folder")
    taken = [name for name in REPORT_FILES if (out_dir / name).exists()]
    if not taken:
        return
    try:
        before = json.loads((out_dir / "report.json").read_text())
        ours = "metrics" in before
    except (OSError, ValueError, TypeError):
        before, ours = {}, False
    if not ours:
        raise ValueError(f"{out_dir} holds {', '.join(taken)} that no evaluation wrote; give another --out folder")
    other = before.get("checkpoint_path") or before.get("checkpoint")
    if checkpoint is not None and other and Path(other).resolve() != Path(checkpoint).resolve():
        raise ValueError(f"{out_dir} holds the report of another checkpoint ({before.get('checkpoint', other)}), "
                         "which is left as it is: "
                         f"give --out for the report of {checkpoint}")


def evaluation_header(info: dict[str, Any], class_names: list[str]) -> list[str]:
    """Markdown lines saying what was evaluated: checkpoint, model, dataset and split, how (mode, scales, flip),
    and the class list, so a report read alone (without its JSON) is unambiguous."""
    data, how = info.get("dataset") or {}, info.get("settings") or {}
    mode = how.get("mode", "whole")
    if mode == "sliding":
        mode += f" window {how.get('crop_size')}, stride {how.get('stride_ratio', 0):.2f} of it"
    scales = ", ".join(f"{s:g}" for s in how.get("scales", [1.0]))
    lines = [
        f"- checkpoint: `{info.get('checkpoint', '')}` ({info.get('model', '')})",
        f"- dataset: `{data.get('root', '')}` (preset {data.get('preset', 'custom')}), "
        f"split `{data.get('split', '')}`, {info.get('images', '?')} images",
        f"- mode: {mode}; scales {scales}; flip {'yes' if how.get('flip') else 'no'}"
        + ("; modality blanked (all zeros)" if how.get("blank_modality") else ""),
        f"- classes ({len(class_names)}): {', '.join(f'{k} {n}' for k, n in enumerate(class_names))}",
    ]
    if info.get("device"):
        lines.append(f"- device: {info['device']}; {info.get('seconds', '?')} s")
    return lines


def write_evaluation_report(out_dir: Path, metrics: SegmentationMetrics, info: dict[str, Any],
                            published: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """report.json + confusion_matrix.png + class_iou.png + report.md in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    check_report_folder(out_dir, info.get("checkpoint_path"))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**info, "metrics": metrics.to_dict()}
    if published is not None:
        report["published"] = published
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    write_json(paths["json"], report)
    paths["confusion"] = plot_confusion(metrics, out_dir / "confusion_matrix.png")
    paths["class_iou"] = plot_class_iou(metrics, out_dir / "class_iou.png")
    md = [f"# Evaluation: {info.get('checkpoint', '')}", "", *evaluation_header(info, metrics.class_names), "",
          metrics_table({"this model": metrics}), ""]
    if published is not None and "miou_same_variant" in published:
        md += [f"Published mIoU for this benchmark and variant: {published['miou_same_variant']:.1f} "
               f"({published['source']}).", ""]
    md += [per_class_table({"IoU": metrics}), "", "![confusion matrix](confusion_matrix.png)",
           "![per-class IoU](class_iou.png)", ""]
    paths["markdown"].write_text("\n".join(md))
    return paths
