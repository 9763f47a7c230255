"""`ros2 run sigma_core import` / `sigma-import`: a published Sigma checkpoint -> our self-describing checkpoint.

Examples::

    sigma-import sigma_tiny_mfnet.pth --dataset mfnet -o sigma_tiny_mfnet.pt
    sigma-import my_run/epoch-500.pth --dataset my_robot_data/dataset.yaml -o my_robot.pt
    sigma-import sigma_small_nyu.pth --dataset nyudepthv2 -o sigma_small_nyu_fp16.pt --half

The architecture (any depths/width the published code builds) is inferred from the file's
keys and shapes; classes, palette, modality scaling and input size come from ``--dataset``.
The output's float32 weights equal the input's, so its logits are identical. Existing files
are never overwritten.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import catch_ctrl_c, fail

PROG = "sigma-import"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert a published Sigma checkpoint (.pth) into a sigma_core checkpoint that every "
                               "tool and the ROS node load without further options.")
    parser.add_argument("checkpoint", help="published Sigma checkpoint (state dict bare or under 'model')")
    parser.add_argument("--dataset", "-d", required=True,
                        help="what it was trained on: a preset (mfnet, pst900, nyudepthv2, sunrgbd), a dataset.yaml "
                             "(or its folder) or a class-list file (one class name a line)")
    parser.add_argument("-o", "--out", required=True, help="our checkpoint to write (must not exist)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16 (half the size; logits then differ slightly)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    catch_ctrl_c()
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        if out.exists():
            raise FileExistsError(f"{out} exists; sigma-import never overwrites a file: choose another -o or move it")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"folder {out.parent} of -o {out} does not exist")
        from ..checkpoints import describe_config, load_model, save_checkpoint

        model, meta = load_model(args.checkpoint, dataset=args.dataset)
        if not meta.published:  # our own checkpoint: it names its classes already
            raise ValueError(f"{args.checkpoint} is already a sigma_core checkpoint; use it as it is")
        for note in meta.notes:
            print(note)
        save_checkpoint(out, model, meta.config, class_names=meta.class_names, modality=meta.modality,
                        palette=meta.palette, normalization=meta.normalization, extra=meta.extra,
                        scaling=meta.scaling, input_size=meta.input_size, half=args.half)
    except KeyboardInterrupt:
        fail(PROG, "interrupted", 130)
    except (ValueError, OSError, RuntimeError) as exc:  # CheckpointError is a ValueError
        fail(PROG, exc)
    size = "native size" if meta.input_size is None else f"input {meta.input_size[0]}x{meta.input_size[1]}"
    print(f"wrote {out}: {describe_config(meta.config)}, classes of {meta.extra['dataset']}, {meta.modality}, {size}"
          + (", float16 weights" if args.half else ""))
    topic = "/camera/depth/image_rect_raw" if meta.modality == "depth" else "/thermal/image_raw"
    remaps = f"-r rgb/image:=/camera/color/image_raw -r modal/image:={topic}"
    print(f"run it (GPU: add -p device:=cuda -p precision:=fp16; CPU: fp32, the default):\n"
          f"  ros2 run sigma_ros sigma_node --ros-args -p checkpoint:={out} {remaps}\n"
          f"  without ros2 (pip path): sigma_node --ros-args -p checkpoint:={out} {remaps}\n"
          f"    (export FASTDDS_DEFAULT_PROFILES_FILE=<repo>/sigma_ros/config/fastdds_large_images.xml for camera-"
          f"sized images, as sigma.launch.py does)\n"
          f"  on files, without ROS: sigma-predict RGB MODAL --checkpoint {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
