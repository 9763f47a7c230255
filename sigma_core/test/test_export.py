"""sigma-export and the ONNX runtime path: the ONNX scan against the reference, exported models against torch,
and the one-line errors of files that cannot run."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from reference_data import parity_fixture, synthetic_rgbt_frames, write_published_checkpoint

from sigma_core import Segmenter
from sigma_core.assets import demo_checkpoint
from sigma_core.checkpoints import load_model
from sigma_core.export import export_onnx
from sigma_core.onnx_runtime import KEY_PREFIX, REQUIRED_KEYS, OnnxModelError, OnnxSegmenter
from sigma_core.ops import scan_onnx
from sigma_core.ops.selective_scan import selective_scan_reference

ort = pytest.importorskip("onnxruntime")


def run_recurrence(u, delta, A, B, C, D, delta_bias, softplus=True, steps=scan_onnx.STEPS) -> np.ndarray:
    """scan_onnx.recurrence_nodes alone as an ONNX model, run by ONNX Runtime (one thread)."""
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"{n}{i}" for i in range(rank)])
              for n, rank in zip(names, (3, 3, 2, 4, 4, 1, 1))]
    nodes = scan_onnx.recurrence_nodes("s_", *names, "y", softplus=softplus, steps=steps)
    graph = helper.make_graph(nodes, "scan", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "d", "l"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(names, (u, delta, A, B, C, D, delta_bias))})[0]


def scan_inputs(batch, dim, length, n, groups, seed=0, delta_scale=1.0, a_scale=1.0):
    """u, delta (before bias and softplus), A, B, C, D, delta_bias as the model passes them."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = (torch.randn(batch, dim, length, generator=g) - 2) * delta_scale
    A = -torch.exp(torch.randn(dim, n, generator=g)) * a_scale
    B, C = (torch.randn(batch, groups, n, length, generator=g) for _ in range(2))
    D, delta_bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g) * 0.5
    return u, delta, A, B, C, D, delta_bias


def check_against_reference(inputs, softplus: bool, steps: int = scan_onnx.STEPS) -> None:
    """The ONNX nodes and the eager torch op equal the float64 reference within 1e-4 relative, and are finite."""
    expected = selective_scan_reference(*(t.double() for t in inputs), delta_softplus=softplus).numpy()
    scale = np.abs(expected).max()
    got = run_recurrence(*inputs, softplus=softplus, steps=steps)
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() / scale < 1e-4
    eager = scan_onnx.scan_recurrence(*inputs, softplus).numpy()
    assert np.abs(eager - expected).max() / scale < 1e-4


@pytest.mark.parametrize("batch,dim,length,n,groups", [
    (1, 4, 1, 2, 1), (2, 8, 15, 4, 2), (1, 8, 16, 4, 4), (2, 6, 37, 3, 2),
    (1, 768, 300, 16, 4),  # Sigma-T's encoder scan (4 directions x 192 channels, N 16), stage-4 length
])
def test_onnx_scan_matches_reference(batch, dim, length, n, groups):
    """The chunked ONNX Scan, delta bias, softplus and D skip included (lengths below, at and across the chunk
    size), equals the float64 reference within 1e-4 relative; so does the torch op it replaces while tracing."""
    check_against_reference(scan_inputs(batch, dim, length, n, groups), softplus=True)


def test_onnx_scan_without_softplus():
    u, delta, A, B, C, D, delta_bias = scan_inputs(2, 6, 37, 3, 2)
    check_against_reference((u, delta.abs(), A, B, C, D, delta_bias.abs()), softplus=False)


def test_onnx_scan_extreme_decay_stays_finite():
    """delta up to ~1e4 before softplus (exp of it overflows float32) and delta * A down to -1e8 (a state
    forgotten at once): no overflow, no NaN, still the reference; in Scan iterations of 4 and 8 steps (steps_for)."""
    for steps in (4, 8):
        check_against_reference(scan_inputs(1, 8, 70, 4, 2, delta_scale=1e3, a_scale=1e4), softplus=True, steps=steps)


def map_scan_inputs(height, width, batch, dim, n, directions, seed=0):
    """u (H, W, b, D), delta (H, W, b, K, D), A (K*D, N), B, C (H, W, b, K, N), D, delta_bias (K*D,)."""
    g = torch.Generator().manual_seed(seed)
    k = directions
    u = torch.randn(height, width, batch, dim, generator=g)
    delta = torch.randn(height, width, batch, k, dim, generator=g) - 2
    A = -torch.exp(torch.randn(k * dim, n, generator=g))
    B, C = (torch.randn(height, width, batch, k, n, generator=g) for _ in range(2))
    return u, delta, A, B, C, torch.randn(k * dim, generator=g), torch.randn(k * dim, generator=g) * 0.5


