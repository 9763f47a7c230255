"""OnnxSegmenter against hostile .onnx files: damaged files, forged sigma.* metadata, foreign inputs and outputs,
external data pointing outside the model's folder or declaring absurd sizes, GPU providers that cannot start.

Every file here is a small ONNX graph written by the test (no export: those are in test_export.py), run by the real
ONNX Runtime; each must be refused with one OnnxModelError (a ValueError) naming what is wrong, or run correctly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sigma_core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from sigma_core.data.modality import ModalityScaling
from sigma_core.onnx_runtime import KEY_PREFIX, REQUIRED_KEYS, OnnxModelError, OnnxRunError, OnnxSegmenter
from sigma_core.segmentation_step import load_segmenter

ort = pytest.importorskip("onnxruntime")

SYMBOLIC = [1, 3, "H", "W"]


def description(**changes: str) -> dict[str, str]:
    """sigma-export's metadata for a 3-class thermal model, with some values (JSON text) replaced."""
    values = {"format": '"sigma-onnx/1"', "model": '"toy"', "classes": '["a", "b", "c"]',
              "palette": "[[0, 0, 0], [1, 1, 1], [2, 2, 2]]", "modality": '{"modality": "thermal"}',
              "normalization": '{"mean": [0, 0, 0], "std": [1, 1, 1]}', "input_size": "null", "precision": '"fp32"',
              "source_checkpoint": '"x.pt"', "sigma_core_version": '"0"'}
    assert set(values) == set(REQUIRED_KEYS) and set(changes) <= set(values)
    values.update(changes)
    return {KEY_PREFIX + k: v for k, v in values.items()}


def write_model(path: Path, nodes=None, *, inputs=("rgb", "modal"), in_shape=SYMBOLIC, in_type=TensorProto.FLOAT,
                out_shape=SYMBOLIC, out_type=TensorProto.FLOAT, initializers=(), props=None, extra_outputs=()) -> Path:
    """A small ONNX model (default: logits = rgb + modal, 3 classes) with sigma's metadata (or ``props``)."""
    nodes = nodes or [helper.make_node("Add", list(inputs), ["logits"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, in_type, in_shape) for n in inputs],
        [helper.make_tensor_value_info("logits", out_type, out_shape), *extra_outputs],
        initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in (description() if props is None else props).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def segment(seg: OnnxSegmenter, height: int = 40, width: int = 50) -> np.ndarray:
    return seg(np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.uint16))[0]


