"""Shared pieces of the replay tests: a tiny real checkpoint for the synthetic world, a small synthetic bag."""
from __future__ import annotations

from pathlib import Path

SIZE = (64, 96)  # (H, W): small images keep the 2-core CI machine responsive; a multiple of 32 for the network


def tiny_checkpoint(path: Path) -> Path:
    """The smallest Sigma (dims 32, one block per stage), randomly initialised with a fixed seed, for the
    synthetic world's classes, palette and thermal scaling."""
    import torch

    from sigma_core import SigmaConfig, build_sigma, save_checkpoint
    from sigma_core.data.synthetic import CLASSES, PALETTE, THERMAL_SCALING

    torch.manual_seed(0)
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=len(CLASSES))
    model = build_sigma(cfg).eval()
    return Path(save_checkpoint(path, model, cfg, class_names=CLASSES, palette=PALETTE, modality="thermal",
                                scaling=THERMAL_SCALING))


def synthetic_bag(path: Path, seconds: float, seed: int = 3, storage: str = "sqlite3"):
    """A synthetic RGB (30 Hz) + thermal (9 Hz, jittered) + label bag; returns sigma_core's BagRecord."""
    from sigma_core.data.synthetic import write_bag

    return write_bag(path, storage=storage, seconds=seconds, seed=seed, size=SIZE)