def map_scan_reference(u, delta, A, B, C, D, delta_bias, directions) -> np.ndarray:
    """float64 through the tensor layouts the torch model uses (cross_scan / concat_scan, their merges)."""
    from sigma_core.ops.cross_scan import concat_merge, concat_scan, cross_merge, cross_scan

    height, width, batch, dim = u.shape
    u, delta, A, B, C, D, delta_bias = (t.double() for t in (u, delta, A, B, C, D, delta_bias))
    to_map = lambda t: t.permute(2, 3, 4, 0, 1)  # (H, W, b, K, X) -> (b, K, X, H, W)  # noqa: E731
    if directions == 4:
        xs = cross_scan(u.permute(2, 3, 0, 1))  # (b, 4, D, L)
        flat = lambda t: to_map(t).flatten(3)  # noqa: E731   direction k's own values, row-major
        deltas, bs, cs = (cross_scan(flat(t).flatten(1, 2).unflatten(-1, (height, width)))
                          .unflatten(2, (4, -1))[:, torch.arange(4), torch.arange(4)] for t in (delta, B, C))
    else:
        assert height == 1 and width % 2 == 0
        half = width // 2
        x = u.permute(2, 3, 0, 1)
        xs = concat_scan(x[..., :half], x[..., half:])
        seq = lambda t: to_map(t).flatten(3)  # noqa: E731   (b, 2, X, L)
        deltas, bs, cs = (torch.stack([seq(t)[:, 0], seq(t)[:, 1].flip(-1)], dim=1) for t in (delta, B, C))
    ys = selective_scan_reference(xs.flatten(1, 2), deltas.flatten(1, 2), A, bs, cs, D, delta_bias,
                                  delta_softplus=True).unflatten(1, (directions, dim))
    if directions == 4:
        y = cross_merge(ys, height, width)  # (b, D, L)
    else:
        y = torch.cat(concat_merge(ys), dim=-1)
    return y.permute(2, 0, 1).reshape(height, width, batch, dim).numpy()


def run_map_recurrence(inputs, directions, steps=scan_onnx.STEPS) -> np.ndarray:
    """scan_onnx.map_recurrence_nodes alone as an ONNX model, run by ONNX Runtime (one thread)."""
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"{n}{i}" for i in range(t.dim())])
                    for n, t in zip(names, inputs)]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["h", "w", "b", "d"])
    graph = helper.make_graph(scan_onnx.map_recurrence_nodes("s_", *names, "y", directions=directions, steps=steps),
                              "scan",
                              graph_inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]


@pytest.mark.parametrize("height,width,batch,directions,steps", [
    (1, 1, 1, 4, 8), (3, 5, 2, 4, 8), (4, 4, 1, 4, 8), (7, 9, 2, 4, 8), (1, 2, 1, 2, 8), (1, 26, 2, 2, 8),
    (1, 32, 1, 2, 8), (7, 9, 2, 4, 4), (1, 26, 2, 2, 4),
])
def test_onnx_map_scan_matches_the_cross_and_concat_layouts(height, width, batch, directions, steps):
    """The direction sequences gathered in the file (cross scan K = 4, concatenated sequence both ways K = 2;
    lengths below, at and across the chunk size of 8 or 4 steps, non-square maps, batch 2) and merged back onto
    the positions equal the float64 reference through cross_scan / concat_scan and their merges, within 1e-4
    relative; so does the torch op traced in their place."""
    inputs = map_scan_inputs(height, width, batch, 6, 3, directions)
    expected = map_scan_reference(*inputs, directions)
    scale = np.abs(expected).max()
    got = run_map_recurrence(inputs, directions, steps)
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert np.abs(got - expected).max() / scale < 1e-4
    eager = scan_onnx.scan_map(*inputs, True, directions, steps).numpy()
    assert np.abs(eager - expected).max() / scale < 1e-4


def test_export_softplus_equals_torch_everywhere():
    """The five-op softplus of the file against torch's (threshold 20), from -1e4 to 1e4, around 20 and 0."""
    x = torch.cat([torch.linspace(-1e4, 1e4, 20001), torch.linspace(-30, 30, 6001), torch.tensor([20.0, 88.7, 89.0])])
    got, want = scan_onnx.softplus(x), torch.nn.functional.softplus(x.double())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=2e-7, atol=1e-7)