def test_damaged_files_are_named_for_what_they_are(tmp_path):
    """Empty and truncated files are 'not an ONNX model'; a folder named .onnx is not a file; a valid ONNX file that
    ONNX Runtime refuses (a type error inside) is named as such, with ONNX Runtime's reason, not called 'not ONNX'."""
    good = write_model(tmp_path / "good.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "truncated.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in ("empty.onnx", "truncated.onnx"):
        with pytest.raises(OnnxModelError, match="is not an ONNX model file .*truncated"):
            OnnxSegmenter(tmp_path / name)
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(OnnxModelError, match="folder.onnx' is not a file"):
        OnnxSegmenter(tmp_path / "folder.onnx")
    cast = [helper.make_node("Add", ["rgb", "modal"], ["s"]), helper.make_node("Cast", ["s"], ["logits"], to=7)]
    typed = write_model(tmp_path / "typed.onnx", cast)  # declares float logits, computes int64
    with pytest.raises(OnnxModelError, match="ONNX Runtime cannot load .*typed.onnx: .*Type Error") as err:
        OnnxSegmenter(typed)
    assert "not an ONNX model" not in str(err.value)
    assert segment(OnnxSegmenter(good)).shape == (40, 50)


FORGED = {  # metadata key -> (JSON text, what the error must say)
    "fewer classes than the palette": ("classes", '["a", "b"]', "palette must be 2 .r, g, b. colours"),
    "300 classes": ("classes", json.dumps([f"c{i}" for i in range(300)]), "300 classes do not fit a uint8 mask"),
    "classes as one string": ("classes", '"abc"', "class names must be a list of strings, got 'abc'"),
    "a class name of 100k characters": ("classes", json.dumps(["a", "b", "c" * 100_000]),
                                        "a class name of 100000 characters"),
    "a class name with a newline and an escape code": ("classes", json.dumps(["a", "b\n[ERROR] forged", "\u001b[2J"]),
                                                       "class name 'b\\\\n.ERROR. forged' holds control characters"),
    "a class twice": ("classes", '["a", "a", "b"]', r"class names must differ; repeated: 'a' \(ids 0 and 1\)"),
    "short palette": ("palette", "[[0, 0, 0]]", "palette must be 3"),
    "palette value 999": ("palette", "[[999, 0, 0], [0, 0, 0], [0, 0, 0]]", "integer values 0..255"),
    "palette of strings": ("palette", '["000", "111", "222"]', "integer values 0..255"),
    "NaN mean": ("normalization", '{"mean": [NaN, 0, 0], "std": [1, 1, 1]}', "NaN is not a number"),
    "infinite std": ("normalization", '{"mean": [0, 0, 0], "std": [Infinity, 1, 1]}', "Infinity is not a number"),
    "std 0": ("normalization", '{"mean": [0, 0, 0], "std": [0, 1, 1]}', "finite with std > 0"),
    "std 1e-9": ("normalization", '{"mean": [0.5, 0.5, 0.5], "std": [1e-9, 1, 1]}', "maps 0..1 pixel values to"),
    "mean 1e12": ("normalization", '{"mean": [1e12, 0, 0], "std": [1, 1, 1]}', "maps 0..1 pixel values to"),
    "two channels": ("normalization", '{"mean": [0, 0], "std": [1, 1]}', "mean': .3 numbers"),
    "strings": ("normalization", '{"mean": "000", "std": "111"}', "mean': .3 numbers"),
    "negative input size": ("input_size", "[-5, 10]", "input_size must be .H, W. with both 4..8192"),
    "input size 100000": ("input_size", "[100000, 100000]", "input_size must be"),
    "three sides": ("input_size", "[1, 2, 3]", "input_size must be"),
    "lidar": ("modality", '{"modality": "lidar"}', "modality must be one of"),
    "infinite thermal range": ("modality", '{"modality": "thermal", "range": [0, 1e400]}', "Infinity|finite"),
    "modality as a list": ("modality", "[1, 2]", "modality scaling must be a dict"),
    "precision fp64": ("precision", '"fp64"', "precision 'fp64' is none of fp32, fp16"),
    "model name of 50 MB": ("model", json.dumps("x" * 50_000_000), r"sigma.model \(50000002 characters\) is larger"),
    "model name a number": ("model", "5", "sigma.model must be a string"),
    "broken JSON": ("classes", "[a, b", "metadata is malformed"),
}


@pytest.mark.parametrize("case", list(FORGED), ids=list(FORGED))
def test_forged_metadata_is_refused_at_load(tmp_path, case):
    """Metadata that would give wrong masks, colours or inputs (classes not matching the palette, > 255 classes for
    a uint8 mask, NaN/absurd normalisation, absurd input sizes, megabytes of text) is refused when the file loads,
    with one line naming the file and the value, never run."""
    key, text, message = FORGED[case]
    path = write_model(tmp_path / "forged.onnx", props=description(**{key: text}))
    with pytest.raises(OnnxModelError, match=message) as err:
        OnnxSegmenter(path)
    assert str(path) in str(err.value) and "export the checkpoint again" in str(err.value)
    assert len(str(err.value)) < 1500


def test_checkpoints_follow_the_same_description_rules(tmp_path):
    """The rules are one function (model_io.check_description): a checkpoint with a NaN normalisation or an infinite
    thermal range is refused as the ONNX file is (both used to load and give NaN logits or all-zero thermal)."""
    import torch

    from sigma_core import SigmaConfig, build_sigma

    with pytest.raises(ValueError, match="finite"):
        ModalityScaling("thermal", range=(0.0, float("inf")))
    with pytest.raises(ValueError, match="finite"):
        ModalityScaling("depth", max_range=float("inf"))
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=2)
    model = build_sigma(cfg)
    with pytest.raises(CheckpointError, match="normalization must be finite"):
        save_checkpoint(tmp_path / "nan.pt", model, cfg, class_names=["a", "b"],
                        normalization={"mean": [float("nan"), 0, 0], "std": [1, 1, 1]})
    path = save_checkpoint(tmp_path / "ok.pt", model, cfg, class_names=["a", "b"])
    payload = torch.load(path, weights_only=True)
    payload["normalization"] = {"mean": [0.5, 0.5, 0.5], "std": [float("nan"), 1.0, 1.0]}
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="edited.pt: normalization must be finite"):
        load_checkpoint(tmp_path / "edited.pt")


