"""`ros2 run sigma_core train` / `sigma-train`: train Sigma from a YAML config, a preset and key=value overrides.

Examples::

    sigma-train --config mfnet data.root=datasets/MFNet model.init=vssmtiny_dp01_ckpt_epoch_292.pth
    sigma-train --resume runs/mfnet                                       # continue exactly where it stopped
    sigma-train --resume runs/mfnet schedule.epochs=600                   # ... and train longer
    torchrun --nproc_per_node 4 -m sigma_core.cli.train --config mfnet   # 4 GPUs (DDP, NCCL)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .errors import fail, interrupt_is_one_line

if TYPE_CHECKING:
    from ..engine.config import TrainConfig

PROG = "sigma-train"


def build_parser() -> argparse.ArgumentParser:
    from ..engine.config import list_presets

    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a Sigma RGB-X segmentation model (published recipe by default).",
        epilog="Overrides: section.key=value, e.g. optim.lr=1e-4 data.batch_size=4 schedule.epochs=50 "
               "train.out_dir=runs/x train.device=cpu. Sections: model data optim schedule eval train. "
               f"Presets: {', '.join(list_presets())}.")
    parser.add_argument("--config", "-c", default=None, help="preset name or YAML file (default: built-in defaults)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR|CKPT|auto",
                        help="continue a run: its folder (its config.yaml and newest checkpoint), one of its "
                             "epoch_NNNN.pt checkpoints, or 'auto' (the run in train.out_dir, if any). Overrides "
                             "may only add epochs, move data.root or change logging; others are refused")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def load_config(config: Optional[str], resume: Optional[str], overrides: list[str]) -> TrainConfig:
    """The run's configuration: --config and overrides; when resuming a run folder, its own config.yaml with the
    overrides that are safe on resume (see engine.config.resume_config). ValueError naming what is wrong."""
    from ..engine.config import TrainConfig, resume_config, run_folder_of

    if not resume:
        return TrainConfig.load(config, overrides)
    if resume != "auto" and not Path(resume).exists():
        raise ValueError(f"--resume {resume}: no such run folder or checkpoint")
    given = TrainConfig.load(config, overrides)  # where "auto" looks: train.out_dir as given
    run_dir = run_folder_of(resume, given.train.out_dir)
    if run_dir is None:
        if resume != "auto" and Path(resume).is_dir():
            raise ValueError(f"--resume {resume}: no config.yaml there, so it is not a sigma-train run folder")
        given.train.resume = resume  # a checkpoint outside a run folder, or "auto" in a folder not made yet
        return given
    if config is not None:
        print(f"note: resuming {run_dir} with its own config.yaml; --config {config} is not used", file=sys.stderr)
    return resume_config(run_dir, resume, overrides)


@interrupt_is_one_line(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.resume, list(args.overrides))
    except ValueError as exc:
        fail(PROG, exc, 2)
    if args.print_config:
        sys.stdout.write(cfg.to_yaml())
        return 0
    if cfg.train.threads is None and os.environ.get("OMP_NUM_THREADS"):
        cfg.train.threads = int(os.environ["OMP_NUM_THREADS"])
    from ..data.errors import DataError
    from ..engine.train import train

    try:
        result = train(cfg)
    except KeyboardInterrupt:
        fail(PROG, f"interrupted; continue from the last saved epoch: sigma-train --resume {cfg.train.out_dir}", 130)
    except DataError as exc:  # a dataset file or label value: one line naming it, usage-error status
        fail(PROG, exc, 2)
    except (ValueError, OSError, RuntimeError, FloatingPointError) as exc:
        fail(PROG, exc)
    if int(os.environ.get("RANK", "0")) == 0:
        best = "n/a" if result.best_miou is None else f"{100 * result.best_miou:.2f}"
        best = ("no validation (data.val_split null): best.pt is the last epoch" if cfg.data.val_split is None
                else f"best val mIoU {best}")
        print(f"done: {len(result.epochs_run)} epochs in {result.seconds:.0f} s; {best}; "
              f"checkpoints in {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
