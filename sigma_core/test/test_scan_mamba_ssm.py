"""The mamba-ssm backend wrapper: layout, dtypes and shapes it hands to ``selective_scan_fn``.

mamba-ssm cannot be imported without CUDA, so a stand-in ``selective_scan_interface`` is put into
``sys.modules``. Its ``selective_scan_fn`` asserts mamba-ssm's input contract and computes with
the float64 reference; the real kernel is compared with the reference in test_scan_gpu.py.
"""
from __future__ import annotations

import importlib
import logging
import sys
import types

import pytest
import torch

from sigma_core.ops.selective_scan import BackendUnavailable, selective_scan_reference

INTERFACE = "mamba_ssm.ops.selective_scan_interface"
MODULE = "sigma_core.ops.scan_mamba_ssm"
# the module, not the function of the same name that sigma_core.ops exports
registry = importlib.import_module("sigma_core.ops.selective_scan")


class StandInInterface(types.ModuleType):
    """Checks what mamba-ssm's CUDA kernel requires, then computes with the reference."""

    def __init__(self):
        super().__init__(INTERFACE)
        self.calls: list[dict] = []

    def selective_scan_fn(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        assert u.dtype in (torch.float32, torch.float16, torch.bfloat16)
        for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C)):
            assert t.stride(-1) == 1, f"{name} must have stride 1 along L"
            assert t.dtype == u.dtype, f"{name} must be in u's dtype"
        assert B.dim() == 4 and C.dim() == 4, "grouped B/C are (batch, G, N, L)"
        for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias)):
            assert t is None or (t.dtype == torch.float32 and t.is_contiguous()), name
        assert A.shape[1] <= 256 and z is None and return_last_state is False
        self.calls.append(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias))
        y = selective_scan_reference(u.double(), delta.double(), A.double(), B.double(), C.double(),
                                     None if D is None else D.double(),
                                     None if delta_bias is None else delta_bias.double(), delta_softplus)
        return y.to(u.dtype)


def fresh_import(monkeypatch):
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    module = importlib.import_module(MODULE)
    monkeypatch.setitem(sys.modules, MODULE, module)  # removed again when the test ends
    return module


@pytest.fixture
def stand_in(monkeypatch):
    fake = StandInInterface()
    monkeypatch.setitem(sys.modules, INTERFACE, fake)
    return fake


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registry caches that start empty and are thrown away after the test."""
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_unavailable", {})
    monkeypatch.setattr(registry, "_auto_choice_logged", set())
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)


def inputs(dtype=torch.float32, batch=2, groups=2, per_group=3, n_state=4, length=10):
    g = torch.Generator().manual_seed(0)
    dim = groups * per_group
    return dict(
        u=torch.randn(batch, dim, length, generator=g).to(dtype),
        delta=(torch.randn(batch, dim, length, generator=g) * 0.5).to(dtype),
        A=-(torch.rand(dim, n_state, generator=g) + 0.1),
        B=torch.randn(batch, groups, n_state, length, generator=g).to(dtype),
        C=torch.randn(batch, groups, n_state, length, generator=g).to(dtype),
        D=torch.randn(dim, generator=g),
        delta_bias=torch.randn(dim, generator=g) * 0.3,
    )


def test_passes_grouped_layout_and_matches_the_reference(monkeypatch, stand_in):
    module = fresh_import(monkeypatch)
    x = inputs()
    y = module.selective_scan_mamba_ssm(**x, delta_softplus=True)
    call = stand_in.calls[-1]
    assert call["B"].shape == x["B"].shape and call["C"].shape == x["C"].shape  # not expanded per channel
    expected = selective_scan_reference(**{k: v.double() for k, v in x.items()}, delta_softplus=True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected.float(), rtol=1e-6, atol=1e-6)


def test_non_contiguous_and_mixed_dtypes_are_brought_into_the_kernels_contract(monkeypatch, stand_in):
    module = fresh_import(monkeypatch)
    x = inputs(dtype=torch.float16)
    x["u"] = x["u"].transpose(1, 2).contiguous().transpose(1, 2)  # stride 1 along D, not L
    x["B"] = x["B"].float()  # B in float32 while u is float16
    x["A"] = x["A"].double()
    x["D"] = x["D"].half()
    assert x["u"].stride(-1) != 1
    y = module.selective_scan_mamba_ssm(**x, delta_softplus=True)  # the stand-in asserts the contract
    # The kernel writes y in its input dtype and y must stay float32 (selective_scan's contract), so every
    # input goes in as float32.
    assert y.dtype == torch.float32 and y.shape == x["u"].shape
    call = stand_in.calls[-1]
    assert all(call[k].dtype == torch.float32 for k in ("u", "delta", "B", "C", "A", "D"))


def test_optional_inputs_stay_absent_and_gradients_flow(monkeypatch, stand_in):
    module = fresh_import(monkeypatch)
    x = inputs()
    x["D"] = x["delta_bias"] = None
    u = x["u"].requires_grad_()
    y = module.selective_scan_mamba_ssm(**x)
    assert stand_in.calls[-1]["D"] is None and stand_in.calls[-1]["delta_bias"] is None
    y.sum().backward()
    assert u.grad is not None and u.grad.shape == u.shape and torch.isfinite(u.grad).all()


def test_rejects_what_the_kernel_cannot_take(monkeypatch, stand_in):
    module = fresh_import(monkeypatch)
    with pytest.raises(ValueError, match="backend='triton'"):
        module.selective_scan_mamba_ssm(**inputs(n_state=257, length=2))
    with pytest.raises(ValueError, match="float64"):
        module.selective_scan_mamba_ssm(**inputs(dtype=torch.float64))
    with pytest.raises(ValueError, match=r"B must be"):
        module.selective_scan_mamba_ssm(**{**inputs(), "B": torch.zeros(2, 2, 4, 9)})
    assert not stand_in.calls


@pytest.mark.parametrize("broken", ["missing", "no_function"])
def test_missing_or_broken_mamba_ssm_says_what_to_install(monkeypatch, broken):
    # None in sys.modules makes the import fail as a missing package does
    fake = None if broken == "missing" else types.ModuleType(INTERFACE)
    monkeypatch.setitem(sys.modules, INTERFACE, fake)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    with pytest.raises(BackendUnavailable, match="MAMBA_FORCE_BUILD=TRUE") as info:
        importlib.import_module(MODULE)
    assert "backend='triton'" in str(info.value)
    assert MODULE not in sys.modules


def test_auto_on_cuda_prefers_mamba_ssm_when_it_loads(isolated_registry, monkeypatch, stand_in):
    assert registry.resolve_backend("auto", "cuda") == "mamba_ssm"


def test_auto_on_cuda_falls_through_and_reports_once(isolated_registry, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, INTERFACE, None)
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        names = registry.available_backends("cuda")
        registry.available_backends("cuda")
    assert "mamba_ssm" not in names
    reports = [r for r in caplog.records if "mamba_ssm" in r.getMessage()]
    assert len(reports) == 1 and "MAMBA_FORCE_BUILD" in reports[0].getMessage()
    if importlib.util.find_spec("triton") is not None:
        assert registry.resolve_backend("auto", "cuda") == "triton"
    with pytest.raises(BackendUnavailable, match="pip install"):
        registry.load_backend("mamba_ssm")
