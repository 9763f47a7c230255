"""shared/reference/sigma beside the checkout: the published architecture's parity fixture and key maps."""
import os
from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "sigma"


def reference_file(name: str) -> Path:
    """A file of shared/reference/sigma; skipped where it is absent, but a failure in CI, which always has it."""
    path = REFERENCE_DIR / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference file {path} is missing: CI must have shared/ beside the clone")
        pytest.skip(f"reference file {path} is absent (shared/ belongs beside the checkout)")
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
