"""`ros2 run sigma_core train` / `sigma-train`: train Sigma from a YAML config, a preset and key=value overrides.

Examples::

    sigma-train --config mfnet data.root=datasets/MFNet model.init=vssmtiny_dp01_ckpt_epoch_292.pth
    sigma-train --config runs/mfnet/config.yaml train.resume=auto        # continue exactly where it stopped
    torchrun --nproc_per_node 4 -m sigma_core.cli.train --config mfnet   # 4 GPUs (DDP, NCCL)
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .errors import fail

PROG = "sigma-train"


def build_parser() -> argparse.ArgumentParser:
    from ..engine.config import list_presets

    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a Sigma RGB-X segmentation model (published recipe by default).",
        epilog="Overrides: section.key=value, e.g. optim.lr=1e-4 data.batch_size=4 schedule.epochs=50 "
               "train.out_dir=runs/x train.device=cpu. Sections: model data optim schedule eval train. "
               f"Presets: {', '.join(list_presets())}.")
    parser.add_argument("--config", "-c", default=None, help="preset name or YAML file (default: built-in defaults)")
    parser.add_argument("--resume", default=None, metavar="CKPT|auto",
                        help="resume from an epoch_NNNN.pt checkpoint, or 'auto' (the newest in train.out_dir)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    from ..engine.config import TrainConfig

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    try:
        cfg = TrainConfig.load(args.config, overrides)
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
        fail(PROG, "interrupted; resume with train.resume=auto (the last completed epoch's checkpoint)", 130)
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
