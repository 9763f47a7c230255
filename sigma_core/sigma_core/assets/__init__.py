"""Files shipped with sigma_core: the bundled demo models and their evaluation reports.

``sigma_nano_synthetic.pt`` (thermal) and ``sigma_nano_synthetic_depth.pt`` (depth) are Sigma nano models
trained on the synthetic street world (sigma_core.data.synthetic) with sigma-train; the node, the demo,
sigma-predict and sigma-evaluate use the one of the input's modality when no checkpoint is given. Their
reports (``*_report.md``/``.json``) give mIoU with and without the second modality. Reproduce them with
``tools/train_demo_model.sh [--modality depth]`` (see sigma_core.engine.demo_model).
"""
from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent
DEMO_MODELS = {"thermal": "sigma_nano_synthetic.pt", "depth": "sigma_nano_synthetic_depth.pt"}
DEMO_MODEL = DEMO_MODELS["thermal"]
DEMO_REPORT = "sigma_nano_synthetic_report.json"


def _modality(modality: str) -> str:
    if modality not in DEMO_MODELS:
        raise ValueError(f"no bundled demo model for modality {modality!r}: there are {', '.join(DEMO_MODELS)}")
    return modality


def demo_checkpoint(modality: str = "thermal") -> Path:
    """Path of the bundled demo model of ``modality`` (our self-describing checkpoint, float16 weights, 8 classes)."""
    return ASSET_DIR / DEMO_MODELS[_modality(modality)]


def demo_report(modality: str = "thermal") -> Path:
    """Path of the bundled demo model's evaluation report (JSON)."""
    return ASSET_DIR / DEMO_MODELS[_modality(modality)].replace(".pt", "_report.json")
