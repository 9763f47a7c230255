"""Sigma (Siamese Mamba) RGB-thermal/depth semantic segmentation. Imports no ROS.

Public API::

    from sigma_core import SigmaConfig, build_sigma, load_weights, save_checkpoint, load_checkpoint, Segmenter
    from sigma_core import load_model   # any checkpoint: ours, or a published Sigma .pth with dataset=...
"""
from importlib import import_module

__version__ = "0.1.0"

# Names resolve lazily so that `import sigma_core` stays cheap for tools that need one part.
_API = {
    "SigmaConfig": "sigma_core.config",
    "build_sigma": "sigma_core.models.sigma",
    "load_weights": "sigma_core.checkpoints",
    "save_checkpoint": "sigma_core.checkpoints",
    "load_checkpoint": "sigma_core.checkpoints",
    "load_model": "sigma_core.checkpoints",
    "Segmenter": "sigma_core.inference",
    "ModalityScaling": "sigma_core.data.modality",
    "ApproximateTimePairer": "sigma_core.data.pairing",
    "selective_scan": "sigma_core.ops",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'sigma_core' has no attribute {name!r}")
