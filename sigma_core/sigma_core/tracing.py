"""Whether the running forward is being recorded into a graph rather than just run: torch.compile/torch.export
(sigma-export's dynamo exporter) or torch.jit.trace (also torch.onnx.export(dynamo=False)).

Shortcuts that depend on a tensor's size (skip a same-size resize) must not be taken then: the recorded graph
would keep the shortcut for every other size it runs at (a trace at 32x32 then gave 32x32 logits for 34x34 input).
"""
from __future__ import annotations

import torch


def being_traced() -> bool:
    """True under torch.compile, torch.export or torch.jit.trace; False when the model just runs."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()
