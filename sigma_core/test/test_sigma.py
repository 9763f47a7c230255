"""The Sigma network: parity with the published code, published key maps, variants, training step, odd sizes."""
import json
import warnings

import pytest
import torch
from reference_data import reference_file

from sigma_core import SigmaConfig, build_sigma, load_weights
from sigma_core.models.sigma import Sigma
from sigma_core.ops.selective_scan import available_backends


@pytest.mark.parametrize("backend", ["reference", "cpu", "numba", "native"])
def test_parity_with_published_code(backend):
    if backend not in available_backends("cpu"):
        pytest.skip(f"scan backend {backend!r} is not available here")
    fixture = torch.load(reference_file("parity_small.pt"), map_location="cpu", weights_only=True)
    model = build_sigma(SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=9, scan_backend=backend)).eval()
    report = load_weights(model, fixture["state_dict"])
    assert not report.missing and not report.unexpected and len(report.loaded) == 538
    with torch.inference_mode():
        features = model.forward_features(fixture["rgb"], fixture["x"])
        logits = model(fixture["rgb"], fixture["x"])
    assert logits.shape == fixture["logits"].shape == (2, 9, 64, 96)
    torch.testing.assert_close(logits, fixture["logits"], atol=1e-5, rtol=0)
    assert len(features) == len(fixture["features"]) == 4
    for ours, theirs in zip(features, fixture["features"]):
        torch.testing.assert_close(ours, theirs, atol=5e-5, rtol=0)


def test_numba_backend_logits_and_gradients_match_the_chunked_cpu_backend():
    # The numba backend reads the scan directions by index (no cross_scan copies); "cpu" runs on the copies.
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, num_classes=5, decoder_depths=(1, 1, 1), drop_path_rate=0.0,
                      decoder_drop_path_rate=0.0)
    torch.manual_seed(0)
    model = build_sigma(cfg).train()
    rgb, x = torch.randn(2, 3, 36, 52), torch.randn(2, 3, 36, 52)  # odd stage sizes: 9x13, 5x7, 3x4, 2x2
    target = torch.randint(0, 5, (2, 36, 52))
    results = {}
    for backend in ("cpu", "numba"):
        model.set_scan_backend(backend)
        model.zero_grad()
        logits = model(rgb, x)
        torch.nn.functional.cross_entropy(logits, target).backward()
        results[backend] = logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (want, want_grads), (got, got_grads) = results["cpu"], results["numba"]
    torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item(), rtol=0)
    for name, grad in want_grads.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(got_grads[name], grad, atol=1e-4 * scale + 1e-12, rtol=0, msg=name)


def test_parity_is_sensitive_to_a_small_weight_change():
    # Guards the test above against passing vacuously (e.g. a model that ignores a block).
    fixture = torch.load(reference_file("parity_small.pt"), map_location="cpu", weights_only=True)
    model = build_sigma(SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=9)).eval()
    state = dict(fixture["state_dict"])
    key = "backbone.cross_mamba.1.op.CMA_ssm.x_proj_2.weight"
    state[key] = state[key] * 1.1  # X's projection, whose C feeds the RGB scan
    load_weights(model, state)
    with torch.inference_mode():
        logits = model(fixture["rgb"], fixture["x"])
    assert (logits - fixture["logits"]).abs().max() > 1e-5


@pytest.mark.parametrize(
    "variant,num_classes,reference",
    [("tiny", 9, "tiny"), ("small", 9, "small"), ("base", 9, "base"), ("tiny", 40, "tiny_nyu")],
)
def test_published_keys_shapes_and_parameter_counts(variant, num_classes, reference):
    ref = json.loads(reference_file(f"keys_sigma_{reference}.json").read_text())
    model = build_sigma(SigmaConfig(variant=variant, num_classes=num_classes), device="meta")
    ours = [(k, list(t.shape)) for k, t in model.state_dict().items()]
    assert ours == list(ref["shapes"].items())  # same keys, shapes and order
    assert sum(p.numel() for p in model.parameters()) == ref["total_params"]


def test_custom_config_forward_backward():
    torch.manual_seed(0)
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, num_classes=5, decoder_depths=(1, 1, 1),
                      drop_path_rate=0.0, decoder_drop_path_rate=0.0)  # deterministic, to compare losses
    model = build_sigma(cfg).train()
    rgb, x = torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48)
    target = torch.randint(0, 5, (2, 32, 48))
    logits = model(rgb, x)
    assert logits.shape == (2, 5, 32, 48)
    loss = torch.nn.functional.cross_entropy(logits, target)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # Every part of the network gets a gradient (nothing disconnected).
    for prefix in ("backbone.vssm.layers.3", "backbone.cross_mamba.0.op.CMA_ssm.A_log_2",
                   "backbone.channel_attn_mamba.2.op.fc2", "decode_head.layers_up.3", "decode_head.output"):
        assert any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in grads.items()), prefix
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    opt.step()
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(model(rgb, x), target) < loss


