"""The live node: parameters, message conversion, pairing, input health, inference hand-off and outputs.

``python -m sigma_ros.node`` and the ``sigma_node`` console script run :func:`main`. The node module (and
with it rclpy) is imported only when asked for, so that ``sigma_ros.node.parameters`` and the other
ROS-free parts import without ROS.
"""
from typing import Any, Optional

__all__ = ["SigmaSegmentationNode", "main"]


def main(args: Optional[list[str]] = None) -> int:
    """``sigma_node``: stop signals are handled from the first instant, even while rclpy and torch import."""
    from .. import stop_signals

    stop_signals.install()
    try:  # a stop before anything started (rclpy and torch take seconds to import) is a quiet exit 0 too
        from .segmentation_node import main as node_main

        return node_main(args)
    except KeyboardInterrupt:
        return 0


def __getattr__(name: str) -> Any:
    if name == "SigmaSegmentationNode":
        from . import segmentation_node

        return getattr(segmentation_node, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
