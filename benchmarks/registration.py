"""Per-frame cost of registering a second camera into the RGB view (sigma_core.data.registration), one thread.

    python benchmarks/registration.py                  # 640x480 both cameras, 200 repeats
    python benchmarks/registration.py --repeats 50 --rgb-size 720 1280 --modal-size 512 640

Times, per frame: the rig thermal warp (plane-induced homography with both lenses' distortion, a
precomputed cv2.remap table; uint16 input), depth reprojection (uint16 millimetres, a scene of
slanted planes and a box, pixel by pixel with a z-buffer) and, as the same-run baseline, today's
stretch (cv2.resize of the modality to the RGB size: bilinear for thermal, nearest for depth).
Prints min and median milliseconds and the ratio to the baseline; targets: thermal warp <= 2 ms,
depth reprojection <= 10 ms at 640x480 on one thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from sigma_core.data.calibration import Calibration, CameraModel  # noqa: E402
from sigma_core.data.modality import ModalityScaling  # noqa: E402
from sigma_core.data.registration import Registration  # noqa: E402


def camera(h: int, w: int, distortion: str, D: tuple) -> CameraModel:
    f = 0.8 * w
    return CameraModel(w, h, np.array([[f, 0, (w - 1) / 2 + 3.1], [0, f, (h - 1) / 2 - 2.4], [0, 0, 1.0]]),
                       distortion, D)


def scene_depth(h: int, w: int) -> np.ndarray:
    """uint16 millimetres: a floor-like slant, a nearer box and 3 % no-return pixels."""
    v, u = np.mgrid[0:h, 0:w]
    depth = 1500 + 2500 * (1 - v / h) + 300 * u / w
    depth[h // 4:h // 2, w // 3:w // 2] = 900
    depth[np.random.default_rng(0).random((h, w)) < 0.03] = 0
    return depth.astype(np.uint16)


def timed(fn, repeats: int) -> list[float]:
    fn()  # first call builds tables
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rgb-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--modal-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    (h, w), (hm, wm) = args.rgb_size, args.modal_size
    rgb = camera(h, w, "radtan", (-0.12, 0.03, 0.0005, -0.0003, 0.0))
    modal = camera(hm, wm, "equidistant", (0.02, -0.005, 0.001, 0.0))
    R = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0]
    cal = Calibration("rig", "benchmark rig", rgb, modal, R, np.array([0.06, 0.002, -0.001])).check()
    thermal = np.random.default_rng(1).integers(20000, 40000, (hm, wm)).astype(np.uint16)
    depth = scene_depth(hm, wm)
    warp = Registration("rig", cal, ModalityScaling("thermal"), distance_m=5.0)
    reproject = Registration("rig", cal, ModalityScaling("depth"))
    rows = [
        ("stretch thermal (baseline)", lambda: cv2.resize(thermal, (w, h), interpolation=cv2.INTER_LINEAR)),
        ("stretch depth (baseline)", lambda: cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)),
        ("rig thermal warp", lambda: warp(thermal, (h, w))),
        ("rig depth reprojection", lambda: reproject(depth, (h, w))),
    ]
    times = {name: [] for name, _ in rows}
    rounds = 5  # interleaved, so machine load hits all alike
    for _ in range(rounds):
        for name, fn in rows:
            times[name] += timed(fn, max(1, args.repeats // rounds))
    print(f"RGB {w}x{h}, modality {wm}x{hm}, one thread, {args.repeats} repeats; load {os.getloadavg()[0]:.2f}")
    base = {"thermal": statistics.median(times["stretch thermal (baseline)"]),
            "depth": statistics.median(times["stretch depth (baseline)"])}
    for name, _ in rows:
        med = statistics.median(times[name])
        kind = "depth" if "depth" in name else "thermal"
        print(f"  {name:<28} min {min(times[name]):7.3f} ms  median {med:7.3f} ms  x{med / base[kind]:.1f} "
              f"the {kind} stretch")
    print(f"  coverage: thermal {warp(thermal, (h, w)).coverage:.3f}, depth {reproject(depth, (h, w)).coverage:.3f}")


if __name__ == "__main__":
    main()