@pytest.mark.parametrize("size", [(100, 132), (37, 53), (17, 9)])
def test_odd_input_sizes(size):
    model = build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=32, num_classes=3, decoder_depths=(1, 1, 1))).eval()
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, *size), torch.randn(1, 3, *size))
    assert logits.shape == (1, 3, *size)
    assert torch.isfinite(logits).all()


def test_a_jit_trace_keeps_the_resize_to_the_input_for_other_sizes():
    """torch.jit.trace (and torch.onnx.export(dynamo=False)) records one run: traced at a size whose logits need no
    resize, the same-size shortcut must not be recorded, or 18x18 input gave 16x16 logits from the trace."""
    model = build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=32, num_classes=3, decoder_depths=(1, 1, 1))).eval()
    model.set_scan_backend("reference")  # traceable tensor ops; 18x18 has 16x16's feature sizes (same tables)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)), check_trace=False)
        rgb, x = torch.randn(1, 3, 18, 18), torch.randn(1, 3, 18, 18)
        logits = traced(rgb, x)
        assert logits.shape == (1, 3, 18, 18)
        torch.testing.assert_close(logits, model(rgb, x), atol=1e-5, rtol=1e-5)


def test_batch_items_are_independent():
    model = build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=32, num_classes=3, decoder_depths=(1, 1, 1))).eval()
    rgb, x = torch.randn(2, 3, 24, 40), torch.randn(2, 3, 24, 40)
    with torch.inference_mode():
        both = model(rgb, x)
        second = model(rgb[1:], x[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


def test_decoder_drop_path_rates_follow_the_published_spacing():
    model = build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_drop_path_rate=0.15), device="meta")
    rates = [[b.drop_path.rate for b in model.decode_head.layers_up[i].blocks] for i in (1, 2, 3)]
    assert rates[2] == pytest.approx([0.0, 0.01, 0.02, 0.03])  # linspace(0, 0.15, 16): the last stage starts at 0
    assert rates[0] == pytest.approx([0.08, 0.09, 0.10, 0.11])


def test_variants_and_nano():
    nano = build_sigma("nano")
    assert isinstance(nano, Sigma) and nano.config.name == "sigma_nano"
    assert 2_000_000 < sum(p.numel() for p in nano.parameters()) < 4_000_000
    assert SigmaConfig(variant="small").depths == (2, 2, 27, 2)
    assert SigmaConfig(variant="base").stage_dims == (128, 256, 512, 1024)
    assert SigmaConfig(depths=(1, 1, 2, 1), dims=32).decoder_depths == (4, 4, 4)  # published default


def test_config_validation_and_round_trip():
    cfg = SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=9, scan_backend="reference")
    assert SigmaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="variant 'tiny' has dims=96"):
        SigmaConfig(variant="tiny", dims=64)
    with pytest.raises(ValueError, match="unknown Sigma variant 'huge'"):
        SigmaConfig(variant="huge")
    with pytest.raises(ValueError, match="depths must be 4 positive ints"):
        SigmaConfig(depths=(1, 2, 3))
    with pytest.raises(ValueError, match="dims must be >= 30"):
        SigmaConfig(dims=16)
    with pytest.raises(ValueError, match="scan_backend 'cuda_magic'"):
        SigmaConfig(scan_backend="cuda_magic")
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        SigmaConfig.from_dict({"colour": 1})


def test_input_checks_name_the_problem():
    model = build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1)))
    with pytest.raises(ValueError, match="repeat a 1-channel modality"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))


def test_scan_backend_is_routed_to_every_scan():
    model = build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1)))
    model.set_scan_backend("reference")
    scanning = [m for m in model.modules() if hasattr(m, "scan_backend") and m is not model]
    assert len(scanning) == 4 + 4 + 4 + 3  # encoder SS2D, CroMB, ConMB, decoder SS2D
    assert {m.scan_backend for m in scanning} == {"reference"} and model.config.scan_backend == "reference"


def test_direction_blocks_project_each_direction_with_its_own_weights():
    from sigma_core.ops.selective_scan import direction_blocks

    g = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)  # K = 4 directions, (out 5, in 3) each
    x = torch.randn(2, 7, 4 * 3, generator=g, dtype=torch.float64)  # the directions' inputs side by side
    got = x @ direction_blocks(weights)
    want = torch.cat([x[..., 3 * k:3 * k + 3] @ weights[k].T for k in range(4)], dim=-1)
    assert got.shape == (2, 7, 4 * 5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
