"""`ros2 run sigma_core synth` / `sigma-synth`: the synthetic RGB-thermal/depth world as a dataset folder or bags.

Examples::

    sigma-synth dataset data/synth --n 400 --night-fraction 0.5 --size 120 160
    sigma-synth bag bags/street --storage mcap --seconds 20 --night --rgb-format jpeg
    sigma-synth describe synth_classes.yaml        # classes, palette, scaling for `sigma-extract --classes`
    sigma-synth bag bags/rig --rig --size 720 1280 --modal-size 512 640 --baseline 0.06   # two cameras, truth beside
    sigma-synth target bags/calib --size 720 1280 --modal-size 512 640 --views 16         # a calibration recording
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import yaml

from ..files import atomic_write_text
from .errors import DefaultsHelpFormatter, fail

PROG = "sigma-synth"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Generate the deterministic synthetic street world.")
    sub = p.add_subparsers(dest="what", metavar="{dataset,bag,target,describe}")
    shows_defaults = {"formatter_class": DefaultsHelpFormatter}
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0, help="world seed (the same seed writes the same files)")
    common.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(120, 160), help="image size")
    common.add_argument("--modality", choices=("thermal", "depth"), default="thermal")

    d = sub.add_parser("dataset", parents=[common], **shows_defaults, help="independent scenes in the published layout")
    d.add_argument("out", help="dataset folder")
    d.add_argument("--n", type=int, default=200, help="number of images")
    d.add_argument("--night-fraction", type=float, default=0.5)
    d.add_argument("--test-fraction", type=float, default=0.25)

    b = sub.add_parser("bag", parents=[common], **shows_defaults, help="a recording of one moving scene")
    b.add_argument("out", help="rosbag2 folder, or .bag file with --storage ros1")
    b.add_argument("--storage", choices=("sqlite3", "mcap", "ros1"), default="sqlite3")
    b.add_argument("--seconds", type=float, default=10.0)
    b.add_argument("--night", action="store_true")
    b.add_argument("--rgb-hz", type=float, default=30.0)
    b.add_argument("--modal-hz", type=float, default=9.0)
    b.add_argument("--rgb-format", choices=("raw", "jpeg", "png"), default="raw")
    b.add_argument("--modal-format", choices=("raw", "png"), default="raw")
    b.add_argument("--no-labels", action="store_true", help="leave out the label topic")
    rig = argparse.ArgumentParser(add_help=False)
    rig.add_argument("--modal-size", type=int, nargs=2, metavar=("H", "W"), default=(512, 640),
                     help="with --rig / target: the modality camera's size (its own lens, radtan distortion)")
    rig.add_argument("--baseline", type=float, default=0.06, help="metres between the two cameras (to the right)")
    b.add_argument("--rig", action="store_true", help="the modality from a second camera beside the RGB one "
                   "(--modal-size, --baseline); its true calibration is written to <out>.rig.yaml")
    for action in rig._actions:
        b._add_action(action)
    tb = sub.add_parser("target", parents=[rig], help="a calibration-target recording of a two-camera rig")
    tb.add_argument("out", help="rosbag2 folder")
    tb.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(720, 1280), help="RGB image size")
    tb.add_argument("--views", type=int, default=16, help="target poses (default 16)")
    tb.add_argument("--pattern", choices=("chessboard", "circles"), default="chessboard")
    tb.add_argument("--seed", type=int, default=0, help="seed of the target poses and noise")
    tb.add_argument("--invisible-in-thermal", action="store_true",
                    help="the target at ambient temperature: never found in thermal")

    w = sub.add_parser("describe", **shows_defaults, help="write the world's classes, palette and scaling as YAML")
    w.add_argument("out", help="YAML file")
    w.add_argument("--modality", choices=("thermal", "depth"), default="thermal")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the first argument that cannot make what was asked, before anything is written."""
    from ..data.image_encoding import DEFAULT_MAX_PIXELS

    for flag in ("size", "modal_size"):
        size = getattr(args, flag, None)
        if size is not None and (min(size) < 1 or size[0] * size[1] > DEFAULT_MAX_PIXELS):
            raise ValueError(f"--{flag.replace('_', '-')} {size[0]} {size[1]}: each side must be at least 1 pixel and "
                             f"the image at most {DEFAULT_MAX_PIXELS:,} pixels (4096x4096, the decoders' limit)")
    for flag in ("seconds", "rgb_hz", "modal_hz"):
        value = getattr(args, flag, None)
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive number, got {value:g}")
    if getattr(args, "views", 1) < 1:
        raise ValueError(f"--views must be at least 1, got {args.views}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.what is None:
        parser.error("say what to write: dataset (scenes in the dataset layout), bag (a recording) or describe "
                     "(the classes YAML), e.g. sigma-synth dataset data/synth; sigma-synth <what> --help for options")
    from ..data import synthetic

    try:
        check_arguments(args)
        if args.what == "dataset":
            root = synthetic.write_dataset(args.out, n=args.n, seed=args.seed, night_fraction=args.night_fraction,
                                           size=tuple(args.size), modality=args.modality,
                                           test_fraction=args.test_fraction)
            print(f"{PROG}: wrote {args.n} {args.modality} samples to {root}")
        elif args.what == "target":
            from ..data.synthetic_rig import separate_rig, write_target_bag
            from ..data.target_calibration import TargetSpec

            rig = separate_rig(tuple(args.size), tuple(args.modal_size), args.baseline)
            target = TargetSpec() if args.pattern == "chessboard" else TargetSpec("circles", 4, 11, 0.02)
            path = write_target_bag(args.out, rig, target, views=args.views, seed=args.seed,
                                    thermal_visible=not args.invisible_in_thermal)
            print(f"{PROG}: wrote {args.views} target views to {path} (topics {synthetic.TOPICS['rgb']} "
                  f"{synthetic.TOPICS['thermal']}); truth: {path}.rig.yaml")
        elif args.what == "bag":
            rig = None
            if args.rig:
                from ..data.synthetic_rig import separate_rig

                rig = separate_rig(tuple(args.size), tuple(args.modal_size), args.baseline)
            rec = synthetic.write_bag(args.out, storage=args.storage, seconds=args.seconds, seed=args.seed,
                                      modality=args.modality, night=args.night, size=tuple(args.size),
                                      rgb_hz=args.rgb_hz, modal_hz=args.modal_hz, rgb_format=args.rgb_format,
                                      modal_format=args.modal_format, labels=not args.no_labels, rig=rig)
            topics = [t for t in (rec.rgb_topic, rec.modal_topic, rec.label_topic, rec.camera_info_topic) if t]
            print(f"{PROG}: wrote {len(rec.messages)} messages to {rec.path} ({args.storage}); topics: "
                  f"{' '.join(topics)}")
        else:
            text = yaml.safe_dump(synthetic.world_description(args.modality), sort_keys=False)
            out = Path(args.out)
            if out.exists() and not (out.is_file() and out.read_text(errors="replace") == text):
                raise ValueError(f"{out} exists and is not this description; give a new file name")
            atomic_write_text(out, text)
            print(f"{PROG}: wrote {args.out}")
    except (ValueError, OSError) as exc:
        fail(PROG, exc, 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
