"""The bundled demo models: their synthetic data, their export to half precision and their evaluation reports.

Reproduce the bundled thermal model (5-25 minutes on one CPU thread; see tools/train_demo_model.sh)::

    python -m sigma_core.engine.demo_model data --root build/demo_data
    sigma-train --config synthetic_demo data.root=build/demo_data train.out_dir=build/demo_run
    python -m sigma_core.engine.demo_model export --run build/demo_run --data build/demo_data \
        --out sigma_core/sigma_core/assets

and the depth one the same way with ``data --modality depth --root build/demo_depth_data`` and
``--config synthetic_demo_depth`` (``tools/train_demo_model.sh --modality depth``). The report gives mIoU on
held-out synthetic scenes, and on night scenes with the second modality against the same model with it blanked
(all zeros): the gap is what fusion buys where RGB is dark.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from .evaluate import EvalSettings, evaluate_dataset
from .metrics import SegmentationMetrics, chance_miou
from .reports import metrics_table, per_class_table, plot_class_iou, write_json

CONFIGS = {"thermal": "configs/synthetic_demo.yaml", "depth": "configs/synthetic_demo_depth.yaml"}


def asset_names(modality: str) -> dict[str, str]:
    """File names of the bundled model of ``modality`` and its report (sigma_core.assets.DEMO_MODELS)."""
    from ..assets import DEMO_MODELS

    stem = DEMO_MODELS[modality][:-len(".pt")]
    return {"model": f"{stem}.pt", "json": f"{stem}_report.json", "md": f"{stem}_report.md",
            "night_png": f"{stem}_night_iou.png"}
# The training/held-out world (write_dataset arguments) and a small independent check set for the tests.
DEMO_DATA: dict[str, Any] = {"n": 800, "seed": 2026, "size": [120, 160], "night_fraction": 0.5, "test_fraction": 0.25}
CHECK_DATA: dict[str, Any] = {"n": 64, "seed": 7, "size": [120, 160], "night_fraction": 0.5, "test_fraction": 0.5}


def write_demo_data(root: Path, params: dict[str, Any], modality: str = "thermal") -> Path:
    """The synthetic world as a dataset folder: the same scenes with thermal (mono16) or depth (16UC1) images."""
    from ..data.synthetic import write_dataset

    return write_dataset(root, n=params["n"], seed=params["seed"], night_fraction=params["night_fraction"],
                         size=tuple(params["size"]), modality=modality, test_fraction=params["test_fraction"])


def evaluate_split(model: torch.nn.Module, root: Path, split: str, blank_modality: bool = False,
                   class_names: Optional[Sequence[str]] = None) -> SegmentationMetrics:
    """Whole-image metrics of ``model`` on one split of a synthetic dataset folder (CPU)."""
    from ..data.dataset import RGBXDataset

    ds = RGBXDataset(root, split=split, preset="custom")
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)
    return evaluate_dataset(model, loader, len(ds.spec.classes), EvalSettings(), "cpu",
                            class_names or ds.spec.classes, blank_modality=blank_modality)


def _pick_checkpoint(run: Path) -> Path:
    if (run / "best.pt").is_file():
        return run / "best.pt"
    from .run_folder import list_checkpoints

    found = list_checkpoints(run)
    if not found:
        raise FileNotFoundError(f"no best.pt or epoch_NNNN.pt in {run}: train first (see this module's docstring)")
    return found[-1][1]


def _training_summary(run: Path) -> dict[str, Any]:
    rows = list(csv.DictReader(open(run / "epochs.csv"))) if (run / "epochs.csv").is_file() else []
    return {
        "epochs": len(rows),
        "iterations": int(rows[-1]["iteration"]) if rows else None,
        "wall_seconds": round(sum(float(r["seconds"]) for r in rows), 1),
        "val_miou_by_epoch": {r["epoch"]: float(r["miou"]) for r in rows if r.get("miou")},
    }


def export(run: Path, data: Path, out: Path, check_root: Optional[Path] = None) -> dict[str, Any]:
    """Half-precision copy of the run's best checkpoint into ``out`` plus its report (JSON, markdown, chart).

    The modality (thermal or depth) is the run's: the files are named after it (sigma_core.assets.DEMO_MODELS).
    """
    from ..checkpoints import load_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    started = time.perf_counter()
    source = _pick_checkpoint(run)
    model, meta = load_checkpoint(source)
    training = _training_summary(run)
    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    out.mkdir(parents=True, exist_ok=True)
    x = meta.modality  # "thermal" or "depth": the words and file names below follow it
    names_of = asset_names(x)
    target = out / names_of["model"]
    extra = {"demo": {"trained_on": {"generator": "sigma_core.data.synthetic", "modality": x, **DEMO_DATA},
                      "training": training, "source_checkpoint": source.name,
                      "report": names_of["json"], "train_config": config_text}}
    save_checkpoint(target, model, meta.config, class_names=meta.class_names, modality=meta.modality,
                    palette=meta.palette, normalization=meta.normalization, scaling=meta.scaling, extra=extra,
                    input_size=tuple(DEMO_DATA["size"]), half=True)  # run at the scale it was trained for
    # Evaluate exactly what ships: the half-precision file, loaded back as float32.
    model, meta = load_checkpoint(target)
    names = meta.class_names
    results = {
        f"test (RGB + {x})": evaluate_split(model, data, "test", class_names=names),
        f"test, {x} blanked": evaluate_split(model, data, "test", blank_modality=True, class_names=names),
        f"day (RGB + {x})": evaluate_split(model, data, "test_day", class_names=names),
        f"day, {x} blanked": evaluate_split(model, data, "test_day", blank_modality=True, class_names=names),
        f"night (RGB + {x})": evaluate_split(model, data, "test_night", class_names=names),
        f"night, {x} blanked": evaluate_split(model, data, "test_night", blank_modality=True, class_names=names),
    }
    with tempfile.TemporaryDirectory() as tmp:
        check_dir = write_demo_data(Path(check_root or tmp) / "check", CHECK_DATA, x)
        check = evaluate_split(model, check_dir, "test", class_names=names)
    chance = chance_miou(results[f"test (RGB + {x})"].pixels_per_class)
    night, blank = results[f"night (RGB + {x})"], results[f"night, {x} blanked"]
    day_blank = results[f"day, {x} blanked"]
    report = {
        "model_file": names_of["model"],
        "model": meta.config.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_bytes": target.stat().st_size,
        "classes": names,
        "modality": meta.modality,
        "data": {"generator": "sigma_core.data.synthetic.write_dataset", **DEMO_DATA,
                 "splits": {"test": len(_names(data, "test")), "test_day": len(_names(data, "test_day")),
                            "test_night": len(_names(data, "test_night"))}},
        "training": {**training, "device": "CPU, 1 torch thread (shared 2-core machine)",
                     "source_checkpoint": source.name},
        "evaluation": "whole image, single scale, no flip; weights as shipped (float16, run in float32)",
        "results": {k: v.to_dict() | {"confusion_matrix": None} for k, v in results.items()},
        "night_fusion_gain_miou": night.miou - blank.miou,
        "chance_miou": chance,
        "check_set": {"generator": "sigma_core.data.synthetic.write_dataset", **CHECK_DATA, "split": "test",
                      "miou": check.miou, "pixel_accuracy": check.pixel_accuracy},
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / names_of["json"], report)
    plot_class_iou(night, out / names_of["night_png"],
                   title=f"Night scenes: per-class IoU with and without {x}",
                   compare={f"{x} blanked": blank})
    md = [
        f"# Bundled demo model: Sigma nano on the synthetic RGB-{x} world",
        "",
        f"`{names_of['model']}`: {meta.config.name}, {report['parameters'] / 1e6:.2f} M parameters, float16 "
        f"({report['file_bytes'] / 1e6:.1f} MB), {len(names)} classes, modality {meta.modality}.",
        f"Trained from scratch on {DEMO_DATA['n'] - report['data']['splits']['test']} synthetic scenes "
        f"({DEMO_DATA['size'][0]}x{DEMO_DATA['size'][1]}, half at night, seed {DEMO_DATA['seed']}) for "
        f"{training['epochs']} epochs / {training['iterations']} iterations in {training['wall_seconds'] / 60:.1f} "
        f"minutes on one CPU thread ({CONFIGS[x]}; reproduce with tools/train_demo_model.sh"
        f"{' --modality depth' if x == 'depth' else ''}).",
        "",
        f"Held-out scenes ({report['data']['splits']['test']} test images; "
        f"{report['data']['splits']['test_night']} at night), whole image, single scale:",
        "",
        metrics_table(results),
        "",
        f"Night scenes: mIoU {100 * night.miou:.1f} with {x} vs {100 * blank.miou:.1f} with the {x} input "
        f"blanked (all zeros): fusion adds {100 * (night.miou - blank.miou):.1f} points at night. "
        f"Chance level on the test set: uniform random {100 * chance['uniform']:.1f}, majority class "
        f"{100 * chance['majority']:.1f} mIoU.",
        "",
        f"The model was trained with the {x} input blanked for a quarter of the samples "
        f"(data.modality_dropout), so it also runs on RGB alone: without {x} it keeps "
        f"{100 * day_blank.miou:.1f} mIoU by day and {100 * blank.miou:.1f} at night, where RGB is dark "
        f"and noisy; with {x}, night scenes reach {100 * night.miou:.1f}.",
        "",
        "Per-class IoU (%):",
        "",
        per_class_table(results),
        "",
        f"Check set for the tests (write_dataset n={CHECK_DATA['n']}, seed={CHECK_DATA['seed']}, test split): "
        f"mIoU {100 * check.miou:.2f}.",
        "",
        f"![night IoU with and without {x}]({names_of['night_png']})",
        "",
    ]
    (out / names_of["md"]).write_text("\n".join(md))
    return report


def _names(root: Path, split: str) -> list[str]:
    return [s for s in (root / f"{split}.txt").read_text().split() if s]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sigma_core.engine.demo_model",
                                     description="Data, export and report of the bundled demo model.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write the synthetic training/held-out world")
    d.add_argument("--root", default="build/demo_data")
    d.add_argument("--modality", choices=("thermal", "depth"), default="thermal", help="the second camera")
    e = sub.add_parser("export", help="half-precision copy of a run's best checkpoint + evaluation report")
    e.add_argument("--run", default="build/demo_run")
    e.add_argument("--data", default="build/demo_data")
    e.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "assets"))
    args = parser.parse_args(argv)
    try:
        if args.command == "data":
            print(f"wrote {write_demo_data(Path(args.root), DEMO_DATA, args.modality)}")
        else:
            report = export(Path(args.run), Path(args.data), Path(args.out))
            r, x = report["results"], report["modality"]
            print(f"test mIoU {100 * r[f'test (RGB + {x})']['miou']:.2f}; "
                  f"night {100 * r[f'night (RGB + {x})']['miou']:.2f} vs {x} blanked "
                  f"{100 * r[f'night, {x} blanked']['miou']:.2f}; wrote {args.out}")
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"demo_model: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
