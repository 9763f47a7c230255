"""`ros2 run sigma_core extract` / `sigma-extract`: a bag -> a dataset folder in the published layout.

Examples::

    sigma-extract run1/ --rgb-topic /camera/color/image_raw --modal-topic /thermal/image_raw -o data/run1
    sigma-extract run1.bag --rgb-topic /rgb/compressed --modal-topic /depth --label-topic /labels \\
        --classes classes.txt --min-interval 0.5 --test-fraction 0.2 -o data/run1
    sigma-extract run2/ --rgb-topic /rgb --modal-topic /thermal --calibration rig.yaml -o data/run2

Without labels, pairs are the ones the segmentation node would make (same
approximate-time policy, --slop and --queue-size). With --label-topic, every label
is kept with the RGB frame of its stamp and the nearest modality frame within --slop;
labels that cannot be kept are counted with the reason. Rerunning the same command
resumes (files that exist are skipped); a rerun with other options into the same folder is refused.
With --calibration, modality frames are registered into the RGB view as the node does.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..data.registration import DEFAULT_DISTANCE_M
from .errors import fail, interrupt_is_one_line

PROG = "sigma-extract"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Extract paired RGB + thermal/depth (+ label) frames from a "
                                "rosbag2 (sqlite3/MCAP) folder or ROS 1 .bag into a dataset folder.")
    p.add_argument("bag", help="rosbag2 folder (or its .db3/.mcap file) or ROS 1 .bag")
    p.add_argument("-o", "--out", required=True, help="output dataset folder (created; rerun to resume)")
    p.add_argument("--rgb-topic", required=True, help="sensor_msgs/Image or CompressedImage topic of the RGB camera")
    p.add_argument("--modal-topic", required=True, help="thermal or depth Image/CompressedImage topic")
    p.add_argument("--label-topic", default=None,
                   help="mono8 class-id Image topic stamped like RGB: each label is kept with its RGB frame and the "
                        "nearest modality frame within --slop; unlabelled frames are then left out")
    p.add_argument("--slop", type=float, default=None,
                   help="max stamp difference of a pair, seconds (default: the node's 0.05; with --label-topic 0.55 x "
                        "the modality's median frame interval, at least 0.05, so that every label finds its nearest "
                        "modality frame)")
    p.add_argument("--queue-size", type=int, default=10, help="pairing queue per stream, as the node's (default 10)")
    p.add_argument("--every", type=int, default=1, help="keep every N-th pair (default 1: all)")
    p.add_argument("--min-interval", type=float, default=0.0, help="min seconds between kept pairs (default 0)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="fraction of the recording (in whole time blocks) for test.txt, the split training validates "
                        "on to choose best.pt (default 0.2; 0: no test split)")
    p.add_argument("--split-blocks", type=int, default=10, help="time blocks the recording is cut into (default 10)")
    p.add_argument("--split-gap", type=float, default=None,
                   help="train frames closer than this many seconds to a test frame go to gap.txt instead of train "
                        "(still written; default 1.0, with --label-topic 0: every labelled frame in train or test)")
    p.add_argument("--modality", choices=("thermal", "depth"), default=None,
                   help="default: depth for 16UC1/32FC1 or a topic named *depth*, else thermal")
    p.add_argument("--classes", default=None,
                   help="class names: a text file (one per line) or a YAML with 'classes' (and palette, scaling), "
                        "e.g. a dataset.yaml or the file `sigma-synth describe FILE` writes")
    p.add_argument("--thermal-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="raw thermal values mapped to 0 and 1 (default: from --classes YAML, else the dtype's range)")
    p.add_argument("--max-depth", type=float, default=None,
                   help="depth in metres mapped to 1 (default: from --classes YAML, else 10)")
    p.add_argument("--allow-partial", action="store_true",
                   help="a damaged bag that yields fewer messages than its index declares: extract what can be read "
                        "and warn with the counts (default: an error)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="two-camera calibration (sigma-calibrate's, a Kalibr camchain or an OpenCV stereo YAML): "
                        "register the modality into the RGB view as the node does with registration.calibration_file")
    p.add_argument("--registration-mode", choices=("homography", "rig"), default=None,
                   help="with --calibration: the node's registration.mode (default: the file's)")
    p.add_argument("--registration-distance", type=float, default=DEFAULT_DISTANCE_M,
                   help="rig mode, thermal: plane distance in metres (the node's registration.distance_m)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def extraction_warnings(c: dict, args: argparse.Namespace) -> list[str]:
    """What a user would want to know about where the frames went: most of them in test, dropped, unpaired."""
    warnings = []
    if c["test"] > c["train"]:
        warnings.append(f"{c['test']} of {c['train'] + c['test']} frames went to test and only {c['train']} to "
                        f"train: lower --test-fraction ({args.test_fraction}) or raise --split-blocks "
                        f"({args.split_blocks})")
    if c["near_test"] > c["kept"] / 2:
        warnings.append(f"{c['near_test']} of {c['kept']} kept frames are within --split-gap of a test frame and went "
                        "to gap.txt, not train (written and listed): lower --split-gap or --split-blocks")
    if args.test_fraction > 0 and c["test"] == 0:
        warnings.append("no frame went to test, so training cannot choose a best.pt: record longer or raise "
                        "--test-fraction")
    fewer = min(c["rgb_messages"], c["modal_messages"])
    if "label_messages" not in c and c["pairs"] < fewer / 2:  # labelled frames: their notes give the reasons
        warnings.append(f"only {c['pairs']} pairs from {c['rgb_messages']} RGB and {c['modal_messages']} modality "
                        f"messages: most frames have no partner within --slop {c['slop_s']} s; a larger --slop pairs "
                        "more")
    return warnings


@interrupt_is_one_line(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ..data.bags import BagError
    from ..data.extraction import ExtractError, ExtractOptions, extract, load_class_file
    from ..data.modality import ModalityScaling

    try:
        info = load_class_file(args.classes) if args.classes else {}
        modality = args.modality
        scaling = None
        base = info.get("scaling")
        if base is not None and (modality is None or base.get("modality", modality) == modality):
            scaling = ModalityScaling.from_dict(base)
            modality = modality or scaling.modality
        if args.thermal_range is not None or args.max_depth is not None:
            modality = modality or ("depth" if args.max_depth is not None else "thermal")
            d = scaling.to_dict() if scaling is not None else {"modality": modality}
            d["modality"] = modality
            if args.thermal_range is not None:
                d["range"] = list(args.thermal_range)
            if args.max_depth is not None:
                d["max_range"] = args.max_depth
            scaling = ModalityScaling.from_dict(d)
        opts = ExtractOptions(
            bag=Path(args.bag), out=Path(args.out), rgb_topic=args.rgb_topic, modal_topic=args.modal_topic,
            label_topic=args.label_topic, slop=args.slop, queue_size=args.queue_size, every=args.every,
            min_interval=args.min_interval, test_fraction=args.test_fraction, split_blocks=args.split_blocks,
            split_gap=args.split_gap, modality=modality, scaling=scaling, classes=info.get("classes"),
            palette=info.get("palette"), progress=not args.quiet, allow_partial=args.allow_partial,
            calibration=args.calibration,
            registration_mode=args.registration_mode, registration_distance=args.registration_distance,
        )
        result = extract(opts)
    except (ExtractError, BagError, ValueError, OSError) as exc:
        fail(PROG, exc, 2)
    except KeyboardInterrupt:
        fail(PROG, "interrupted; rerun the same command to resume", 130)
    c = result.counts
    for note in result.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    for warning in result.warnings + extraction_warnings(c, args):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    found = (f"{c['pairs']} labelled frames from {c['label_messages']} labels" if "label_messages" in c
             else f"{c['pairs']} pairs")
    print(f"{PROG}: {found}, {c['rgb_messages']} RGB and {c['modal_messages']} modality messages; "
          f"kept {c['kept']}: {c['train']} train, {c['test']} test, {c['near_test']} near test (gap.txt); "
          f"wrote {result.written} files, {result.skipped} existed -> {result.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
