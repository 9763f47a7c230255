"""QoS profiles of the node's topics, chosen by name so that users can override them by parameter."""
from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from .parameters import INPUT_QOS_NAMES, OUTPUT_QOS_NAMES


def input_qos(name: str, depth: int = 5) -> QoSProfile:
    """QoS of the camera subscriptions.

    ``sensor_data``: best effort, keep last ``depth`` (what camera drivers publish;
    matches both best-effort and reliable publishers); ``best_effort`` is the same, by the name
    ``output.qos`` uses. ``reliable``: reliable, keep last ``depth`` (for reliable-only sources
    such as some bag players).
    """
    if name in ("sensor_data", "best_effort"):
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


def output_qos(name: str = "reliable", depth: int = 5) -> QoSProfile:
    """QoS of the per-frame outputs (masks, overlays, stats, points): keep last ``depth``, volatile.

    ``reliable`` matches reliable and best-effort subscribers; ``best_effort`` (what camera-like
    streams over Wi-Fi use: no retransmission of a stale mask) matches best-effort subscribers only.
    """
    reliability = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}.get(name)
    if reliability is None:
        raise ValueError(f"output.qos must be one of {OUTPUT_QOS_NAMES}, got {name!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=reliability,
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
