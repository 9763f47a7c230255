"""`ros2 run sigma_core evaluate` / `sigma-evaluate`: a checkpoint and a dataset -> metrics, JSON and charts.

Examples::

    sigma-evaluate runs/mfnet/best.pt --config mfnet                      # published MFNet settings
    sigma-evaluate sigma_tiny_mfnet.pth --preset mfnet --data-root datasets/MFNet   # a published file
    sigma-evaluate best.pt --data-root my_dataset --mode sliding --crop 480 640 --scales 0.75 1 1.25 --flip
    sigma-evaluate best.pt --data-root synth --split test_night --blank-modality   # without thermal

Writes report.json, report.md, confusion_matrix.png and class_iou.png to --out, by default
<checkpoint name>_eval/<split> in the working directory (<run folder>_best_eval/<split> for a run's best.pt)
(and colourised predictions with --save-predictions). A folder holding files no evaluation wrote, or the
report of another checkpoint, is refused before evaluating; nothing is replaced.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import catch_ctrl_c, fail

PROG = "sigma-evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Evaluate a Sigma checkpoint (ours or published) on a dataset.",
        epilog="Overrides: section.key=value for the data/eval/model sections, e.g. eval.limit=50 data.num_workers=0. "
               "A published checkpoint's architecture is inferred from its keys and its classes come from the "
               "dataset being evaluated.")
    parser.add_argument("checkpoint", nargs="?",
                        help="our checkpoint (best.pt, epoch_NNNN.pt) or a published Sigma .pth (default: the bundled "
                             "demo model of the dataset's modality)")
    parser.add_argument("--config", "-c", default=None, help="preset name or YAML file for the data and eval settings")
    parser.add_argument("--preset", default=None, help="dataset preset (mfnet, pst900, nyudv2, sunrgbd, custom)")
    parser.add_argument("--data-root", default=None, help="dataset folder")
    parser.add_argument("--split", default=None, help="split to evaluate (default: data.val_split, 'test')")
    parser.add_argument("--mode", choices=("whole", "sliding"), default=None)
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None, help="sliding-window size")
    parser.add_argument("--scales", type=float, nargs="+", default=None, help="test scales, e.g. 0.75 1 1.25")
    parser.add_argument("--flip", action="store_true", default=None, help="add horizontally flipped predictions")
    parser.add_argument("--blank-modality", action="store_true",
                        help="replace thermal/depth by a blank (zero) image: how much does the model rely on it?")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None,
                        help="report folder (default: <checkpoint name>_eval/<split> in the working directory; "
                             "<run folder>_best_eval/<split> for a run's best.pt, last.pt, epoch_NNNN.pt)")
    parser.add_argument("--save-predictions", action="store_true", help="also write colourised prediction PNGs")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


# The names sigma-train gives the checkpoints of every run: their folder tells them apart.
_RUN_CHECKPOINT = re.compile(r"best|last|epoch_\d+")


def default_out(checkpoint: str, split: str, blank_modality: bool) -> Path:
    """<checkpoint name>_eval/<split> in the working directory (never beside the checkpoint: that may be
    inside the installed package, as the bundled model is); a run's best.pt / last.pt / epoch_NNNN.pt is
    named with its run folder, <run>_best_eval/<split>, so that runs/ft/best.pt and runs/street/best.pt
    get a folder each (a folder holding another checkpoint's report is refused, never replaced)."""
    path = Path(checkpoint)
    name = path.stem
    if _RUN_CHECKPOINT.fullmatch(name) and path.resolve().parent.name:
        name = f"{path.resolve().parent.name}_{name}"
    return Path(f"{name}_eval") / (split + ("_blank_modality" if blank_modality else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    catch_ctrl_c()
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.checkpoint is None and args.data_root is None and args.config is None:
        parser.error("give the checkpoint to evaluate (default: the bundled demo model) and its dataset, e.g. "
                     "sigma-evaluate runs/custom/best.pt --data-root my_dataset")
    if (args.checkpoint is not None and "=" in args.checkpoint and not Path(args.checkpoint).exists()
            and (args.data_root or args.config)):  # no checkpoint (the bundled model), an override first
        args.overrides.insert(0, args.checkpoint)
        args.checkpoint = None
    if args.checkpoint is not None and "=" in args.checkpoint and not Path(args.checkpoint).exists():
        parser.error(f"the first argument is the checkpoint to evaluate, got the override {args.checkpoint!r}")
    from ..data.errors import DataError
    from ..engine.config import RUN_CONFIG, TrainConfig

    overrides = list(args.overrides)
    for flag, key in ((args.preset, "data.preset"), (args.data_root, "data.root"), (args.split, "data.val_split"),
                      (args.mode, "eval.mode")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.crop is not None:
        overrides.append(f"eval.crop_size=[{args.crop[0]}, {args.crop[1]}]")
    if args.scales is not None:
        overrides.append(f"eval.scales=[{', '.join(str(s) for s in args.scales)}]")
    if args.flip:
        overrides.append("eval.flip=true")
    config = args.config
    run_config = Path(args.checkpoint).parent / RUN_CONFIG if args.checkpoint else None
    if config is None and args.data_root is None and args.preset is None and run_config and run_config.is_file():
        config = str(run_config)  # a run's checkpoint: its dataset and validation settings, nothing retyped
        print(f"using the run's configuration {run_config} (give --data-root or --config for another dataset)",
              file=sys.stderr)
    try:
        cfg = TrainConfig.load(config, overrides)
        if args.checkpoint is None:  # the bundled model of the dataset's modality, as the node and demo default
            from ..data.dataset import resolve_spec
            from ..segmentation_step import bundled_checkpoint

            if cfg.data.root is None:
                raise ValueError("no dataset: give --data-root (and --preset for a benchmark)")
            modality = resolve_spec(cfg.data.root, cfg.data.preset).modality
            args.checkpoint = str(bundled_checkpoint(modality))
            print(f"no checkpoint given: evaluating the bundled {modality} demo model {args.checkpoint}",
                  file=sys.stderr)
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
        from ..engine.evaluate import run_evaluation

        out = Path(args.out) if args.out else default_out(args.checkpoint, cfg.data.val_split, args.blank_modality)
        started = time.perf_counter()
        report = run_evaluation(args.checkpoint, cfg, out, device=args.device, blank_modality=args.blank_modality,
                                save_predictions=args.save_predictions)
    except KeyboardInterrupt:
        fail(PROG, "interrupted", 130)
    except DataError as exc:  # a dataset file or label value: one line naming it, usage-error status
        fail(PROG, exc, 2)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        fail(PROG, exc)
    m = report["metrics"]
    pub = report.get("published", {}).get("miou_same_variant")
    line = (f"mIoU {100 * (m['miou'] or 0):.2f}  mean acc. {100 * (m['mean_class_accuracy'] or 0):.2f}  "
            f"pixel acc. {100 * (m['pixel_accuracy'] or 0):.2f}  fwIoU {100 * (m['fw_iou'] or 0):.2f}  "
            f"({report['images']} images, {time.perf_counter() - started:.0f} s)")
    if pub is not None:
        line += f"  [published: {pub:.1f}]"
    print(line)
    print(f"report: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
