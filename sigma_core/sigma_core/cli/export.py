"""`ros2 run sigma_core export` / `sigma-export`: a checkpoint -> one ONNX file that runs without PyTorch.

    sigma-export runs/my_robot/best.pt --out my_robot.onnx                      # any image size
    sigma-export sigma_tiny_mfnet.pth --dataset mfnet --out mfnet.onnx --height 480 --width 640
    sigma-export best.pt --out best_fp16.onnx --precision fp16                    # for GPUs (CUDA, TensorRT)

The file carries classes, palette, modality scaling and normalisation (ONNX metadata_props), so the node,
sigma-replay-eval and Segmenter.from_checkpoint take it as they take a checkpoint. It is checked against
torch on a full-size frame before it is kept (see sigma_core.export); an existing file is never replaced.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from .errors import catch_ctrl_c, fail, raise_interrupted

PROG = "sigma-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Export a Sigma checkpoint to an ONNX model that ONNX Runtime, OpenVINO or TensorRT run "
                               "without PyTorch; checked against torch before it is kept.")
    parser.add_argument("checkpoint", help="our checkpoint (.pt) or a published Sigma .pth (with --dataset)")
    parser.add_argument("--out", "-o", required=True, help="the .onnx file to write (must not exist)")
    parser.add_argument("--dataset", "-d", default=None,
                        help="a published .pth's dataset: mfnet, pst900, nyudepthv2, sunrgbd, a dataset.yaml or a "
                             "class-list file")
    parser.add_argument("--height", type=int, default=None, help="fix the input height (with --width); default any")
    parser.add_argument("--width", type=int, default=None, help="fix the input width (with --height); default any")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: matmuls and convolutions in float16, scans and LayerNorms float32 (GPU runtimes)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or later; default 18)")
    parser.add_argument("--check-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="size of the frame the file is checked on against torch (default: the fixed size, "
                             "else the checkpoint's input size, else 480 640)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    catch_ctrl_c()
    if threading.current_thread() is threading.main_thread():  # SIGTERM (systemd, `timeout`, a container stop) as
        signal.signal(signal.SIGTERM, raise_interrupted)      # Ctrl-C: the partial file is removed
    try:
        from ..export import check_arguments

        check_arguments(out, args.height, args.width, args.precision, args.opset,  # before loading anything
                        tuple(args.check_size) if args.check_size else None)
        from ..checkpoints import describe_config, load_model
        from ..export import export_onnx

        model, meta = load_model(args.checkpoint, dataset=args.dataset)
        for note in meta.notes:
            print(note)
        report = export_onnx(model, meta, out, source=str(Path(args.checkpoint).resolve()), height=args.height,
                             width=args.width, precision=args.precision,
                             check_size=tuple(args.check_size) if args.check_size else None, opset=args.opset,
                             log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        fail(PROG, "interrupted (Ctrl-C or SIGTERM); nothing was written", 130)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:  # CheckpointError is a ValueError
        fail(PROG, exc)
    size = f"{args.height}x{args.width} only" if args.height else "any size"
    print(f"checked on a {report.check_size[0]}x{report.check_size[1]} frame: largest logit difference from torch "
          f"{report.max_abs_difference:.3g} ({report.relative_difference:.2g} relative), masks "
          f"{report.mask_agreement:.2%} equal")
    print(f"wrote {out} ({report.file_bytes / 1e6:.1f} MB, float32 weights {report.weight_bytes / 1e6:.1f} MB): "
          f"{describe_config(meta.config)}, {meta.modality}, {size}, {args.precision}, {report.scans} scans, "
          f"{report.seconds:.0f} s")
    print(f"run it: ros2 run sigma_ros sigma_node --ros-args -p checkpoint:={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
