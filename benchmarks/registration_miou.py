"""What registration buys: mIoU of the bundled demo model on a synthetic scene seen by an aligned and a separate rig.

    python benchmarks/registration_miou.py                          # RGB 1280x720, thermal 640x512 + lens, 6 cm
    python benchmarks/registration_miou.py --calibrate              # with sigma-calibrate's result, not the truth
    python benchmarks/registration_miou.py --size 120 160 --modal-size 96 120 --seconds 1   # quick

One moving synthetic street scene (sigma_core.data.synthetic), recorded twice with the same RGB frames and
labels: once by an aligned rig (the thermal camera shares the RGB camera's axis and image, as MFNet's) and
once by a separate rig (a thermal camera of ``--modal-size`` with radtan distortion and its own focal
length, ``--baseline`` metres to the right; sigma_core.data.synthetic_rig). Each bag goes through offline
replay (the node's per-frame step, ``sigma_ros.replay.replay_eval.replay_bag``) with the bundled demo
model: aligned (registration none), separate + calibration (rig), and separate stretched (none: what the
node did before registration). Prints the three mIoU.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sigma_core.data.calibration import load_calibration  # noqa: E402
from sigma_core.data.registration import Registration  # noqa: E402
from sigma_core.data.synthetic import TOPICS, write_bag  # noqa: E402
from sigma_core.data.synthetic_rig import separate_rig, write_target_bag  # noqa: E402


def measure(size, modal_size, baseline, seconds, seed, calibrate, root: Path) -> dict:
    from sigma_ros.replay.replay_eval import ReplayOptions, replay_bag
    from sigma_ros.segmentation_step import load_segmenter

    rig = separate_rig(tuple(size), tuple(modal_size), baseline)
    kwargs = dict(seconds=seconds, seed=seed, modality="thermal", rgb_hz=10.0, modal_hz=5.0)
    aligned = write_bag(root / "aligned", size=tuple(size), **kwargs)
    separate = write_bag(root / "separate", rig=rig, **kwargs)
    calibration = load_calibration(f"{separate.path}.rig.yaml")
    if calibrate:
        bag = write_target_bag(root / "target", rig, views=16, seed=seed)
        calibration = _calibrate(bag)
    seg = load_segmenter("", "cpu")
    results = {}
    for name, bag, registration in (
        ("aligned rig", aligned, None),
        ("separate rig, registered", separate, Registration("rig", calibration, seg.scaling)),
        ("separate rig, stretched", separate, None),
    ):
        start = time.perf_counter()
        out = replay_bag(ReplayOptions(bag.path, bag.rgb_topic, bag.modal_topic, label_topic=bag.label_topic,
                                       registration=registration), seg)
        s = out.summary
        cover = sum(s.modality_coverage) / len(s.modality_coverage)
        results[name] = (s.metrics.miou, s.frames_scored, cover, time.perf_counter() - start)
    return results


def _calibrate(bag: Path):
    from sigma_core.data.bags import message_to_array, open_bag
    from sigma_core.data.target_calibration import TargetSpec, calibrate_rig, detect_pairs

    streams: dict = {}
    with open_bag(bag) as reader:
        for conn, _, raw in reader.messages():
            streams.setdefault(conn.topic, []).append(message_to_array(reader.deserialize(raw, conn.msgtype))[0])
    pairs = [(str(i), a, b) for i, (a, b) in enumerate(zip(streams[TOPICS["rgb"]], streams[TOPICS["thermal"]]))]
    found = detect_pairs(iter(pairs), TargetSpec())
    found.frames = (len(pairs), len(pairs))
    result = calibrate_rig(found, TargetSpec(), str(bag))
    print(f"calibration: stereo RMS {result.rms_px['stereo']:.3f} px, baseline "
          f"{result.calibration.baseline_m * 1000:.1f} mm, {result.views}")
    return result.calibration


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"))
    p.add_argument("--modal-size", type=int, nargs=2, default=[512, 640], metavar=("H", "W"))
    p.add_argument("--baseline", type=float, default=0.06)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--calibrate", action="store_true", help="use sigma-calibrate's result on a target recording")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args.size, args.modal_size, args.baseline, args.seconds, args.seed, args.calibrate,
                          Path(tmp))
    print(f"RGB {args.size[1]}x{args.size[0]}, thermal {args.modal_size[1]}x{args.modal_size[0]} (radtan), "
          f"baseline {args.baseline * 100:.0f} cm; load {os.getloadavg()[0]:.2f}")
    for name, (miou, frames, cover, seconds) in results.items():
        print(f"  {name:<28} mIoU {100 * miou:5.1f} %  ({frames} labelled frames, thermal covers {cover:.1%} of "
              f"the RGB image, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
