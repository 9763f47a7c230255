"""Scaling of the second modality (thermal or depth) from sensor units to the network's [0, 1] range.

One place for it: the Segmenter (inference), the datasets (training) and the
node all turn raw thermal/depth arrays into a float32 map with this class, and
checkpoints record it, so a model sees the same values in training and on the robot.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

MODALITIES = ("thermal", "depth")

# How datasets store integer depth: metres per stored value. "sunrgbd" is SUN RGB-D's raw depth PNG: uint16
# millimetres with the 16 bits rotated right by 3 (mm = (v >> 3) | (v << 13), as its toolbox reads it).
# A property of the files, not of the model: the robot's 16UC1 topics are millimetres (REP 118), so the
# dataset converts to metres and checkpoints never carry a unit.
DEPTH_UNITS: dict[str, float] = {"mm": 1e-3, "0.1mm": 1e-4, "0.2mm": 2e-4, "sunrgbd": 1e-3}
DEPTH_UNIT_ALIASES = {"ros": "mm", "redwood": "mm", "nyu": "0.1mm", "nyuv2": "0.1mm", "tum": "0.2mm"}


@dataclass(frozen=True)
class ModalityScaling:
    """How raw modality values map to [0, 1].

    thermal: ``range`` = (low, high) in raw units (counts, Kelvin, ...); values are
        clipped to it. None means the dtype's full range for integers (uint8: 0..255,
        uint16: 0..65535) and per-image min..max for floats.
    depth: uint16 is millimetres, floats are metres; ``max_range`` (metres) maps to 1,
        farther is clipped; 0, NaN and inf are invalid and become 0.
    """

    modality: str = "thermal"
    range: Optional[tuple[float, float]] = None
    max_range: float = 10.0

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.range is not None:
            lo, hi = self.range
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):  # inf: every value would scale to 0
                raise ValueError(f"thermal range must be (low, high), finite, with high > low, got {self.range}")
            object.__setattr__(self, "range", (float(lo), float(hi)))
        if not (math.isfinite(self.max_range) and self.max_range > 0):
            raise ValueError(f"depth max_range must be finite and > 0 metres, got {self.max_range}")

    def to_unit(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) or (H, W, C) raw array -> ((H, W) float32 in [0, 1], (H, W) bool valid mask).

        Multi-channel input (e.g. a 3-channel thermal PNG) uses its first channel.
        """
        raw = np.asarray(raw)
        if raw.ndim == 3:
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise ValueError(f"{self.modality} image must be (H, W) or (H, W, C), got shape {raw.shape}")
        if self.modality == "depth":
            return self._depth_to_unit(raw)
        return self._thermal_to_unit(raw)

    def _thermal_to_unit(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = raw.astype(np.float32)
        valid = np.isfinite(values)
        if self.range is not None:
            lo, hi = self.range
        elif np.issubdtype(raw.dtype, np.integer):
            lo, hi = 0.0, float(np.iinfo(raw.dtype).max)
        else:
            finite = values[valid]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            hi = hi if hi > lo else lo + 1.0
        unit = (np.where(valid, values, lo) - lo) / (hi - lo)
        return np.clip(unit, 0.0, 1.0).astype(np.float32), valid

    def _depth_to_unit(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        metres = raw.astype(np.float32)
        if np.issubdtype(raw.dtype, np.integer):
            metres = metres / 1000.0  # millimetres, the ROS 16UC1 convention
        valid = np.isfinite(metres) & (metres > 0)
        unit = np.where(valid, np.minimum(metres, self.max_range) / self.max_range, 0.0)
        return unit.astype(np.float32), valid

    def to_dict(self) -> dict:
        d = asdict(self)
        d["range"] = list(self.range) if self.range is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModalityScaling:
        """from to_dict()'s dict; ValueError when ``d`` is not one."""
        if not isinstance(d, dict):
            raise ValueError(f"modality scaling must be a dict like {cls().to_dict()}, got {type(d).__name__}")
        rng = d.get("range")
        return cls(
            modality=d.get("modality", "thermal"),
            range=tuple(rng) if rng is not None else None,
            max_range=float(d.get("max_range", 10.0)),
        )


def depth_units_key(units: str) -> str:
    """A depth unit name as users spell it ("TUM", "nyu", "0.1mm") -> its key in DEPTH_UNITS; ValueError listing
    the choices for an unknown one."""
    key = DEPTH_UNIT_ALIASES.get(str(units).lower(), str(units).lower())
    if key not in DEPTH_UNITS:
        raise ValueError(f"depth_units must be one of {', '.join([*DEPTH_UNITS, *DEPTH_UNIT_ALIASES])}, got {units!r}")
    return key


def depth_to_metres(raw: np.ndarray, units: str = "mm") -> np.ndarray:
    """(H, W) integer depth as a dataset stores it -> (H, W) float32 metres (0 stays 0: no return).

    units: "mm" (ROS 16UC1, Redwood), "0.1mm" (NYU Depth V2 PNGs, value / 10000 = m), "0.2mm" (TUM RGB-D,
    value / 5000 = m), "sunrgbd" (SUN RGB-D raw depth: millimetres with the bits rotated, mm = (v >> 3) |
    (v << 13) in 16 bits), or an alias ("ros", "redwood", "nyu", "tum").
    """
    units = depth_units_key(units)
    if units == "sunrgbd":
        v = raw.astype(np.uint16)
        raw = (v >> 3) | (v << 13)  # uint16 arithmetic: the top bits fall off, as in the toolbox
    return (raw.astype(np.float64) * DEPTH_UNITS[units]).astype(np.float32)


DEPTH_ENCODINGS_REP118 = ("16UC1", "32FC1")  # REP 118: depth images are 16UC1 millimetres or 32FC1 metres
NO_RETURN_FRACTION = 0.002  # depth cameras mark pixels without a return 0 or NaN; thermal cameras never do


def depth_stream_evidence(topic: str, encoding: str, raw: np.ndarray, camera_info_beside: bool,
                          named: str = "the topic name") -> list[str]:
    """Why a modality stream fed to a thermal model looks like a depth camera; empty when it does not.

    topic: the stream's topic (or file path, with ``named`` "the path"); encoding: its ROS encoding (a file's:
    16UC1 for uint16, 32FC1 for float32); raw: (H, W) or (H, W, C) as received. Used by the node and sigma-predict.

    The topic name saying ``depth`` is enough on its own; otherwise a REP 118 depth encoding must come with
    "no return" pixels (0 or NaN) or a CameraInfo topic beside the image topic. A thermal camera on 16UC1 or
    32FC1 (some are) gives neither, so it keeps the thermal-range advice.
    """
    name_says = "depth" in topic.lower()
    encoded = encoding in DEPTH_ENCODINGS_REP118
    values = raw[..., 0] if raw.ndim == 3 else raw
    with np.errstate(invalid="ignore"):
        no_return = float(np.count_nonzero(~(values > 0))) / max(values.size, 1)  # 0 and NaN
    reasons = []
    if name_says:
        reasons.append(f"{named} {topic} says depth")
    if encoded:
        reasons.append(f"its encoding {encoding} is a depth encoding (REP 118: 16UC1 millimetres, 32FC1 metres)")
    if encoded and no_return > NO_RETURN_FRACTION:
        reasons.append(f"{no_return:.0%} of its pixels are 0/NaN, a depth camera's 'no return'")
    if encoded and camera_info_beside:
        reasons.append("a CameraInfo topic is published beside it")
    return reasons if name_says or (encoded and len(reasons) > 1) else []
