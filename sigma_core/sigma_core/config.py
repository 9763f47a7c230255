"""SigmaConfig: the sizes of a Sigma network, validated, and serialisable into checkpoints.

Variants (stage widths C, 2C, 4C, 8C; parameters for 9 classes; FLOPs of one
forward at 480x640, batch 1 - dense ops counted by torch.utils.flop_counter, the
selective scans analytically as 9 FLOPs per state element and step, a
multiply-add = 2 FLOPs; latency: one CPU thread of our 2-core CI machine, shared,
"cpu" scan backend; reproduce with ``python benchmarks/model.py``):

=======  ==============  ===  ==============  ==========  ======  ============
variant  encoder depths  C    decoder depths  parameters  GFLOPs  latency
=======  ==============  ===  ==============  ==========  ======  ============
nano     1, 1, 2, 1      32   1, 1, 1         3.27 M      14.0    3.8-5.9 s
tiny     2, 2, 9, 2      96   4, 4, 4         48.29 M     205.8   27-31 s
small    2, 2, 27, 2     96   4, 4, 4         69.81 M     323.5
base     2, 2, 27, 2     128  4, 4, 4         121.41 M    542.3
=======  ==============  ===  ==============  ==========  ======  ============

(nano at 240x320: 3.5 GFLOPs, about 1 s.)

``tiny``, ``small`` and ``base`` are exactly the published models (their state
dicts match the published key names and shapes). ``nano`` is ours: the
published architecture with the smallest width the channel attention allows
(C >= 30, as it squeezes C // 30 channels), one block per stage in the
decoder, and two in the encoder's third stage; it exists for CPU-only robots
and for quick training experiments, and has no published weights.

A custom model leaves ``variant`` unset and gives ``depths`` and ``dims``;
everything else defaults to the published values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

# Sizes of each named variant; drop_path_rate: encoder stochastic depth (published values; nano: ours).
VARIANTS: dict[str, dict[str, Any]] = {
    "nano": {"depths": (1, 1, 2, 1), "dims": 32, "decoder_depths": (1, 1, 1), "drop_path_rate": 0.1},
    "tiny": {"depths": (2, 2, 9, 2), "dims": 96, "decoder_depths": (4, 4, 4), "drop_path_rate": 0.2},
    "small": {"depths": (2, 2, 27, 2), "dims": 96, "decoder_depths": (4, 4, 4), "drop_path_rate": 0.3},
    "base": {"depths": (2, 2, 27, 2), "dims": 128, "decoder_depths": (4, 4, 4), "drop_path_rate": 0.6},
}
# A custom model takes the published tiny sizes for what it does not set.
_CUSTOM_DEFAULTS: dict[str, Any] = dict(VARIANTS["tiny"])
_SIZE_FIELDS = ("depths", "dims", "decoder_depths")


@dataclass(frozen=True)
class SigmaConfig:
    """Sizes and options of a Sigma network.

    variant: "nano", "tiny", "small", "base", or None for a custom model (then
        ``depths``/``dims`` apply, with the published defaults for the rest).
    num_classes: output classes K; logits are (B, K, H, W).
    depths: VSS blocks in each of the 4 encoder stages.
    dims: width C of encoder stage 1 (stages are C, 2C, 4C, 8C) and of the decoder; >= 30.
    decoder_depths: CVSS blocks in the decoder's 3 stages (widths 4C, 2C, C); published (4, 4, 4).
    d_state, fusion_d_state, decoder_d_state: SSM state size N of encoder SS2D (16),
        of the fusion blocks (4) and of the decoder SS2D (4).
    ssm_ratio: d_inner / C of every Mamba block (2.0).
    drop_path_rate, decoder_drop_path_rate: stochastic depth during training
        (encoder default per variant; decoder 0.1). No effect in eval mode.
    scan_backend: selective-scan backend ("auto", "reference", "cpu", "triton",
        "mamba_ssm"); "auto" also honours $SIGMA_SCAN_BACKEND.
    """

    variant: Optional[str] = None
    num_classes: int = 9
    depths: Optional[tuple[int, ...]] = None
    dims: Optional[int] = None
    decoder_depths: Optional[tuple[int, ...]] = None
    d_state: int = 16
    fusion_d_state: int = 4
    decoder_d_state: int = 4
    ssm_ratio: float = 2.0
    drop_path_rate: Optional[float] = None
    decoder_drop_path_rate: float = 0.1
    scan_backend: str = "auto"

    def __post_init__(self):
        set_ = object.__setattr__
        if self.variant is not None and self.variant not in VARIANTS:
            raise ValueError(
                f"unknown Sigma variant {self.variant!r}; choose one of {sorted(VARIANTS)} or None (custom)"
            )
        defaults = VARIANTS[self.variant] if self.variant is not None else _CUSTOM_DEFAULTS
        for name in (*_SIZE_FIELDS, "drop_path_rate"):
            value = getattr(self, name)
            if value is None:
                set_(self, name, defaults[name])
            elif self.variant is not None and name in _SIZE_FIELDS:
                given = tuple(value) if isinstance(value, (list, tuple)) else value
                if given != defaults[name]:
                    raise ValueError(
                        f"SigmaConfig: variant {self.variant!r} has {name}={defaults[name]}, got {name}={value}; "
                        "leave variant=None for a custom model"
                    )
        set_(self, "depths", _int_tuple("depths", self.depths, 4))
        set_(self, "decoder_depths", _int_tuple("decoder_depths", self.decoder_depths, 3))
        for name in ("num_classes", "dims", "d_state", "fusion_d_state", "decoder_d_state"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SigmaConfig.{name} must be a positive int, got {value!r}")
        if self.dims < 30:
            # The decoder's channel attention squeezes C // 30 channels; below 30 that is zero.
            raise ValueError(f"SigmaConfig.dims must be >= 30 (the decoder's channel attention needs C // 30 >= 1), "
                             f"got {self.dims}")
        if not self.ssm_ratio > 0 or int(self.ssm_ratio * self.dims) < 16:
            raise ValueError(f"SigmaConfig.ssm_ratio must be > 0 with ssm_ratio * dims >= 16, got {self.ssm_ratio}")
        set_(self, "ssm_ratio", float(self.ssm_ratio))
        for name in ("drop_path_rate", "decoder_drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"SigmaConfig.{name} must be in [0, 1), got {value!r}")
            set_(self, name, float(value))
        from .ops.selective_scan import backend_names

        if self.scan_backend not in ("auto", *backend_names()):
            raise ValueError(
                f"SigmaConfig.scan_backend {self.scan_backend!r} is unknown; choose one of {['auto', *backend_names()]}"
            )

    @property
    def name(self) -> str:
        """Human-readable model name, e.g. "sigma_tiny" or "sigma_custom_d32_1-1-2-1"."""
        if self.variant is not None:
            return f"sigma_{self.variant}"
        return f"sigma_custom_d{self.dims}_{'-'.join(map(str, self.depths))}"

    @property
    def stage_dims(self) -> tuple[int, int, int, int]:
        """Widths of the 4 encoder stages: (C, 2C, 4C, 8C)."""
        c = self.dims
        return (c, 2 * c, 4 * c, 8 * c)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, not tuples) that from_dict turns back into an equal config."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SigmaConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SigmaConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kwargs)


def _int_tuple(name: str, value: Any, length: int) -> tuple[int, ...]:
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"SigmaConfig.{name} must be a sequence of {length} positive ints, got {value!r}") from None
    if len(out) != length or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ValueError(f"SigmaConfig.{name} must be {length} positive ints, got {value!r}")
    return out
