"""`ros2 run sigma_core calibrate` / `sigma-calibrate`: an RGB + thermal/depth rig's geometry from a target recording.

Examples::

    sigma-calibrate calib_bag/ --rgb-topic /camera/color/image_raw --modal-topic /thermal/image_raw -o rig.yaml
    sigma-calibrate --rgb-dir calib/rgb --modal-dir calib/thermal --pattern circles --cols 4 --rows 11 \\
        --spacing 0.02 -o rig.yaml

Finds the target (chessboard inner corners, or an asymmetric circle grid) in both streams, pairs views by
stamp with the node's pairing (--slop, --queue-size, as sigma-extract), estimates each camera's intrinsics
and the pose between them (OpenCV calibrateCamera, stereoCalibrate), prints per-camera and stereo RMS
reprojection errors and how many frames had the target in each stream, and writes the calibration file
the node reads (registration.calibration_file) plus a PNG checker mosaic of the registered modality over
the RGB image (``<out>.png``), so a person can see whether edges line up. Too few usable views is one
line naming the counts per stream and what to try (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .errors import catch_ctrl_c, fail

PROG = "sigma-calibrate"
MAX_SPACING_M = 1.0  # a target's square (or circle step) larger than this is a spacing given in millimetres


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Calibrate an RGB + thermal/depth camera pair from a "
                                "recording of a calibration target seen by both.")
    p.add_argument("bag", nargs="?", help="rosbag2 folder (or its .db3/.mcap file) or ROS 1 .bag")
    p.add_argument("--rgb-topic", help="RGB Image/CompressedImage topic (with a bag)")
    p.add_argument("--modal-topic", help="thermal or depth Image/CompressedImage topic (with a bag)")
    p.add_argument("--rgb-info-topic", help="take the RGB camera's intrinsics from this CameraInfo topic of the bag "
                                            "(the first message) instead of estimating them")
    p.add_argument("--modal-info-topic", help="the same for the modality camera")
    p.add_argument("--rgb-dir", type=Path, help="instead of a bag: a folder of RGB images ...")
    p.add_argument("--modal-dir", type=Path, help="... and a folder of modality images named like them")
    p.add_argument("--pattern", choices=("chessboard", "circles"), default="chessboard")
    p.add_argument("--cols", type=int, default=9, help="inner corners (chessboard) or circles per row (default 9)")
    p.add_argument("--rows", type=int, default=6, help="inner corners or circles per column (default 6)")
    p.add_argument("--spacing", type=float, default=0.05,
                   help="square side (chessboard) or half the diagonal circle step (circles), metres")
    p.add_argument("--slop", type=float, default=0.05, help="max stamp difference of a pair, seconds (default 0.05)")
    p.add_argument("--queue-size", type=int, default=10, help="pairing queue per stream, as the node's (default 10)")
    p.add_argument("--modality", choices=("thermal", "depth"), default="thermal", help="what the second camera sees")
    p.add_argument("--free-k3", action="store_true", help="estimate the radial k3 too (needs many views)")
    p.add_argument("--max-stereo-rms", type=float, default=2.0,
                   help="refuse (write nothing) above this stereo RMS reprojection error, pixels (default 2): the "
                        "pairs did not show the target in one pose")
    p.add_argument("-o", "--out", type=Path, required=True, help="calibration file to write (YAML)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    from ..data.calibration import CalibrationError

    bag_given = args.bag is not None
    dirs_given = args.rgb_dir is not None or args.modal_dir is not None
    if bag_given == dirs_given:
        raise CalibrationError("give a bag (with --rgb-topic and --modal-topic) or --rgb-dir and --modal-dir")
    if bag_given and not (args.rgb_topic and args.modal_topic):
        raise CalibrationError("a bag needs --rgb-topic and --modal-topic")
    if dirs_given and (args.rgb_info_topic or args.modal_info_topic):
        raise CalibrationError("--rgb-info-topic and --modal-info-topic read CameraInfo from a bag")
    if dirs_given and not (args.rgb_dir and args.modal_dir):
        raise CalibrationError("give both --rgb-dir and --modal-dir")
    if args.cols < 2 or args.rows < 2 or not args.spacing > 0:
        raise CalibrationError(f"--cols and --rows must be >= 2 and --spacing > 0 metres, got {args.cols}, "
                               f"{args.rows}, {args.spacing}")
    if not args.max_stereo_rms > 0:
        raise CalibrationError(f"--max-stereo-rms must be > 0 pixels, got {args.max_stereo_rms}")
    if not args.slop > 0 or args.queue_size < 1:
        raise CalibrationError(f"--slop must be > 0 and --queue-size >= 1, got {args.slop}, {args.queue_size}")
    if args.spacing > MAX_SPACING_M:
        raise CalibrationError(f"--spacing {args.spacing:g} is in metres (a 25 mm square is 0.025): a target with "
                               f"{args.spacing:g} m squares would make the baseline {args.spacing:g} times too large")
    if args.out.suffix.lower() == ".png":
        raise CalibrationError(f"-o {args.out}: the calibration is YAML (and <out>.png the checker mosaic beside "
                               "it): give a name ending in .yaml")
    ours = args.out.is_file() and "sigma_calibration:" in args.out.read_text(errors="replace")
    if args.out.exists() and not ours:
        raise CalibrationError(f"-o {args.out} exists and is not a calibration this tool wrote; give a new file name")
    overlay = args.out.with_suffix(".png")
    if overlay.exists() and not ours:  # a rerun replaces its own mosaic; anything else there is someone's file
        raise CalibrationError(f"{overlay} exists (sigma-calibrate writes its checker mosaic there, beside -o "
                               f"{args.out}): give another -o name")


def bag_pairs(args: argparse.Namespace, counts: list) -> Iterator[tuple[str, object, object]]:
    """(RGB stamp ns as name, RGB array, modality array) of each pair the node's pairing makes, in bag order;
    ``counts`` receives the messages per stream."""
    from tqdm import tqdm

    from ..data.bags import (
        BagError,
        describe_topics,
        message_to_array,
        open_bag,
        read_messages,
        resolve_topic,
        stamp_ns,
    )
    from ..data.pairing import ApproximateTimePairer

    with open_bag(args.bag) as reader:
        topics = []
        for flag, topic in (("--rgb-topic", args.rgb_topic), ("--modal-topic", args.modal_topic)):
            found = resolve_topic(reader, topic)
            if found is None:
                raise BagError(f"{flag} {topic} is not in {args.bag}; its topics: {describe_topics(reader)}")
            topics.append(found)
        conns = [c for c in reader.connections if c.topic in topics]
        pairer = ApproximateTimePairer(queue_size=args.queue_size, slop=args.slop)
        total = sum(c.msgcount for c in conns)
        for conn, _, msg in tqdm(read_messages(reader, conns, args.bag), total=total, desc="reading", unit="msg",
                                 disable=args.quiet, leave=False):
            stream = topics.index(conn.topic)
            counts[stream] += 1
            pair = pairer.add(stream, stamp_ns(msg) * 1e-9, msg)
            if pair is not None:
                rgb, modal = pair.first, pair.second
                yield str(stamp_ns(rgb)), message_to_array(rgb)[0], message_to_array(modal)[0]


def bag_cameras(args: argparse.Namespace) -> list:
    """[RGB CameraModel or None, modality CameraModel or None] from the first CameraInfo of --rgb-info-topic and
    --modal-info-topic; CalibrationError naming the topic when absent or unusable."""
    from ..data.bags import describe_topics, open_bag, read_messages, resolve_topic
    from ..data.calibration import CalibrationError, CameraModel

    cameras: list = [None, None]
    wanted = [(i, flag, t) for i, (flag, t) in enumerate((("--rgb-info-topic", args.rgb_info_topic),
                                                          ("--modal-info-topic", args.modal_info_topic))) if t]
    if not wanted:
        return cameras
    with open_bag(args.bag) as reader:
        for index, flag, topic in wanted:
            found = resolve_topic(reader, topic)
            if found is None:
                raise CalibrationError(f"{flag} {topic} is not in {args.bag}; its topics: {describe_topics(reader)}")
            conns = [c for c in reader.connections if c.topic == found]
            for _, _, msg in read_messages(reader, conns, args.bag):
                fields = {name.lower(): getattr(msg, name) for name in ("k", "d", "K", "D") if hasattr(msg, name)}
                roi = getattr(msg, "roi", None)
                cameras[index] = CameraModel.from_camera_info(
                    msg.width, msg.height, fields["k"], fields["d"], msg.distortion_model, f"{flag} {topic}",
                    (getattr(msg, "binning_x", 0), getattr(msg, "binning_y", 0)),
                    (roi.x_offset, roi.y_offset, roi.width, roi.height) if roi is not None else (0, 0, 0, 0))
                break
            if cameras[index] is None:
                raise CalibrationError(f"{flag} {topic} has no messages in {args.bag}")
    return cameras


def folder_image_pairs(args: argparse.Namespace, counts: list) -> Iterator[tuple[str, object, object]]:
    import cv2

    from ..data.calibration import CalibrationError
    from ..data.dataset import read_image
    from ..data.errors import DataError
    from ..data.target_calibration import folder_pairs

    pairs, n = folder_pairs(args.rgb_dir, args.modal_dir)
    counts[:] = list(n)
    if max(n) > len(pairs):  # never silent about what is skipped
        print(f"{PROG}: skipped {n[0] - len(pairs)} of {n[0]} images in {args.rgb_dir} and {n[1] - len(pairs)} of "
              f"{n[1]} in {args.modal_dir}: no image of the same name in the other folder", file=sys.stderr)
    for name, rgb_path, modal_path in pairs:
        try:  # the dataset reader: sizes checked from the headers before decoding, errors naming the file
            rgb = read_image(rgb_path, cv2.IMREAD_COLOR)
            modal = read_image(modal_path)
        except DataError as exc:
            raise CalibrationError(str(exc)) from None
        yield name, cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB), modal


def main(argv: Optional[Sequence[str]] = None) -> int:
    catch_ctrl_c()
    args = build_parser().parse_args(argv)
    from ..data.bags import BagError
    from ..data.calibration import CalibrationError, save_calibration
    from ..data.modality import ModalityScaling
    from ..data.registration import Registration
    from ..data.target_calibration import TargetSpec, calibrate_rig, checker_overlay, detect_pairs

    try:
        _check_args(args)
        from ..files import atomic_write_image  # imports torch (2 s): after the checks, so a typo fails at once
        target = TargetSpec(args.pattern, args.cols, args.rows, args.spacing)
        given = bag_cameras(args) if args.bag else [None, None]  # before the long read: a wrong topic fails fast
        counts = [0, 0]
        pairs = bag_pairs(args, counts) if args.bag else folder_image_pairs(args, counts)
        kept: dict = {}

        def remember(stream):  # keep the images of the first pairs for the overlay
            for name, rgb, modal in stream:
                if len(kept) < 64:
                    kept[name] = (rgb, modal)
                yield name, rgb, modal

        found = detect_pairs(remember(pairs), target)
        found.frames = tuple(counts)
        source = str(args.bag or f"{args.rgb_dir} + {args.modal_dir}")
        for camera, size, flag in zip(given, (found.rgb_size, found.modal_size), ("--rgb-info-topic",
                                                                                 "--modal-info-topic")):
            if camera is not None and size is not None and camera.size != size:
                raise CalibrationError(f"{flag}: CameraInfo is for {camera.width}x{camera.height} images but the "
                                       f"images are {size[1]}x{size[0]}: give the CameraInfo topic of that camera")
        result = calibrate_rig(found, target, source, rgb_camera=given[0], modal_camera=given[1],
                               fix_k3=not args.free_k3, modality=args.modality)
        cal = result.calibration
        rms = result.rms_px
        if not rms["stereo"] <= args.max_stereo_rms:  # each camera fits its own views, the pose between them does not
            alone = ", ".join(f"{name} {rms[key]:.2f} px" for name, key in (("RGB", "rgb"), (args.modality, "modal"))
                              if rms[key] == rms[key])
            raise CalibrationError(
                f"stereo RMS reprojection error {rms['stereo']:.2f} px is above --max-stereo-rms "
                f"{args.max_stereo_rms:g}" + (f" (each camera alone: {alone})" if alone else "") + ": the two "
                "images of a pair do not show the target in one pose (a moving target or a clock offset with "
                "--slop too large, or folder images paired by the wrong names); nothing written: hold the target "
                "still in each pose and check the pairing")
        out_cal = type(cal)(cal.mode, str(args.out), cal.rgb, cal.modal, cal.rotation, cal.translation,
                            cal.homography, cal.rms_px)
        save_calibration(out_cal, args.out)
        overlay_path = args.out.with_suffix(".png")
        stereo_names = [n for n, r, m in found.pairs if r is not None and m is not None and n in kept]
        if stereo_names:
            rgb, modal = kept[stereo_names[len(stereo_names) // 2]]
            distance = float(sorted(result.distances_m)[len(result.distances_m) // 2]) if result.distances_m \
                else 5.0
            scaling = ModalityScaling(args.modality)
            registered = Registration("rig", out_cal, scaling, distance)(modal, rgb.shape[:2]).image
            atomic_write_image(overlay_path, checker_overlay(rgb, registered.astype("float32")))
    except (CalibrationError, BagError, ValueError, OSError) as exc:
        fail(PROG, exc, 2)
    except KeyboardInterrupt:
        fail(PROG, "interrupted", 130)
    v, rms = result.views, result.rms_px
    names = ("RGB", args.modality)
    print(f"{PROG}: target found in {v['rgb']} of {counts[0]} {names[0]} frames, {v['modal']} of {counts[1]} "
          f"{names[1]} frames, {v['pairs']} of {v['frames']} pairs"
          + (f" ({found.inverted} {names[1]} frames inverted: the target showed light on dark)"
             if found.inverted else ""))
    each = [f"{name} {rms[key]:.3f} px" if rms[key] == rms[key] else f"{name} intrinsics from CameraInfo"
            for name, key in zip(names, ("rgb", "modal"))]
    print(f"{PROG}: RMS reprojection error: {', '.join(each)}, stereo {rms['stereo']:.3f} px")
    t = cal.translation
    print(f"{PROG}: baseline {cal.baseline_m * 1000:.1f} mm (t_modal_rgb [{t[0]:.4f}, {t[1]:.4f}, {t[2]:.4f}] m); "
          f"target distance median {sorted(result.distances_m)[len(result.distances_m) // 2]:.2f} m")
    print(f"{PROG}: wrote {args.out}" + (f" and {overlay_path} (registered {names[1]} over RGB, checker mosaic)"
                                         if overlay_path.exists() else ""))
    print(f"{PROG}: use it: sigma_node --ros-args -p registration.mode:=rig -p registration.calibration_file:="
          f"{args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
