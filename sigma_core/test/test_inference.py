"""Segmenter: numpy images in, masks and confidences out, for thermal and depth, sizes, batches, precisions."""
import logging

import numpy as np
import pytest
import torch
from reference_data import parity_fixture, write_published_checkpoint

from sigma_core import ModalityScaling, Segmenter, SigmaConfig, build_sigma, inference, save_checkpoint
from sigma_core.checkpoints import DatasetNeededError
from sigma_core.inference import NonFiniteOutputError, cpu_bf16_is_native, images_to_inputs
from sigma_core.ops import available_backends

CLASSES = ["background", "car", "person", "bike"]


def _checkpoint(tmp_path, modality="thermal", input_size=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=len(CLASSES))
    model = build_sigma(cfg)
    path = tmp_path / f"{modality}_{input_size}.pt"
    return save_checkpoint(path, model, cfg, class_names=CLASSES, modality=modality, input_size=input_size, **kw)


def _images(height, width, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    thermal = rng.integers(20000, 40000, (height, width), dtype=np.uint16)
    return rgb, thermal


def _check_output(mask, confidence, size, num_classes=4):
    assert mask.shape == size and mask.dtype == np.uint8
    assert confidence.shape == size and confidence.dtype == np.float32
    assert mask.max() < num_classes
    assert np.all(confidence >= 1.0 / num_classes - 1e-6) and np.all(confidence <= 1.0 + 1e-6)


def test_uint8_rgb_with_uint16_thermal(tmp_path):
    seg = Segmenter.from_checkpoint(_checkpoint(tmp_path), device="cpu")
    rgb, thermal = _images(50, 70)
    mask, confidence = seg(rgb, thermal)
    _check_output(mask, confidence, (50, 70))
    assert seg.class_names == CLASSES and len(seg.palette) == 4 and seg.num_classes == 4
    assert seg.modality == "thermal" and seg.precision == "fp32" and seg.device == torch.device("cpu")
    assert seg.model_name == "sigma_custom_d32_1-1-1-1"
    assert seg.scan_backend in available_backends("cpu")


def test_segmenter_feeds_the_network_the_published_normalisation(tmp_path):
    seg = Segmenter.from_checkpoint(_checkpoint(tmp_path, scaling=ModalityScaling("thermal", range=(20000, 40000))))
    rgb, thermal = _images(40, 56)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    # Written out independently of sigma_core: /255 + ImageNet for RGB; range -> [0, 1], x3, ImageNet for thermal.
    rgb_in = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)
    unit = np.clip((thermal.astype(np.float64) - 20000) / 20000, 0, 1)
    x_in = ((unit[..., None] - mean) / std).transpose(2, 0, 1)
    with torch.inference_mode():
        logits = seg.model(torch.tensor(rgb_in[None], dtype=torch.float32),
                           torch.tensor(x_in[None], dtype=torch.float32))
    probs = torch.softmax(logits[0], 0)
    mask, confidence = seg(rgb, thermal)
    np.testing.assert_array_equal(mask, probs.argmax(0).numpy())
    np.testing.assert_allclose(confidence, probs.max(0).values.numpy(), atol=1e-5)


def test_float_depth_with_nans_and_a_different_size(tmp_path):
    path = _checkpoint(tmp_path, modality="depth", scaling=ModalityScaling("depth", max_range=8.0))
    seg = Segmenter.from_checkpoint(path)
    rgb, _ = _images(48, 64)
    depth = np.random.default_rng(1).uniform(0.3, 12.0, (24, 32)).astype(np.float32)
    depth[3:9, 5:20] = np.nan
    depth[0, :] = np.inf
    depth[10:12] = 0.0
    mask, confidence = seg(rgb, depth)
    _check_output(mask, confidence, (48, 64))
    assert np.isfinite(confidence).all()
    # The depth map is resized to the RGB size before it goes in: same result as feeding it upsampled (nearest).
    big = np.repeat(np.repeat(depth, 2, axis=0), 2, axis=1)
    mask_big, _ = seg(rgb, big)
    np.testing.assert_array_equal(mask, mask_big)


def test_fixed_input_size_resizes_in_and_back(tmp_path):
    seg = Segmenter.from_checkpoint(_checkpoint(tmp_path, input_size=(32, 48)))
    assert seg.input_size == (32, 48)
    rgb, thermal = _images(45, 61)
    _check_output(*seg(rgb, thermal), (45, 61))
    native = Segmenter.from_checkpoint(_checkpoint(tmp_path, input_size=(32, 48)), input_size=None)
    assert native.input_size is None
    _check_output(*native(rgb, thermal), (45, 61))


