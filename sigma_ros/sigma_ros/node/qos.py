"""QoS profiles of the node's topics, chosen by name so that users can override them by parameter."""
from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

INPUT_QOS_NAMES = ("sensor_data", "reliable")


def input_qos(name: str, depth: int = 5) -> QoSProfile:
    """QoS of the camera subscriptions.

    ``sensor_data``: best effort, keep last ``depth`` (what camera drivers publish;
    matches both best-effort and reliable publishers). ``reliable``: reliable, keep
    last ``depth`` (for reliable-only sources such as some bag players).
    """
    if name == "sensor_data":
        profile = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
        return profile
    if name == "reliable":
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
    raise ValueError(f"input.qos must be one of {INPUT_QOS_NAMES}, got {name!r}")


def output_qos(depth: int = 5) -> QoSProfile:
    """Per-frame outputs: reliable (matches best-effort and reliable subscribers), keep last ``depth``."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_qos() -> QoSProfile:
    """Published once (class map, label info): transient local so that late subscribers still get it."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
