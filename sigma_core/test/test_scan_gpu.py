"""Real-GPU checks of the CUDA scan backends (marked ``gpu``; skipped without CUDA).

- every CUDA backend against the float64 reference at the Sigma-T stage shapes (forward at all
  four stages, backward at the two shortest), and float16/bfloat16 agreement;
- the published-code parity fixture on the GPU with TF32 off, per backend, and the float16 /
  bfloat16 autocast accuracy on it (max logit difference, mask agreement), and on the bundled model
  over real and synthetic frames (issue 11's bounds);
- benchmarks/gpu.py end to end on one small stage.

Without CUDA only the last test here runs: the benchmark must refuse with a clear message.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from reference_data import reference_file

from sigma_core.ops.selective_scan import BackendUnavailable, load_backend, selective_scan_reference

ROOT = Path(__file__).resolve().parents[2]
CUDA_BACKENDS = ("triton", "mamba_ssm")
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scan_backend(name: str):
    try:
        return load_backend(name)
    except BackendUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(autouse=True)
def no_tf32():
    if not HAS_CUDA:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


_reference_cache: dict = {}


def stage_case(stage: int, dtype: torch.dtype = torch.float32, grad: bool = False):
    """Sigma-T stage inputs (benchmarks/gpu.py's) in ``dtype`` and the float64 reference output on them."""
    bench = load_benchmark()
    x = bench.scan_inputs(bench.stage_shape(stage, 1), dtype, torch.device("cuda"), grad=False)
    key = (stage, dtype, grad)
    if key not in _reference_cache:
        ref_in = {k: v.double().requires_grad_(grad) for k, v in x.items()}
        y_ref = selective_scan_reference(**ref_in, delta_softplus=True)
        grads = {}
        if grad:
            dy = torch.ones_like(y_ref)
            grads = dict(zip(ref_in, torch.autograd.grad(y_ref, list(ref_in.values()), dy)))
        _reference_cache.clear()  # stage 0 in float64 is large: keep one entry
        _reference_cache[key] = (y_ref.detach(), grads)
    return x, *_reference_cache[key]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_forward_matches_float64_reference_at_sigma_t_shapes(backend, stage):
    fn = scan_backend(backend)
    x, y_ref, _ = stage_case(stage)
    with torch.no_grad():
        y = fn(**x, delta_softplus=True)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < 1e-4


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_backward_matches_float64_reference_at_sigma_t_shapes(backend, stage):
    fn = scan_backend(backend)
    x, _, grads_ref = stage_case(stage, grad=True)
    x = {k: v.requires_grad_() for k, v in x.items()}
    y = fn(**x, delta_softplus=True)
    grads = dict(zip(x, torch.autograd.grad(y, list(x.values()), torch.ones_like(y))))
    for name, grad in grads.items():
        assert grad.shape == x[name].shape and grad.dtype == x[name].dtype, name
        assert rel_err(grad, grads_ref[name]) < 1e-3, name


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_half_precision_agrees_with_float32(backend, dtype, tol):
    """Stage 1 (L = 4800) in half precision: state and output in float32, so only input rounding shows."""
    fn = scan_backend(backend)
    x, y_ref, _ = stage_case(1, dtype)  # reference on the same rounded inputs
    with torch.no_grad():
        y = fn(**x, delta_softplus=True)
        y32 = fn(**{k: v.float() for k, v in x.items()}, delta_softplus=True)
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < tol
    assert rel_err(y, y32) < tol


@pytest.mark.gpu
@needs_cuda
def test_triton_gradients_in_half_precision_keep_input_dtypes():
    fn = scan_backend("triton")
    x, _, grads_ref = stage_case(3, torch.bfloat16, grad=True)
    x = {k: v.requires_grad_() for k, v in x.items()}
    y = fn(**x, delta_softplus=True)
    grads = dict(zip(x, torch.autograd.grad(y, list(x.values()), torch.ones_like(y))))
    for name, grad in grads.items():
        assert grad.dtype == x[name].dtype, name
        assert rel_err(grad, grads_ref[name]) < 3e-2, name


def parity_model(backend: str):
    path = reference_file("parity_small.pt")
    try:
        from sigma_core import SigmaConfig, build_sigma, load_weights
    except (ImportError, AttributeError) as err:
        pytest.skip(f"the Sigma model is not available: {err}")
    scan_backend(backend)
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    model = build_sigma(SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=9)).eval()
    load_weights(model, fixture["state_dict"])
    model = model.cuda()
    model.set_scan_backend(backend)
    return model, fixture


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ("reference", *CUDA_BACKENDS))
def test_parity_fixture_on_gpu_with_tf32_off(backend):
    model, fixture = parity_model(backend)
    rgb, other = fixture["rgb"].cuda(), fixture["x"].cuda()
    with torch.inference_mode():
        features = model.forward_features(rgb, other)
        logits = model(rgb, other)
    torch.testing.assert_close(logits.cpu(), fixture["logits"], atol=1e-5, rtol=0)
    for ours, theirs in zip(features, fixture["features"]):
        torch.testing.assert_close(ours.cpu(), theirs, atol=5e-5, rtol=0)