def test_predict_batch_matches_single_calls(tmp_path):
    seg = Segmenter.from_checkpoint(_checkpoint(tmp_path))
    pairs = [_images(40, 56, seed=1), _images(33, 47, seed=2), _images(40, 56, seed=3)]
    batch = seg.predict_batch([p[0] for p in pairs], [p[1] for p in pairs])
    assert len(batch) == 3
    for (rgb, thermal), (mask, confidence) in zip(pairs, batch):
        single_mask, single_conf = seg(rgb, thermal)
        np.testing.assert_array_equal(mask, single_mask)
        np.testing.assert_allclose(confidence, single_conf, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_agrees_with_float32(tmp_path, precision):
    if precision == "bf16" and not cpu_bf16_is_native():
        pytest.skip("this CPU has no native bf16 (the refusal is tested below)")
    path = _checkpoint(tmp_path, seed=3)
    rgb, thermal = _images(48, 64, seed=4)
    mask32, conf32 = Segmenter.from_checkpoint(path)(rgb, thermal)
    seg = Segmenter.from_checkpoint(path, precision=precision, allow_emulated_precision=True)  # numerics only
    assert seg.precision == precision
    mask, confidence = seg(rgb, thermal)
    _check_output(mask, confidence, (48, 64))
    assert (mask == mask32).mean() > 0.9
    assert np.abs(confidence - conf32).max() < 0.05


def test_bf16_on_a_cpu_without_native_bf16_is_refused_with_the_reason(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(inference.platform, "machine", lambda: "x86_64")
    assert not cpu_bf16_is_native()
    with pytest.raises(ValueError, match="'bf16' on this CPU .* would be emulated and slower than fp32.*'fp32'"):
        Segmenter.from_checkpoint(path, precision="bf16")
    assert Segmenter.from_checkpoint(path, precision="fp32").precision == "fp32"


def test_segmenter_reports_precision_and_scan_backend(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sigma_core.inference"):
        seg = Segmenter.from_checkpoint(_checkpoint(tmp_path))
    assert f"in fp32, scan backend {seg.scan_backend!r}" in caplog.text
    assert seg.scan_backend == available_backends("cpu")[0]
    # The warm-up runs the scan kernels once: numba's are compiled (or loaded from its cache) by then.
    seg.warmup((32, 32))
    if seg.scan_backend == "numba":
        from sigma_core.ops import scan_numba

        assert scan_numba._forward.overloads, "warm-up did not compile the numba forward kernel"


def test_warmup_scaling_override_and_input_errors(tmp_path):
    seg = Segmenter.from_checkpoint(_checkpoint(tmp_path), scan_backend="reference")
    assert seg.scan_backend == "reference"
    seg.warmup((32, 32))
    seg.scaling = ModalityScaling("thermal", range=(0.0, 100.0))  # what the node does with a parameter
    assert seg.scaling.range == (0.0, 100.0)
    rgb, thermal = _images(32, 32)
    with pytest.raises(ValueError, match="uint8 RGB"):
        seg(rgb.astype(np.float32), thermal)
    with pytest.raises(ValueError, match="unknown; choose one of fp32, fp16, bf16"):
        Segmenter.from_checkpoint(_checkpoint(tmp_path), precision="int8")


def test_images_to_inputs_replicates_modality():
    rgb, thermal = _images(20, 30)
    rgb_in, x_in = images_to_inputs(rgb, thermal, ModalityScaling("thermal"), size=(16, 24))
    assert rgb_in.shape == x_in.shape == (3, 16, 24) and rgb_in.dtype == x_in.dtype == np.float32
    # The single channel is repeated before normalisation: undoing the per-channel normalisation agrees.
    unit = x_in * np.array([0.229, 0.224, 0.225])[:, None, None] + np.array([0.485, 0.456, 0.406])[:, None, None]
    np.testing.assert_allclose(unit[0], unit[1], atol=1e-6)
    np.testing.assert_allclose(unit[1], unit[2], atol=1e-6)


def test_published_checkpoint_with_a_dataset(tmp_path):
    fixture = parity_fixture()
    path = write_published_checkpoint(tmp_path / "sigma_published.pth", fixture["state_dict"])
    seg = Segmenter.from_checkpoint(path, dataset="mfnet")
    assert seg.class_names[1] == "car" and seg.num_classes == 9 and seg.input_size == (480, 640)
    assert seg.model_name == "sigma_custom_d32_1-1-2-1" and seg.meta.notes
    torch.testing.assert_close(seg.logits(fixture["rgb"], fixture["x"]), fixture["logits"], atol=1e-5, rtol=0)
    rgb, thermal = _images(30, 40)
    _check_output(*seg(rgb, thermal), (30, 40), num_classes=9)
    with pytest.raises(DatasetNeededError, match="name the dataset it was trained on"):
        Segmenter.from_checkpoint(path)


def test_non_finite_logits_give_no_mask(tmp_path):
    seg = Segmenter.from_checkpoint(_checkpoint(tmp_path))
    rgb, thermal = _images(32, 40)
    with torch.no_grad():  # one poisoned weight, as a 16-bit overflow would leave it
        seg.model.decode_head.output.weight[2, 5] = float("inf")
    with pytest.raises(NonFiniteOutputError, match=r"\d+ of \d+ logits are NaN or infinite .*precision fp32"):
        seg(rgb, thermal)


def test_fp16_on_a_cpu_without_native_fp16_is_refused_with_the_reason(tmp_path, monkeypatch):
    """Issue 22: the README's `-p precision:=fp16` ran 6x slower than fp32 on a CPU, silently."""
    path = _checkpoint(tmp_path)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    with pytest.raises(ValueError, match="'fp16' on this CPU .* would be emulated and slower than fp32 .*"
                                         "use precision 'fp32' on a CPU, and fp16/bf16 on a GPU"):
        Segmenter.from_checkpoint(path, precision="fp16")
    # what the tests use to measure half-precision numerics on a CPU
    assert Segmenter.from_checkpoint(path, precision="fp16", allow_emulated_precision=True).precision == "fp16"


def test_inference_threads_asked_for_then_the_environment_then_all_cpus_but_one(monkeypatch):
    from sigma_core.model_io import inference_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert inference_threads(5) == (5, "asked for")
    assert inference_threads(0) == (3, "$OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert inference_threads(0) == (7, "automatic: 8 CPU(s) less one for decoding and ROS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert inference_threads(0)[0] == 1  # never none
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='many' is not a thread count"):
        inference_threads(0)
    with pytest.raises(ValueError, match=r"must be an integer 0\.\.1024"):
        inference_threads(-2)


@pytest.mark.parametrize("files,want", [
    ({"cpu.max": "150000 100000\n"}, (1, "automatic: 2 CPU(s) (the container's CPU quota) less one")),  # --cpus=1.5
    ({"cpu.max": "50000 100000\n"}, (1, "automatic: 1 CPU(s) (the container's CPU quota) less one")),
    ({"cpu.max": "max 100000\n"}, (7, "automatic: 8 CPU(s) less one")),  # no quota
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"},  # cgroup v1
     (1, "automatic: 2 CPU(s) (the container's CPU quota) less one")),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, (7, "automatic: 8 CPU(s) less one")),
    ({"cpu.max": "garbage"}, (7, "automatic: 8 CPU(s) less one")),
    ({}, (7, "automatic: 8 CPU(s) less one")),
])
def test_automatic_threads_follow_a_container_cpu_quota(monkeypatch, tmp_path, files, want):
    """docker --cpus=N limits CPU time, not the CPUs a process may run on: 8 threads on a 1.5-CPU quota would
    mostly wait for each other."""
    from sigma_core import model_io

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(model_io, "CGROUP_ROOT", tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    threads, why = model_io.inference_threads(0)
    assert (threads, why.split(" for ")[0]) == want


@pytest.mark.parametrize("value,want", [
    ("4,2", 4),  # OpenMP's list form (threads per nested level): the outermost level's count
    (" 2 ", 2), ("0", 0), ("", 0),
    ("99999", "above 1024"),  # libgomp would abort the process, unable to start them
    ("\u00b2", "is not a thread count"),  # str.isdigit() but no int()
    ("2.5", "is not a thread count"), ("-1", "is not a thread count"), ("4,", "is not a thread count"),
])
def test_omp_num_threads_values(monkeypatch, value, want):
    from sigma_core.model_io import threads_from_environment

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    if isinstance(want, int):
        assert threads_from_environment() == want
    else:
        with pytest.raises(ValueError, match=f"OMP_NUM_THREADS={value!r} {want}"):
            threads_from_environment()


@pytest.mark.parametrize("requested", [True, 2.0, 1025])
def test_a_thread_count_that_is_no_count_is_refused(requested):
    from sigma_core.model_io import inference_threads

    with pytest.raises(ValueError, match=r"a thread count must be an integer 0\.\.1024 \(0: automatic\)"):
        inference_threads(requested)


def test_load_segmenter_sets_torch_threads_only_when_asked(tmp_path, monkeypatch):
    from sigma_core.segmentation_step import load_segmenter

    path = _checkpoint(tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        load_segmenter(path)
        assert torch.get_num_threads() == 1
        load_segmenter(path, threads=2)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        load_segmenter(path, threads=0)  # automatic, as the node's parameter: here $OMP_NUM_THREADS
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="a thread count must be an integer"):  # not "cannot run checkpoint"
            load_segmenter(path, threads=-1)
    finally:
        torch.set_num_threads(before)