def foreign_io_cases():
    add = None
    squeeze = [helper.make_node("Add", ["rgb", "modal"], ["s"]), helper.make_node("Squeeze", ["s"], ["logits"])]
    concat = [helper.make_node("Concat", ["rgb", "modal"], ["logits"], axis=1)]
    return {
        "fixed 100000x100000 (a memory bomb once resized to)": (
            dict(nodes=add, in_shape=[1, 3, 100000, 100000], out_shape=[1, 3, 100000, 100000]),
            "declares size 100000x100000; a fixed size is 4..8192"),
        "fixed 0x0": (dict(nodes=add, in_shape=[1, 3, 0, 0], out_shape=[1, 3, 0, 0]), "declares size 0x0"),
        "fixed height, any width": (dict(nodes=add, in_shape=[1, 3, 64, "W"], out_shape=[1, 3, 64, "W"]),
                                    "both fixed or neither"),
        "batch fixed at 2": (dict(nodes=add, in_shape=[2, 3, 32, 32], out_shape=[2, 3, 32, 32]), r"\[2, 3, 32, 32\]"),
        "four channels": (dict(nodes=add, in_shape=[1, 4, "H", "W"], out_shape=[1, 4, "H", "W"]), "takes float32"),
        "rank 3": (dict(nodes=add, in_shape=[3, "H", "W"], out_shape=[3, "H", "W"]), "takes float32"),
        "float16 inputs": (dict(nodes=add, in_type=TensorProto.FLOAT16, out_type=TensorProto.FLOAT16),
                           "input 'rgb' is tensor.float16."),
        "other input names": (dict(nodes=[helper.make_node("Add", ["a", "b"], ["logits"])], inputs=("a", "b")),
                              r"has inputs \['a', 'b'\]"),
        "6 logit channels for 3 classes": (dict(nodes=concat, out_shape=[1, 6, "H", "W"]),
                                           "output 'logits' is tensor.float. .1, 6, 'H', 'W'., but its metadata "
                                           "names 3 classes"),
        "logits of rank 3": (dict(nodes=squeeze, out_shape=[3, "H", "W"]), "names 3 classes"),
        "float16 logits": (dict(nodes=[*squeeze[:1], helper.make_node("Cast", ["s"], ["logits"], to=10)],
                                out_type=TensorProto.FLOAT16), "output 'logits' is tensor.float16."),
    }


FOREIGN = foreign_io_cases()


@pytest.mark.parametrize("case", list(FOREIGN), ids=list(FOREIGN))
def test_foreign_inputs_and_outputs_are_refused_at_load(tmp_path, case):
    """A file whose inputs or output are not sigma-export's (B, 3, H, W) float32 rgb/modal -> float32 (B, K, H, W)
    logits is refused when it loads, before any frame: absurd fixed sizes too (images would be resized to them)."""
    kwargs, message = FOREIGN[case]
    path = write_model(tmp_path / "foreign.onnx", **kwargs)
    with pytest.raises(OnnxModelError, match=message):
        OnnxSegmenter(path)


def test_logits_in_another_layout_are_refused_not_turned_into_a_mask(tmp_path):
    """Logits whose shape only shows when the model runs ((B, H, W, K) behind symbolic dimensions) give no mask:
    one OnnxModelError naming the shape, where the argmax over the wrong axis was a silently wrong mask."""
    nodes = [helper.make_node("Add", ["rgb", "modal"], ["s"]),
             helper.make_node("Transpose", ["s"], ["logits"], perm=[0, 2, 3, 1])]
    seg = OnnxSegmenter(write_model(tmp_path / "nhwc.onnx", nodes, out_shape=["B", "X", "Y", "Z"]))
    with pytest.raises(OnnxModelError, match=r"gave logits float32 \[1, 40, 50, 3\] for a 40x50 input; .*"
                                             r"\[1, 3, 40, 50\]"):
        segment(seg)


