"""Selective-scan kernels and the scan-order ops around them."""
from .cross_scan import concat_merge, concat_scan, concat_scan_order, cross_merge, cross_scan, cross_scan_order
from .selective_scan import (
    ENV_VAR,
    BackendUnavailable,
    LowRankDelta,
    available_backends,
    backend_names,
    selective_scan,
    selective_scan_ordered,
    selective_scan_reference,
)

__all__ = [
    "ENV_VAR",
    "BackendUnavailable",
    "LowRankDelta",
    "available_backends",
    "backend_names",
    "selective_scan",
    "selective_scan_ordered",
    "selective_scan_reference",
    "concat_merge",
    "concat_scan",
    "concat_scan_order",
    "cross_merge",
    "cross_scan",
    "cross_scan_order",
]
