"""Files shipped with sigma_core: the bundled demo model and its evaluation report.

``sigma_nano_synthetic.pt`` is a Sigma nano trained on the synthetic RGB-thermal
street world (sigma_core.data.synthetic) with sigma-train; the node uses it when
no checkpoint is given. Its report (``sigma_nano_synthetic_report.md``/``.json``)
gives mIoU with and without the thermal input. Reproduce it with
``tools/train_demo_model.sh`` (see sigma_core.engine.demo_model).
"""
from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent
DEMO_MODEL = "sigma_nano_synthetic.pt"
DEMO_REPORT = "sigma_nano_synthetic_report.json"


def demo_checkpoint() -> Path:
    """Path of the bundled demo model (our self-describing checkpoint, float16 weights, 8 classes, thermal)."""
    return ASSET_DIR / DEMO_MODEL


def demo_report() -> Path:
    """Path of the bundled demo model's evaluation report (JSON)."""
    return ASSET_DIR / DEMO_REPORT