def test_failures_while_running_are_one_runtime_error(tmp_path):
    """A graph that asks for 4 TB while running (ConstantOfShape), and images under 4x4 (as the torch network
    says): one OnnxRunError (a RuntimeError) / ValueError each, not onnxruntime's own exception types, and the
    segmenter keeps working for the next frame."""
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fill),
             helper.make_node("Add", ["rgb", "modal"], ["logits"])]
    shape = numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "shape")
    seg = OnnxSegmenter(write_model(tmp_path / "bomb.onnx", nodes, initializers=[shape],
                                    extra_outputs=[helper.make_tensor_value_info("big", TensorProto.FLOAT, None)]))
    with pytest.raises(OnnxRunError, match="ONNX Runtime failed to run bomb.onnx .* on a 1x3x40x50 input"):
        segment(seg)
    small = OnnxSegmenter(write_model(tmp_path / "small.onnx"), input_size=None)
    with pytest.raises(ValueError, match="at least 4x4 pixels"):
        segment(small, 3, 3)
    assert segment(small, 4, 4).shape == (4, 4)


def external_weight(location: str, dims=(1,), **fields: int):
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in {"location": location, **fields}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor


def with_weight(path: Path, weight) -> Path:
    nodes = [helper.make_node("Add", ["rgb", "modal"], ["s"]), helper.make_node("Add", ["s", "w"], ["logits"])]
    return write_model(path, nodes, initializers=[weight])