def test_fp16_weights_reaching_matmuls_through_layout_ops_are_stored_fp16():
    """A Linear's Transpose, the scans' x_proj Reshape + Transpose and the dt projections' block_diag (Split,
    Concat with Expand-ed zeros) between a weight and its MatMul: matmuls_to_fp16 stores those weights float16
    (the float32 copies and their chains are gone), a weight also read elsewhere keeps its float32 copy, and the
    result equals the float32 graph within float16 rounding. (The 12 map scans' weights stayed float32: the
    bundled fp16 file was 13.4 MB for 13 MB of float32 weights.)"""
    from onnx import numpy_helper

    from sigma_core.export import matmuls_to_fp16

    g = np.random.default_rng(0)
    weights = {"x_proj": g.standard_normal((2, 6, 4)), "dt": g.standard_normal((2, 3, 4)),
               "linear": g.standard_normal((5, 4)), "shared": g.standard_normal((4, 4))}
    ints = {"flat": [12, 4], "split": [1, 1], "zero_shape": [3, 4], "axis0": [0]}
    nodes = [
        helper.make_node("Reshape", ["x_proj", "flat"], ["x_proj_2d"]),
        helper.make_node("Transpose", ["x_proj_2d"], ["x_proj_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "x_proj_t"], ["projected"]),  # (b, 4) x (4, 12)
        helper.make_node("Split", ["dt", "split"], ["dt0", "dt1"], axis=0),
        helper.make_node("Squeeze", ["dt0", "axis0"], ["dt0_2d"]),
        helper.make_node("Squeeze", ["dt1", "axis0"], ["dt1_2d"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(1, np.float32), "z")),
        helper.make_node("Expand", ["zero", "zero_shape"], ["zeros"]),
        helper.make_node("Concat", ["dt0_2d", "zeros"], ["top"], axis=1),
        helper.make_node("Concat", ["zeros", "dt1_2d"], ["bottom"], axis=1),
        helper.make_node("Concat", ["top", "bottom"], ["block_diag"], axis=0),  # (6, 8)
        helper.make_node("MatMul", ["projected_6", "block_diag"], ["dts"]),
        helper.make_node("Transpose", ["linear"], ["linear_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "linear_t"], ["out"]),
        helper.make_node("MatMul", ["x", "shared"], ["shared_out"]),
        helper.make_node("Add", ["shared", "shared"], ["shared_elsewhere"]),
    ]
    nodes.insert(3, helper.make_node("Slice", ["projected", "starts", "ends", "axis1"], ["projected_6"]))
    ints.update(starts=[0], ends=[6], axis1=[1])
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None]) for n in ("dts", "out", "shared_out",
                                                                             "shared_elsewhere")],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
        + [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in ints.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = {"x": g.standard_normal((3, 4)).astype(np.float32)}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)

    assert matmuls_to_fp16(model) == 4
    onnx.checker.check_model(model)
    dtypes = {i.name: i.data_type for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT,
                                                                                       TensorProto.FLOAT16)}
    assert dtypes == {"x_proj_fp16": TensorProto.FLOAT16, "dt_fp16": TensorProto.FLOAT16,
                      "linear_fp16": TensorProto.FLOAT16, "shared_fp16": TensorProto.FLOAT16,
                      "shared": TensorProto.FLOAT}
    assert not {"x_proj_t", "block_diag", "linear_t"} & {o for n in model.graph.node for o in n.output}
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)
    for want, have in zip(expected, got):
        assert np.abs(have - want).max() <= 5e-3 * np.abs(want).max()


