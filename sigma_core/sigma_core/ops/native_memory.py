"""Whether native code may read tensors' memory as it is: the check both native kernels (scan, upsampling) share.

Those kernels take ``data_ptr()`` and the strides and write an output torch allocated, out of torch's sight: no
dispatch, no autograd. That is right only for plain CPU tensors whose memory holds their values (not a meta or
fake tensor, a zero tensor without storage, a lazily negated or conjugated view, a functorch wrapper, a tensor
carrying a forward-mode tangent), and while nothing records or transforms the ops (``make_fx``, a
TorchDispatchMode or TorchFunctionMode such as ``with torch.device("meta")``): a recorder would see only the empty
output, a tangent would be dropped, a meta "pointer" would crash the process. Elsewhere the caller takes torch's
own path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as forward_ad

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)  # no subclass with a dispatch of its own (FakeTensor, ...)
# torch's private mode-stack counters (torch 2.x); a torch without one has no such modes to detect
_DISPATCH_MODES = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_FUNCTION_MODES = getattr(torch._C, "_len_torch_function_stack", lambda: 0)
_FUNCTORCH = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", lambda t: False)


def nothing_recording() -> bool:
    """True while no TorchDispatchMode or TorchFunctionMode is active (``make_fx``, FakeTensorMode,
    ``with torch.device(...)``): the ops run as they are called, and nothing observes or rewrites them."""
    return _DISPATCH_MODES() == 0 and _FUNCTION_MODES() == 0


def readable_in_place(*tensors: Optional[torch.Tensor]) -> bool:
    """True where native code may read every one of ``tensors`` (None entries skipped) through its data pointer."""
    if not nothing_recording():
        return False
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN_TYPES or t.device.type != "cpu" or t.layout != torch.strided:
            return False
        if t.is_neg() or t.is_conj() or t._is_zerotensor() or _FUNCTORCH(t):
            return False
        if forward_ad.unpack_dual(t).tangent is not None:
            return False
    return True
