"""`ros2 run sigma_core predict` / `sigma-predict`: segment image pairs, folders or videos without ROS.

Examples::

    sigma-predict rgb.png thermal.png                          # one pair, the bundled thermal model
    sigma-predict rgb/ depth/ --modality depth --out seg/      # two folders paired by file name
    sigma-predict datasets/my_robot --split test               # a dataset folder (dataset.yaml)
    sigma-predict rgb.mp4 thermal.mp4 --checkpoint runs/x/best.pt --confidence
    sigma-predict rgb/ thermal/ --checkpoint sigma_tiny_mfnet.pth --dataset mfnet --device cuda --precision fp16

Every pair goes through the node's per-frame step (sigma_core.segmentation_step), so the masks are the ones the
node would publish. Writes mask/, color/, overlay/ (and confidence/ with --confidence) and summary.json into a
new folder; never overwrites.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import DefaultsHelpFormatter, fail, interrupt_is_one_line

PROG = "sigma-predict"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=DefaultsHelpFormatter,
        description="Segment an RGB + thermal/depth image pair, two folders paired by file name, a dataset folder, "
                    "or two videos (or a video and an image folder) with a Sigma checkpoint.")
    p.add_argument("rgb", type=Path, help="RGB image, folder or video; or a dataset folder (then no MODAL)")
    p.add_argument("modal", type=Path, nargs="?", help="thermal/depth image, folder, video or image folder")
    p.add_argument("--checkpoint", default="",
                   help="our checkpoint or a published Sigma .pth (with --dataset); default: the bundled demo model "
                        "of --modality")
    p.add_argument("--dataset", default=None,
                   help="a published .pth's dataset: mfnet, pst900, nyudepthv2, sunrgbd, a dataset.yaml or class list")
    p.add_argument("--modality", choices=("thermal", "depth"), default=None,
                   help="the second camera (default: the checkpoint's; picks the bundled depth model when no "
                        "checkpoint is given)")
    p.add_argument("--out", "-o", type=Path, default=Path("predictions"),
                   help="output folder: new or empty, never overwritten")
    p.add_argument("--split", default=None, help="for a dataset folder: the split list to segment (default: all "
                                                 "frames with both images)")
    p.add_argument("--preset", default=None, help="for a benchmark dataset folder without dataset.yaml: mfnet, "
                                                  "pst900, nyudepthv2, sunrgbd")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N (an .onnx checkpoint also tensorrt, tensorrt:N)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="fp16/bf16 for GPUs (refused on a CPU without native support)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per forward pass (default: 8 on CUDA, 1 on a CPU, where batching does not help)")
    p.add_argument("--confidence", action="store_true", help="also write confidence/<name>.tiff (float32)")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay/")
    p.add_argument("--no-color", action="store_true", help="do not write color/")
    p.add_argument("--overlay-alpha", type=float, default=0.5, help="weight of the colour mask in the overlay")
    p.add_argument("--thermal-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="raw thermal values mapped to 0..1 (default: the checkpoint's)")
    p.add_argument("--max-depth", type=float, default=None, help="depth in metres mapped to 1 (default: the "
                                                                 "checkpoint's)")
    p.add_argument("--depth-units", default=None, metavar="UNITS",
                   help="what integer depth images count in: mm (REP 118, the default), 0.1mm (NYU Depth V2), 0.2mm "
                        "(TUM), sunrgbd (or nyu, tum, redwood); converted to metres before the model's scaling")
    p.add_argument("--calibration", default=None,
                   help="two-camera calibration (sigma-calibrate's, a Kalibr camchain or an OpenCV stereo YAML): "
                        "registers the modality into the RGB view as the node does with "
                        "registration.calibration_file")
    p.add_argument("--registration-mode", choices=("homography", "rig"), default=None,
                   help="with --calibration: the node's registration.mode (default: the file's)")
    p.add_argument("--registration-distance", type=float, default=None,
                   help="rig mode, thermal: plane distance in metres (the node's registration.distance_m)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@interrupt_is_one_line(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.overlay_alpha <= 1.0:
        parser.error(f"--overlay-alpha must be within 0..1, got {args.overlay_alpha}")
    from ..data.errors import DataError
    from ..data.frame_sources import open_pairs, with_depth_units
    from ..data.registration import DEFAULT_DISTANCE_M
    from ..engine.predict import PredictOptions, check_output_folder, predict, summary_lines
    from ..segmentation_step import load_registration, load_segmenter

    if args.modal is not None and (args.split or args.preset):  # was ignored: a pair or folders have no splits
        parser.error(f"--{'split' if args.split else 'preset'} is for a dataset folder (one path, no MODAL); "
                     f"{args.rgb} and {args.modal} are segmented whole")
    outputs = ["mask"] + [o for o, off in (("color", args.no_color), ("overlay", args.no_overlay)) if not off]
    if args.confidence:
        outputs.append("confidence")
    try:
        check_output_folder(args.out)  # before loading anything
        pairs = open_pairs(args.rgb, args.modal, split=args.split, preset=args.preset)
        if args.depth_units is not None:
            pairs = with_depth_units(pairs, args.depth_units)
        seg = load_segmenter(args.checkpoint or None, args.device, args.precision, dataset=args.dataset,
                             modality=args.modality,
                             thermal_range=tuple(args.thermal_range) if args.thermal_range else None,
                             depth_max_range=args.max_depth)
        for note in seg.meta.notes:
            print(note, file=sys.stderr)
        for warning in seg.meta.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.registration_mode and not args.calibration:
            raise ValueError(f"--registration-mode {args.registration_mode} needs --calibration FILE")
        registration = None
        if args.calibration:
            registration = load_registration(args.registration_mode, args.calibration, seg.scaling,
                                             args.registration_distance or DEFAULT_DISTANCE_M)
        batch = args.batch_size or (8 if seg.device.type == "cuda" else 1)
        print(f"{len(pairs)} pairs from {pairs.description}; {seg.model_name} ({seg.modality}) on {seg.device} in "
              f"{seg.precision}; writing {', '.join(outputs)} to {args.out}", file=sys.stderr)
        summary = predict(pairs, seg, PredictOptions(args.out, outputs, batch, args.overlay_alpha,
                                                     progress=not args.no_progress, registration=registration),
                          checkpoint=args.checkpoint or "bundled demo model",
                          warn=lambda text: print(f"warning: {text}", file=sys.stderr))
    except KeyboardInterrupt:
        fail(PROG, f"interrupted: {args.out} holds only the frames written so far ({partial(args.out)})"
             if (args.out / "summary.json").is_file() else "interrupted during start-up; nothing was written", 130)
    except (DataError, FileNotFoundError) as exc:
        fail(PROG, f"{exc}{partial_note(args.out)}", 2)
    except (ValueError, OSError, RuntimeError) as exc:
        fail(PROG, f"{exc}{partial_note(args.out)}")
    print("\n".join(summary_lines(summary)))
    return 0


def partial(out: Path) -> str:
    """What an unfinished run left in ``out``: its summary.json says incomplete."""
    masks = len(list((out / "mask").glob("*.png"))) if (out / "mask").is_dir() else 0
    return f"{masks} masks; its summary.json says \"complete\": false"


def partial_note(out: Path) -> str:
    """For an error after the run started writing: the folder is partial, and says so."""
    return f"; {out} is incomplete ({partial(out)})" if (out / "summary.json").is_file() else ""


if __name__ == "__main__":
    sys.exit(main())
