"""The live node: parameters, message conversion, pairing, input health, inference hand-off and outputs.

``python -m sigma_ros.node`` and the ``sigma_node`` console script run :func:`main`.
"""
from .segmentation_node import SigmaSegmentationNode, main

__all__ = ["SigmaSegmentationNode", "main"]