@pytest.mark.gpu
@needs_cuda
# The targets of issue 11 (measured on CPU autocast: fp16 1.2e-3 / 0.9988, bf16 1.0e-2 / 0.9938;
# logits span +-0.97): fp16 masks agree on >= 99.5 %, bf16 logits within 0.02.
@pytest.mark.parametrize("dtype, max_logit_diff, min_agreement", [(torch.float16, 1e-2, 0.995),
                                                                   (torch.bfloat16, 2e-2, 0.97)])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_parity_fixture_under_autocast(backend, dtype, max_logit_diff, min_agreement):
    model, fixture = parity_model(backend)
    rgb, other = fixture["rgb"].cuda(), fixture["x"].cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        logits = model(rgb, other).float().cpu()
    diff = (logits - fixture["logits"]).abs().max().item()
    agreement = (logits.argmax(1) == fixture["logits"].argmax(1)).float().mean().item()
    print(f"{backend} {dtype}: max logit diff {diff:.2e}, mask agreement {agreement:.4f}")
    assert torch.isfinite(logits).all()
    assert diff < max_logit_diff and agreement >= min_agreement


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_bundled_model_half_precision_on_gpu(backend, precision):
    """Issue 11's bound on CUDA: fp16/bf16 masks of the bundled model agree with fp32 on >= 99.5 % of the
    pixels of real and synthetic frames, every logit finite (NonFiniteOutputError otherwise)."""
    import numpy as np
    from reference_data import real_rgbt_frames, synthetic_rgbt_frames

    from sigma_core import Segmenter
    from sigma_core.assets import demo_checkpoint

    scan_backend(backend)
    frames = real_rgbt_frames() + synthetic_rgbt_frames()
    full = Segmenter.from_checkpoint(demo_checkpoint(), device="cuda", precision="fp32", scan_backend=backend)
    half = Segmenter.from_checkpoint(demo_checkpoint(), device="cuda", precision=precision, scan_backend=backend)
    equal = total = 0
    for name, rgb, modal in frames:
        mask32, _ = full(rgb, modal)
        mask, confidence = half(rgb, modal)
        assert np.isfinite(confidence).all(), name
        agreement = (mask == mask32).mean()
        print(f"{backend} {precision} {name}: {agreement:.4%} of mask pixels equal to fp32")
        equal, total = equal + int((mask == mask32).sum()), total + mask.size
    assert equal / total >= 0.995


@pytest.mark.gpu
@needs_cuda
def test_benchmark_runs_and_writes_json(tmp_path):
    bench = load_benchmark()
    out = tmp_path / "gpu.json"
    assert bench.main(["--stages", "3", "--precisions", "fp16", "--warmup", "1", "--iters", "2",
                       "--naive-iters", "1", "--no-model", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["gpu"]
    by_backend = {r["backend"]: r for r in report["results"]}
    assert set(by_backend) == {"naive", "triton", "mamba_ssm"}
    assert by_backend["naive"]["ms"] > 0 and by_backend["naive"]["peak_extra_mib"] >= 0
    assert by_backend["triton"]["speedup_vs_naive"] > 1
    assert by_backend["triton"]["max_abs_diff_vs_naive"] < 1e-1


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without CUDA")
def test_benchmark_refuses_clearly_without_cuda(tmp_path):
    bench = load_benchmark()
    with pytest.raises(SystemExit) as info:
        bench.main(["--out", str(tmp_path / "gpu.json")])
    assert "needs a CUDA GPU" in str(info.value.code)
    assert not (tmp_path / "gpu.json").exists()