def write_onnx(path: Path, props: dict[str, str], height=None, width=None) -> Path:
    """A small ONNX model with sigma's input/output names (logits = rgb + modal, 3 classes) and given metadata."""
    shape = [1, 3, height or "H", width or "W"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["rgb", "modal"], ["logits"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("rgb", "modal")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def sigma_props() -> dict[str, str]:
    values = {"format": '"sigma-onnx/1"', "model": '"toy"', "classes": '["a", "b", "c"]',
              "palette": "[[0, 0, 0], [1, 1, 1], [2, 2, 2]]", "modality": '{"modality": "thermal"}',
              "normalization": '{"mean": [0, 0, 0], "std": [1, 1, 1]}', "input_size": "null", "precision": '"fp32"',
              "source_checkpoint": '"x.pt"', "sigma_core_version": '"0"'}
    assert set(values) == set(REQUIRED_KEYS)
    return {KEY_PREFIX + k: v for k, v in values.items()}


def test_the_metadata_written_is_what_the_runtime_and_the_scan_kernel_read():
    """write_metadata's sigma.* values read back by onnx_runtime.read_metadata, and its scan list by onnx_scan_ops
    (which refuses an empty one: write_metadata has no default for it any more)."""
    from sigma_core.export import write_metadata
    from sigma_core.onnx_runtime import read_metadata
    from sigma_core.onnx_scan_ops import SITES_KEY, _parse_sites

    _, meta = load_model(demo_checkpoint())
    sites = [{"prefix": "sigma_scan0_", "op": "ScanMap", "output": "y", "softplus": 1, "directions": 4}]
    proto = onnx.ModelProto()
    write_metadata(proto, meta, "demo.pt", "fp32", sites)
    props = {p.key: p.value for p in proto.metadata_props}
    read = read_metadata(props, "m.onnx")
    assert read.class_names == list(meta.class_names) and read.precision == "fp32"
    assert _parse_sites(props[SITES_KEY], "m.onnx") == sites
    with pytest.raises(TypeError):
        write_metadata(onnx.ModelProto(), meta, "demo.pt", "fp32")  # type: ignore[call-arg]


def test_unusable_files_give_one_clear_line(tmp_path):
    """Not ONNX, a checkpoint named .onnx, ONNX without our metadata, a size the fixed dimensions refuse."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 not a protobuf model \xff" * 10)
    with pytest.raises(OnnxModelError, match="is not an ONNX model file"):
        OnnxSegmenter(junk)
    renamed = tmp_path / "model.onnx"
    renamed.write_bytes(Path(demo_checkpoint()).read_bytes()[:4096])
    with pytest.raises(OnnxModelError, match="not an ONNX model but a PyTorch file.*sigma-export"):
        Segmenter.from_checkpoint(renamed)
    foreign = write_onnx(tmp_path / "foreign.onnx", {"author": "someone"})
    with pytest.raises(OnnxModelError, match=r"without sigma_core's metadata \(missing sigma.format, .*sigma-export"):
        OnnxSegmenter(foreign)
    fixed = write_onnx(tmp_path / "fixed.onnx", sigma_props(), height=32, width=48)
    seg = OnnxSegmenter(fixed)
    assert seg.input_size == (32, 48)  # images of any size are resized to it
    mask, _ = seg(np.zeros((60, 80, 3), np.uint8), np.zeros((60, 80), np.uint16))
    assert mask.shape == (60, 80)
    with pytest.raises(OnnxModelError, match="exported for 32x48 inputs only .* cannot run at 64x64"):
        seg.warmup((64, 64))
    with pytest.raises(OnnxModelError, match="cannot run at each image's own size"):
        OnnxSegmenter(fixed, input_size=None)


def test_missing_onnxruntime_names_the_install_command(tmp_path):
    """Without onnxruntime, loading an .onnx file says which pip command installs it."""
    model = write_onnx(tmp_path / "m.onnx", sigma_props())
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from sigma_core.onnx_runtime import OnnxSegmenter, OnnxRuntimeMissing\n"
            f"try:\n    OnnxSegmenter({str(model)!r})\nexcept OnnxRuntimeMissing as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "pip install onnxruntime" in out


def test_export_refuses_before_work(tmp_path, capsys):
    """An existing --out is never replaced; half a fixed size, a wrong suffix: one line, exit 1, nothing loaded."""
    from sigma_core.cli.export import main

    existing = tmp_path / "model.onnx"
    existing.write_text("mine")
    ckpt = str(demo_checkpoint())
    for argv, message in (([ckpt, "--out", str(existing)], "never overwrites"),
                          ([ckpt, "--out", str(tmp_path / "a.onnx"), "--height", "64"], "both --height"),
                          ([ckpt, "--out", str(tmp_path / "a.pt")], "must end in .onnx")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 1
        assert message in capsys.readouterr().err
    assert existing.read_text() == "mine"
    assert not (tmp_path / "a.onnx").exists()


def test_export_refuses_hostile_outputs_and_arguments_before_work(tmp_path, capsys, published):
    """Each of these used to fail (or succeed wrongly) only after minutes of export, or not at all: a dangling
    symbolic link as --out (linked through at the end), a folder, an unwritable folder, a check size of 0 or one the
    fixed size refuses, an opset newer than onnx knows (a converter traceback after the trace); a published .pth
    without --dataset; a typo in --precision (argparse, exit 2). One line each,
    no model loaded, nothing written."""
    from sigma_core.cli.export import main

    ckpt = str(demo_checkpoint())
    dangling = tmp_path / "dangling.onnx"
    dangling.symlink_to(tmp_path / "nowhere" / "x.onnx")
    (tmp_path / "folder.onnx").mkdir()
    new = str(tmp_path / "new.onnx")
    for argv, message in (
            ([ckpt, "--out", str(dangling)], "dangling.onnx is a symbolic link .*never writes through"),
            ([ckpt, "--out", str(tmp_path / "folder.onnx")], r"folder.onnx exists \(a folder\)"),
            ([ckpt, "--out", "/proc/sigma_export_test.onnx"], "cannot write in /proc"),
            ([ckpt, "--out", new, "--check-size", "0", "0"], "check size 0 x 0 is outside 4..8192"),
            ([ckpt, "--out", new, "--height", "64", "--width", "64", "--check-size", "48", "48"],
             "differs from the fixed size 64x64"),
            ([ckpt, "--out", new, "--height", "-32", "--width", "64"], "outside 32..8192"),
            ([ckpt, "--out", new, "--opset", "99"], r"opset 99 is newer than this onnx package knows \(\d+\)"),
            ([str(published), "--out", new], "published Sigma checkpoint .*--dataset")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.count("\n") == 1, err
        assert re.search(message, err), err
    with pytest.raises(SystemExit) as exit_info:
        main([ckpt, "--out", new, "--precision", "fp61"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp61'" in capsys.readouterr().err
    assert dangling.is_symlink() and not Path(new).exists() and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.onnx", "folder.onnx", "sigma_published.pth"]


def test_export_without_its_packages_names_the_install_command(tmp_path):
    """onnxscript (torch's ONNX builder) missing: one line with the pip command before the checkpoint loads (it
    failed after loading, deep in torch.onnx); onnxruntime missing likewise."""
    for blocked in ("onnxscript", "onnxruntime"):
        code = ("import sys\n"
                "class Block:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                f"        if name.split('.')[0] == {blocked!r}: raise ImportError(name + ' is blocked')\n"
                "sys.meta_path.insert(0, Block())\n"
                "from sigma_core.cli.export import main\n"
                f"main([{str(demo_checkpoint())!r}, '--out', {str(tmp_path / 'm.onnx')!r}])\n")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr
        assert run.stderr.strip().splitlines() == [
            f"sigma-export: error: sigma-export needs {blocked}, which is not installed: pip install onnx onnxscript "
            "onnxruntime"]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_interrupted_export_leaves_nothing(tmp_path):
    """Ctrl-C (SIGINT) to a real sigma-export process while the written file is being checked against torch: exit
    130 with one line, and nothing in the folder, neither the .onnx nor its partial file."""
    import signal
    import time

    from sigma_core import SigmaConfig, build_sigma, save_checkpoint

    torch.manual_seed(0)
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=3)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_sigma(cfg), cfg, class_names=["a", "b", "c"])
    out = tmp_path / "out"
    out.mkdir()
    # fixed at 2048x2048, which is also the check frame: the check runs for many seconds after the partial file is
    # complete, and a fixed size exports in a seventh of the time of any size (13 s against 93 s here)
    cmd = [sys.executable, "-m", "sigma_core.cli.export", str(ckpt), "--out", str(out / "tiny.onnx"),
           "--height", "2048", "--width", "2048"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 500
        while "checking tiny.onnx against torch" not in (line := proc.stdout.readline()):
            assert line and time.monotonic() < deadline, proc.stderr.read()
        assert [p.name for p in out.iterdir()] == [f".tiny.onnx.partial-{proc.pid}"]  # written, being checked
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "sigma-export: error: interrupted (Ctrl-C or SIGTERM); nothing was written"
    assert "Traceback" not in err
    assert list(out.iterdir()) == []


@pytest.mark.timeout(300)
def test_sigterm_stops_an_export_like_ctrl_c(tmp_path):
    """SIGTERM (systemd, `timeout`, a container stop) ended the process without its clean-up, leaving the partial file
    of an export past its trace; now it takes Ctrl-C's path (its clean-up is the test above): exit 130, one line."""
    import signal
    import time

    cmd = [sys.executable, "-m", "sigma_core.cli.export", str(demo_checkpoint()), "--out", str(tmp_path / "m.onnx")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 200
        while not (line := proc.stdout.readline()).startswith("exporting "):  # tracing, the handler installed
            assert line and time.monotonic() < deadline, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "sigma-export: error: interrupted (Ctrl-C or SIGTERM); nothing was written"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory) -> Path:
    """The bundled demo model exported with dynamic height and width (checked at 64x80 to keep CI short)."""
    torch.set_num_threads(1)
    model, meta = load_model(demo_checkpoint())
    out = tmp_path_factory.mktemp("export") / "demo.onnx"
    report = export_onnx(model, meta, out, source=demo_checkpoint(), check_size=(64, 80))
    weights = sum(p.numel() for p in model.parameters()) * 4
    assert report.relative_difference < 1e-4 and report.file_bytes < 2 * weights + 4e6
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)  # the export: ~100 s on an idle 2-core machine, several minutes under load
def test_exported_bundled_model_matches_torch_at_any_size(bundled_onnx):
    """ONNX Runtime equals torch within 1e-4 relative at sizes it was not traced at (odd stage sizes included),
    the file names its classes, and the Segmenters agree on whole frames."""
    model, meta = load_model(demo_checkpoint())
    # the file's own scan ops (what any runtime runs) and the native kernel in their place (onnx_scan_ops)
    as_written = OnnxSegmenter(bundled_onnx, input_size=None, threads=1, scan_backend="onnx")
    onnx_seg = OnnxSegmenter(bundled_onnx, input_size=None, threads=1)
    assert (as_written.scan_backend, onnx_seg.scan_backend) == ("onnx", "native"), onnx_seg.meta.warnings
    assert "native scan kernel" in onnx_seg.runtime and "native" not in as_written.runtime
    for height, width in ((72, 100), (120, 160)):
        rgb, modal = torch.randn(2, 1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.inference_mode():
            expected = model(rgb, modal).numpy()
        for seg in (as_written, onnx_seg):
            got = seg.logits(rgb.numpy(), modal.numpy())
            assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4, seg.scan_backend
    assert onnx_seg.class_names == meta.class_names and onnx_seg.scaling == meta.scaling
    via_checkpoint_api = Segmenter.from_checkpoint(bundled_onnx)
    assert isinstance(via_checkpoint_api, OnnxSegmenter) and via_checkpoint_api.input_size == meta.input_size
    torch_seg = Segmenter.from_checkpoint(demo_checkpoint())
    for _, rgb, thermal in synthetic_rgbt_frames(2):
        assert (via_checkpoint_api(rgb, thermal)[0] == torch_seg(rgb, thermal)[0]).mean() >= 0.999
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_onnx(model, meta, bundled_onnx, source="x")


def with_scan_sites(source: Path, out: Path, sites: Optional[str], extra_node=None, name_producer_of=None) -> Path:
    """``source`` with its sigma.scan_sites metadata replaced by ``sites`` (None: removed), and ``extra_node``;
    name_producer_of (tensor, name): the node making that tensor renamed so."""
    model = onnx.load(str(source))
    if name_producer_of is not None:
        next(n for n in model.graph.node if name_producer_of[0] in n.output).name = name_producer_of[1]
    kept = [p for p in model.metadata_props if p.key != KEY_PREFIX + "scan_sites"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if sites is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = KEY_PREFIX + "scan_sites", sites
    if extra_node is not None:
        model.graph.node.append(extra_node)
        model.graph.output.append(helper.make_value_info(extra_node.output[0], onnx.TypeProto()))
    onnx.save(model, str(out))
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_files_whose_scans_the_native_kernel_cannot_run_run_as_written_and_say_why(bundled_onnx, tmp_path,
                                                                                   monkeypatch):
    """auto runs the file's own scan ops, with a warning naming why (and what to do), wherever the kernel cannot
    take the scans; scan_backend 'native' refuses with the same reason; the logits are the file's either way."""
    sites = onnx.load(str(bundled_onnx), load_external_data=False).metadata_props
    listed = next(p.value for p in sites if p.key == KEY_PREFIX + "scan_sites")
    cases = {
        "no list (older export)": (with_scan_sites(bundled_onnx, tmp_path / "none.onnx", None),
                                   "does not list its scans"),
        "malformed list": (with_scan_sites(bundled_onnx, tmp_path / "bad.onnx", '[{"op": "ScanMap"'), "malformed"),
        "a scan not in the graph": (with_scan_sites(bundled_onnx, tmp_path / "gone.onnx",
                                                    listed.replace('"sigma_scan0_"', '"sigma_scan99_"')),
                                    "sigma_scan99_ of sigma.scan_sites is not in its graph"),
        "a node reading inside a scan": (with_scan_sites(bundled_onnx, tmp_path / "leak.onnx", listed, helper.make_node(
            "Identity", ["sigma_scan0_input0"], ["peek"], name="peek")), "read 'sigma_scan0_input0'"),
        # forged lists: the kernel ran another scan than the file's (NaN or wrong logits), or a traceback
        "softplus listed wrongly": (with_scan_sites(bundled_onnx, tmp_path / "softplus.onnx", listed.replace(
            '"softplus": 1', '"softplus": 0', 1)), "as ScanMap with softplus 0, which its own nodes do not compute"),
        "kind listed wrongly": (with_scan_sites(bundled_onnx, tmp_path / "kind.onnx", listed.replace(
            '"ScanMap"', '"ScanRecurrence"', 1)), "as ScanRecurrence with softplus 1, which its own nodes"),
        "an op of no string": (with_scan_sites(bundled_onnx, tmp_path / "op.onnx", listed.replace(
            '"ScanMap"', '["ScanMap"]', 1)), "malformed (op \"['ScanMap']\")"),
        "nested past recursion": (with_scan_sites(bundled_onnx, tmp_path / "deep.onnx", "[" * 100000 + "]" * 100000),
                                  "malformed (nested deeper than sigma-export writes)"),
        "the output made inside a scan": (with_scan_sites(bundled_onnx, tmp_path / "out.onnx", listed,
                                                          name_producer_of=("logits", "sigma_scan0_last")),
                                          "nodes outside its scans read 'logits'"),
    }
    rgb = np.random.default_rng(0).standard_normal((1, 3, 32, 40), dtype=np.float32)
    expected = OnnxSegmenter(bundled_onnx, threads=1, scan_backend="onnx").logits(rgb, rgb)
    for case, (path, reason) in cases.items():
        seg = OnnxSegmenter(path, threads=1)
        assert seg.scan_backend == "onnx", case
        assert any(reason in w and "own ONNX ops" in w for w in seg.meta.warnings), (case, seg.meta.warnings)
        assert np.abs(seg.logits(rgb, rgb) - expected).max() == 0, case
        with pytest.raises(ValueError, match=f"scan backend 'native' for {path.name}: .*{re.escape(reason)}"):
            OnnxSegmenter(path, threads=1, scan_backend="native")
    from sigma_core import onnx_scan_ops

    with monkeypatch.context() as patch:  # ONNX Runtime refuses the file with the kernel's ops: the file as written
        patch.setattr(onnx_scan_ops, "kernel_model", lambda path, threads: b"refused")
        seg = OnnxSegmenter(bundled_onnx, threads=1)
        assert seg.scan_backend == "onnx" and "native" not in seg.runtime
        assert any("own ONNX ops" in w and "ONNX Runtime cannot load" in w for w in seg.meta.warnings)
        assert np.abs(seg.logits(rgb, rgb) - expected).max() == 0
    with monkeypatch.context() as patch:  # an onnxruntime-extensions built for another onnxruntime
        patch.setattr("onnxruntime_extensions.get_library_path", lambda: str(tmp_path / "libortextensions.so"))
        seg = OnnxSegmenter(bundled_onnx, threads=1)
        assert seg.scan_backend == "onnx"
        assert any("onnxruntime-extensions does not load into this onnxruntime" in w for w in seg.meta.warnings)
        assert np.abs(seg.logits(rgb, rgb) - expected).max() == 0
        with pytest.raises(ValueError, match="scan backend 'native' for .*does not load into this onnxruntime"):
            OnnxSegmenter(bundled_onnx, threads=1, scan_backend="native")
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # an install without it
    seg = OnnxSegmenter(bundled_onnx, threads=1)
    assert seg.scan_backend == "onnx"
    assert any("pip install onnx onnxruntime-extensions" in w for w in seg.meta.warnings), seg.meta.warnings
    with pytest.raises(ValueError, match="onnxruntime_extensions is not installed"):
        OnnxSegmenter(bundled_onnx, threads=1, scan_backend="native")
    with pytest.raises(ValueError, match="scan backend 'numba' is unknown for an ONNX model"):
        OnnxSegmenter(bundled_onnx, scan_backend="numba")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_session_options_made_before_the_kernel_model_run_it(bundled_onnx):
    """session_options() before kernel_model() (as a benchmark or a user's own session would order them) runs the
    model: the library took the Python ops declared when it was registered, none yet, and the session crashed the
    process (segmentation fault). In a child process, so that a crash fails this test, not the suite."""
    code = ("import numpy as np, onnxruntime as ort\n"
            "from pathlib import Path\n"
            "from sigma_core import onnx_scan_ops\n"
            "options = onnx_scan_ops.session_options(ort.SessionOptions())\n"
            "options.intra_op_num_threads = 1\n"
            f"model = onnx_scan_ops.kernel_model(Path({str(bundled_onnx)!r}), 1)\n"
            "session = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])\n"
            "x = np.zeros((1, 3, 16, 24), np.float32)\n"
            "print(session.run(None, {'rgb': x, 'modal': x})[0].shape)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith(", 16, 24)")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_export_published_checkpoint_fp32_and_fp16(tmp_path, monkeypatch):
    """The published-layout parity fixture through sigma-export --dataset (fixed at its 64x96, which exports in a
    quarter of the time; any size is the bundled model's test): fp32 equals the published logits within 1e-4
    relative, fp16 keeps >= 99.5 % of the mask pixels (both fixture frames, one at a time: batch 1) and stores
    every projection float16 (the map scans' x_proj / dt weights, behind Reshape/Transpose, stayed float32)."""
    import copy

    import sigma_core.export
    from sigma_core.cli.export import main

    # fp16 is a pass over the traced graph (matmuls_to_fp16), so the fp16 run reuses the fp32 run's trace of the
    # same weights at the same size instead of tracing again (~30 s); everything after the trace runs each time.
    trace, traced = sigma_core.export.trace_to_onnx, {}

    def trace_once(model, fixed, precision, opset):
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        if (fixed, opset) not in traced:
            traced[fixed, opset] = (weights, trace(model, fixed, precision, opset))
        first, proto = traced[fixed, opset]
        assert first.keys() == weights.keys() and all(torch.equal(first[k], weights[k]) for k in first), \
            "the second export loaded other weights than the first"
        return copy.deepcopy(proto)

    monkeypatch.setattr(sigma_core.export, "trace_to_onnx", trace_once)
    fixture = parity_fixture()
    pth = write_published_checkpoint(tmp_path / "published.pth", fixture["state_dict"])
    expected = fixture["logits"].numpy()
    for precision in ("fp32", "fp16"):
        out = tmp_path / f"published_{precision}.onnx"
        assert main([str(pth), "--dataset", "mfnet", "--out", str(out), "--precision", precision,
                     "--height", "64", "--width", "96"]) == 0
        for scan_backend in ("onnx", "native"):  # the file as written, and with the native scan kernel
            seg = OnnxSegmenter(out, threads=1, scan_backend=scan_backend)
            assert seg.precision == precision and len(seg.class_names) == 9
            got = np.concatenate([seg.logits(fixture["rgb"][i:i + 1].numpy(), fixture["x"][i:i + 1].numpy())
                                  for i in range(len(expected))])
            if precision == "fp32":
                assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4, scan_backend
            assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.995, scan_backend
    assert len(traced) == 1
    # fp16 stores every projection float16, the scans' x_proj / dt weights (behind Reshape/Transpose) included
    stored = {i.name: i.data_type for i in onnx.load(str(tmp_path / "published_fp16.onnx")).graph.initializer}
    assert [name for name, dtype in stored.items() if "proj" in name and "bias" not in name
            and dtype != TensorProto.FLOAT16] == []
    assert any(name.endswith("x_proj_weight_fp16") for name in stored)  # the map scans' projections
    assert (tmp_path / "published_fp16.onnx").stat().st_size < 0.6 * (tmp_path / "published_fp32.onnx").stat().st_size


def test_gpu_benchmark_is_ready_and_says_when_it_cannot_run():
    """benchmarks/onnx_gpu.py (ORT CUDA/TensorRT against torch CUDA) parses and, without a GPU, says it has not run."""
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU is here: run benchmarks/onnx_gpu.py itself")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_gpu.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "onnx_gpu.py is ready; this machine cannot run it: needs a CUDA GPU" in done.stdout


def test_cpu_benchmark_times_the_sessions_onnx_segmenter_makes_and_says_why_the_kernel_is_not_timed(tmp_path,
                                                                                                      capsys):
    """benchmarks/onnx_cpu.py's ONNX Runtime runners are OnnxSegmenter's sessions (scan backend onnx and native),
    not sessions of its own: a file the kernel cannot run (here, no scan list) is named in one line and not timed,
    where its own session building raised ScanKernelUnavailable with a traceback. Nothing is timed here."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_cpu.py"
    spec = importlib.util.spec_from_file_location("benchmarks_onnx_cpu", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = write_onnx(tmp_path / "m.onnx", sigma_props())
    runners = bench.make_runners(torch.nn.Identity(), model, 1, (4, 5))
    assert {"torch", "torch+numba", "onnxruntime"} <= set(runners) and "onnxruntime+kernel" not in runners
    assert runners["onnxruntime"]().shape == (1, 3, 4, 5)
    assert "onnxruntime+kernel not timed: scan backend 'native' for m.onnx: m.onnx does not list its scans" in \
        capsys.readouterr().out


def test_half_precision_asked_for_on_the_cpu_is_refused_for_onnx_files_as_for_checkpoints(tmp_path, capsys):
    """Issue 22 attack: an .onnx checkpoint with precision fp16 on a CPU warned and ran fp32, where a .pt was refused;
    every tool loads through load_segmenter, so sigma-predict (and the node, replay) now refuse both alike."""
    from sigma_core.cli import predict

    model = write_onnx(tmp_path / "m.onnx", sigma_props())
    for precision in ("fp16", "bf16"):
        with pytest.raises(ValueError, match=f"precision '{precision}' on the CPU .* would be emulated and slower than "
                                             "fp32: use precision 'fp32' on a CPU"):
            OnnxSegmenter(model, device="cpu", precision=precision)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "t.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(SystemExit) as stop:
        predict.main([str(tmp_path / "rgb.png"), str(tmp_path / "t.png"), "--checkpoint", str(model), "--device",
                      "cpu", "--precision", "fp16", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and err.count("\n") == 0 and "would be emulated and slower than fp32" in err
    assert not (tmp_path / "o").exists()
    assert OnnxSegmenter(model, device="cpu").precision == "fp32"