def test_external_data_outside_the_model_folder_or_of_absurd_size_is_refused(tmp_path):
    """External data naming /etc/passwd, a ../ path, a symbolic link out of the folder, /dev/zero, or declaring
    terabytes (length, offset, or dimensions beyond the file), also in a Constant node and inside a Scan body:
    refused by our own check (sigma_core.onnx_file) before ONNX Runtime reads anything, as releases before 2026
    read any path and allocate what a file declares. External data inside the folder still loads."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(np.ones(1, np.float32).tobytes())
    (folder / "link.bin").symlink_to("/etc/passwd")
    assert segment(OnnxSegmenter(with_weight(folder / "inside.onnx", external_weight("w.bin")))).shape == (40, 50)
    outside = "outside the model's folder"
    for name, weight, message in (
            ("absolute", external_weight("/etc/passwd", length=4), outside),
            ("traversal", external_weight("../../../../../../etc/passwd", length=4), outside),
            ("link", external_weight("link.bin", length=4), outside),
            ("device", external_weight("/dev/zero", dims=(10**10,)), outside),
            ("missing", external_weight("gone.bin"), "which is missing"),
            ("length", external_weight("w.bin", length=10**12), "1000000000000 bytes, .* holds 4 bytes"),
            ("offset", external_weight("w.bin", offset=10**15, length=4), "at offset 1000000000000000"),
            ("dims", external_weight("w.bin", dims=(10**6, 10**6)), r"\(4000000000000 bytes\), but that file holds")):
        with pytest.raises(OnnxModelError, match=f"{name}.onnx: tensor 'w' keeps its data in .*{message}"):
            OnnxSegmenter(with_weight(folder / f"{name}.onnx", weight))
    constant = [helper.make_node("Constant", [], ["w"], value=external_weight("/etc/passwd", length=4)),
                helper.make_node("Add", ["rgb", "modal"], ["s"]), helper.make_node("Add", ["s", "w"], ["logits"])]
    with pytest.raises(OnnxModelError, match=f"constant.onnx: tensor 'w' .*{outside}"):
        OnnxSegmenter(write_model(folder / "constant.onnx", constant))
    body = helper.make_graph(  # a Scan body (one step: state + w), its weight external
        [helper.make_node("Add", ["s_in", "w"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y"])], "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[external_weight("../../etc/passwd", length=4)])
    scan = [helper.make_node("Scan", ["zero", "seq"], ["last", "ys"], body=body, num_scan_inputs=1),
            helper.make_node("Add", ["rgb", "modal"], ["logits"])]
    inits = [numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
             numpy_helper.from_array(np.zeros((2, 1), np.float32), "seq")]
    with pytest.raises(OnnxModelError, match=f"scan.onnx: tensor 'w' .*{outside}"):
        OnnxSegmenter(write_model(folder / "scan.onnx", scan, initializers=inits))
    embedded = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**6, 10**6], raw_data=b"\0" * 4)
    with pytest.raises(OnnxModelError, match="cannot load .*embedded.onnx"):  # ONNX Runtime's own check
        OnnxSegmenter(with_weight(folder / "embedded.onnx", embedded))


def test_a_gpu_provider_that_cannot_start_is_never_a_silent_cpu(tmp_path, monkeypatch):
    """onnxruntime-gpu lists CUDA/TensorRT but they cannot start (no CUDA libraries): ONNX Runtime falls back to the
    CPU with a log line only. Asked by name, that is refused; 'auto' runs on the CPU with a warning saying why.
    (The provider list is extended here: this CPU build of ONNX Runtime then does exactly that fallback.)"""
    path = write_model(tmp_path / "m.onnx")
    listed = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: [*listed, "TensorrtExecutionProvider", "CUDAExecutionProvider"])
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt:1", "TensorrtExecutionProvider")):
        with pytest.raises(ValueError, match=f"device '{device}': ONNX Runtime could not start its {provider} "
                                             r"\(the session got CPUExecutionProvider\)"):
            OnnxSegmenter(path, device=device)
    seg = OnnxSegmenter(path, device="auto")
    assert str(seg.device) == "cpu" and "CPUExecutionProvider" in seg.runtime
    assert any("device 'auto' runs on the CPU" in w for w in seg.meta.warnings)
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.raises(ValueError, match="needs ONNX Runtime's CUDAExecutionProvider, which this onnxruntime lacks"):
        OnnxSegmenter(path, device="cuda:0")


def test_tensorrt_for_a_checkpoint_says_to_export(tmp_path):
    """device tensorrt with a PyTorch checkpoint: one line saying TensorRT runs exported files (it was torch's list
    of twenty device types), as sigma-predict, replay and the node all load through load_segmenter."""
    from sigma_core.assets import demo_checkpoint

    with pytest.raises(ValueError, match="device 'tensorrt:0' runs an exported .onnx model .*sigma-export"):
        load_segmenter(demo_checkpoint(), device="tensorrt:0")
    with pytest.raises(ValueError, match="device 'gpu' is unknown; use auto, cpu, cuda or cuda:N"):
        load_segmenter(demo_checkpoint(), device="gpu")


def test_segmenter_runs_where_torch_cannot_be_imported(tmp_path):
    """The checks above import no torch: a process where `import torch` fails still refuses a forged file with the
    same line and runs a good one."""
    good, forged = write_model(tmp_path / "good.onnx"), write_model(
        tmp_path / "forged.onnx", props=description(normalization='{"mean": [0, 0, 0], "std": [0, 1, 1]}'))
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import numpy as np\n"
            "from sigma_core.onnx_runtime import OnnxSegmenter, OnnxModelError\n"
            f"print(OnnxSegmenter({str(good)!r})(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))[0].shape)\n"
            f"try:\n    OnnxSegmenter({str(forged)!r})\nexcept OnnxModelError as e:\n    print(e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "(8, 8)"
    assert "normalization must be finite with std > 0" in run.stdout


BLOCKER = '''import sys


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: this process stands for an install without it")


sys.meta_path.insert(0, _Block())
'''


def without(tmp_path: Path, *packages: str) -> dict:
    """The environment of a process where importing any of ``packages`` fails (a sitecustomize found first)."""
    folder = tmp_path / f"without_{'_'.join(packages)}"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(packages)))
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))


def test_sigma_predict_runs_an_onnx_file_without_torch_and_says_when_onnxruntime_is_missing(tmp_path):
    """sigma-predict with an .onnx file in a process where `import torch` fails writes its masks (it imported torch
    through the dataset reader: ImportError traceback); without onnxruntime it exits 1 with the pip command."""
    import cv2

    for folder, image in (("rgb", np.zeros((40, 50, 3), np.uint8)), ("thermal", np.zeros((40, 50), np.uint16))):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "0001.png"), image)
    model = write_model(tmp_path / "m.onnx")
    cmd = [sys.executable, "-m", "sigma_core.cli.predict", str(tmp_path / "rgb"), str(tmp_path / "thermal"),
           "--checkpoint", str(model), "--no-progress"]
    run = subprocess.run([*cmd, "--out", str(tmp_path / "out")], env=without(tmp_path, "torch"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert cv2.imread(str(tmp_path / "out" / "mask" / "0001.png"), cv2.IMREAD_UNCHANGED).shape == (40, 50)
    run = subprocess.run([*cmd, "--out", str(tmp_path / "out2")], env=without(tmp_path, "onnxruntime"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert "needs ONNX Runtime, which is not installed" in run.stderr and "pip install onnxruntime" in run.stderr
    assert not (tmp_path / "out2").exists()


def test_a_bad_thread_count_in_the_environment_is_named(tmp_path, monkeypatch):
    """OMP_NUM_THREADS=abc (ONNX Runtime's thread count) was 'invalid literal for int()'; now it names the variable."""
    path = write_model(tmp_path / "m.onnx")
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='abc' is not a thread count"):
        OnnxSegmenter(path)
    monkeypatch.setenv("OMP_NUM_THREADS", " 2 ")
    assert segment(OnnxSegmenter(path)).shape == (40, 50)


def test_load_segmenter_gives_the_session_the_threads_asked_for(tmp_path, monkeypatch):
    path = write_model(tmp_path / "m.onnx")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert load_segmenter(path, threads=3).session.get_session_options().intra_op_num_threads == 3
    assert load_segmenter(path).session.get_session_options().intra_op_num_threads == 2
    # 0: automatic, as for torch and the node (never ONNX Runtime's own default of every core)
    assert load_segmenter(path, threads=0).session.get_session_options().intra_op_num_threads == 2


def test_an_absurd_thread_count_is_refused_in_one_line_not_a_killed_process(tmp_path):
    """OnnxSegmenter(threads=10**6) got the process killed inside ONNX Runtime's thread pool; it is refused as the
    tools refuse it (0..MAX_THREADS)."""
    path = write_model(tmp_path / "m.onnx")
    for threads in (10**6, -1, 2.5):
        with pytest.raises(ValueError, match="a thread count must be an integer 0..1024"):
            OnnxSegmenter(path, threads=threads)
    assert OnnxSegmenter(path, threads=2).session.get_session_options().intra_op_num_threads == 2


def test_threads_0_give_the_native_scan_kernel_every_cpu_this_process_may_use(tmp_path, monkeypatch):
    """threads 0 is ONNX Runtime's own default (a thread per core); the kernel's ops then get the CPUs of the
    process's affinity mask (model_io.usable_cpus), as the torch path counts them, not the machine's."""
    from sigma_core import onnx_scan_ops

    asked = []

    def kernel_model(path, threads):
        asked.append(threads)
        raise onnx_scan_ops.ScanKernelUnavailable("stand-in: no kernel")

    monkeypatch.setattr(onnx_scan_ops, "kernel_model", kernel_model)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 2, 5})
    monkeypatch.setenv("SIGMA_SCAN_BACKEND", "numba")  # torch's backends only (README): the kernel is still tried
    path = write_model(tmp_path / "m.onnx")
    for threads, kernel_threads in ((0, 3), (2, 2)):
        seg = OnnxSegmenter(path, threads=threads)
        assert asked.pop() == kernel_threads and seg.scan_backend == "onnx"
        assert "the scans run as m.onnx's own ONNX ops, 1.7-3.2x slower than with the native scan kernel " \
               "(Sigma-T to nano, 480x640): stand-in: no kernel" in seg.meta.warnings, seg.meta.warnings


def test_scan_backend_onnx_runs_the_file_as_written_and_an_unknown_one_is_refused(tmp_path):
    path = write_model(tmp_path / "m.onnx")
    seg = OnnxSegmenter(path, threads=1, scan_backend="onnx")
    assert seg.scan_backend == "onnx" and "native scan kernel" not in seg.runtime and not seg.meta.warnings
    from sigma_core import Segmenter

    for backend in ("numba", "Native", ""):
        for load in (OnnxSegmenter, Segmenter.from_checkpoint):  # the latter passes it on to the former
            with pytest.raises(ValueError, match=f"scan backend {backend!r} is unknown for an ONNX model; use auto, "
                                                 "native or onnx"):
                load(path, scan_backend=backend)
