"""shared/ beside the checkout: the published architecture's parity fixture and key maps (shared/reference/sigma),
and real sensor frames, labels and bags published by others (shared/realdata, see its README)."""
import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE_DIR = SHARED_DIR / "reference" / "sigma"
REALDATA_DIR = SHARED_DIR / "realdata"


def reference_file(name: str) -> Path:
    """A file of shared/reference/sigma; skipped where it is absent, but a failure in CI, which always has it."""
    path = REFERENCE_DIR / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference file {path} is missing: CI must have shared/ beside the clone")
        pytest.skip(f"reference file {path} is absent (shared/ belongs beside the checkout)")
    return path


def realdata_file(name: str) -> Path:
    """A file of shared/realdata (e.g. "rgbt/mfnet/01234N.png"). A missing one fails the test, never skips it:
    these tests are the only check that real downloads load, and CI always has shared/ beside the clone."""
    path = REALDATA_DIR / name
    if not path.is_file():
        pytest.fail(f"real data file {path} is missing: shared/realdata must be beside the checkout (see its README)")
    return path


def parity_fixture() -> dict:
    """parity_small.pt: the published code's state dict, inputs, logits and features (see its README)."""
    import torch

    return torch.load(reference_file("parity_small.pt"), map_location="cpu", weights_only=True)


def write_published_checkpoint(path: Path, state_dict: dict) -> Path:
    """``state_dict`` saved as the published training engine does from DistributedDataParallel:
    under "model" with "module." prefixes, beside optimizer state, epoch and iteration."""
    import torch

    optimizer = {"state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 6e-5, "weight_decay": 0.01, "params": [0]}]}
    torch.save({"model": {f"module.{k}": v for k, v in state_dict.items()}, "optimizer": optimizer,
                "epoch": 500, "iteration": 50000}, path)
    return path


def real_rgbt_frames() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, (H, W, 3) uint8 RGB, (H, W) uint8 thermal)]: the MFNet night frame (RGB + thermal in one
    4-channel PNG) and the PST900 pair, from shared/realdata (a failure where they are missing)."""
    import cv2

    mfnet = cv2.imread(str(realdata_file("rgbt/mfnet/01234N.png")), cv2.IMREAD_UNCHANGED)
    pst_rgb = cv2.imread(str(realdata_file("rgbt/pst900/rgb.png")))
    pst_thermal = cv2.imread(str(realdata_file("rgbt/pst900/thermal_DERIVED.png")), cv2.IMREAD_UNCHANGED)
    return [("mfnet", cv2.cvtColor(mfnet[..., :3], cv2.COLOR_BGR2RGB), mfnet[..., 3]),
            ("pst900", cv2.cvtColor(pst_rgb, cv2.COLOR_BGR2RGB), pst_thermal)]


def synthetic_rgbt_frames(n: int = 4) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, (120, 160, 3) uint8 RGB, uint16 thermal)]: n synthetic street scenes, day and night alternating."""
    from sigma_core.data.synthetic import Scene

    frames = []
    for i in range(n):
        frame = Scene.random(100 + i, night=bool(i % 2)).render()
        frames.append((f"synthetic_{i}", frame.rgb, frame.thermal))
    return frames
