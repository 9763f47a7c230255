"""PyTorch (native or numba scan) against the exported ONNX file in ONNX Runtime (and OpenVINO when installed), CPU.

    python benchmarks/onnx_cpu.py                                   # nano and tiny (Sigma-T), 480x640, 1 and 2 threads
    python benchmarks/onnx_cpu.py --variants nano --size 240 320 --threads 1 --rounds 2

For each variant: builds the network (random weights, seed 0), exports it with sigma_core.export (dynamic
height and width, as sigma-export does by default; the export time and peak memory of this process are
printed), then times one forward at each thread count in interleaved rounds (machine load hits all alike):
torch with the "auto" scan backend (native, else numba) and with the numba scan ("torch+numba"), ONNX
Runtime's CPU provider on the file as written
("onnxruntime") and with its scans on the native kernel ("onnxruntime+kernel", sigma_core.onnx_scan_ops: what
OnnxSegmenter runs on a CPU), and OpenVINO's CPU plugin
(INFERENCE_NUM_THREADS, float32) on the same file, once as written and once with the frame's size fixed at
compile time ("openvino fixed", what a file exported with --height/--width gets; ONNX Runtime is no faster
with fixed sizes). OpenVINO's read-and-compile time and its largest logit difference from ONNX Runtime are
printed. Prints min and median seconds and the ratio of each runtime's median to torch's in the same run,
in wall time and in this process's CPU time (on a loaded machine the CPU-time ratio of one-thread runs is the
steadier one: waiting for a core does not count), and OpenVINO's to ONNX Runtime's.
The scans alone: benchmarks/scan.py times the torch backends (native, numba, ...), not the ONNX formulation
(sigma_core.ops.scan_onnx), whose speed is ONNX Runtime's, timed here.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sigma_core import build_sigma  # noqa: E402
from sigma_core.checkpoints import CheckpointMeta  # noqa: E402
from sigma_core.data.modality import ModalityScaling  # noqa: E402
from sigma_core.export import export_onnx  # noqa: E402
from sigma_core.onnx_runtime import OnnxSegmenter  # noqa: E402


def make_runners(model, path: Path, threads: int, size):
    """{name: callable running one forward on fixed random inputs, returning the logits} for every runtime
    installed."""
    rgb, modal = (torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(i)) for i in range(2))
    runners = {}

    def torch_run():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(rgb, modal)

    runners["torch"] = torch_run

    def torch_numba_run():  # the baseline: torch with the numba scan (the native kernel's predecessor)
        model.set_scan_backend("numba")
        try:
            return torch_run()
        finally:
            model.set_scan_backend("auto")

    runners["torch+numba"] = torch_numba_run
    # ONNX Runtime's sessions as OnnxSegmenter makes them on a CPU: the file as written (scan backend "onnx"), and
    # with its scans on the native kernel ("native", sigma_core.onnx_scan_ops; refused where it cannot run here)
    feeds = {"rgb": rgb.numpy(), "modal": modal.numpy()}
    session = OnnxSegmenter(path, device="cpu", threads=threads, scan_backend="onnx").session
    runners["onnxruntime"] = lambda: session.run(None, feeds)[0]
    try:
        kernel = OnnxSegmenter(path, device="cpu", threads=threads, scan_backend="native").session
    except ValueError as err:  # what is missing, in one line
        print(f"  onnxruntime+kernel not timed: {err}")
    else:
        runners["onnxruntime+kernel"] = lambda: kernel.run(None, feeds)[0]
    try:
        import openvino as ov
    except ImportError:  # main says so once
        return runners
    # the file as written (height and width dynamic), and the same file with the frame's size fixed when it is
    # compiled (as a file exported with --height/--width is): OpenVINO's CPU plugin runs static shapes faster
    for name, fixed in (("openvino", False), ("openvino fixed", True)):
        core = ov.Core()
        start = time.perf_counter()
        network = core.read_model(str(path))
        if fixed:
            network.reshape({"rgb": list(rgb.shape), "modal": list(modal.shape)})
        compiled = core.compile_model(network, "CPU", {"INFERENCE_NUM_THREADS": str(threads),
                                                       "INFERENCE_PRECISION_HINT": "f32"})
        print(f"  {threads} thread(s) {name}: read and compiled in {time.perf_counter() - start:.1f} s "
              f"(OpenVINO {ov.get_version().split('-')[0]}, CPU plugin)")
        request = compiled.create_infer_request()
        runners[name] = lambda request=request: request.infer(feeds)[0]
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["nano", "tiny"])
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = tuple(args.size)
    print(f"load: {os.getloadavg()[0]:.1f} (1 min average) on {os.cpu_count()} cores; size {size[0]}x{size[1]}")
    if importlib.util.find_spec("openvino") is None:
        print("OpenVINO not installed (pip install openvino): timing torch and ONNX Runtime only")
    for variant in args.variants:
        torch.manual_seed(0)
        torch.set_num_threads(1)
        model = build_sigma(variant).eval()
        meta = CheckpointMeta(config=model.config, class_names=[f"c{i}" for i in range(model.config.num_classes)],
                              palette=[[i, i, i] for i in range(model.config.num_classes)],
                              scaling=ModalityScaling("thermal"))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{variant}.onnx"
            report = export_onnx(model, meta, path, source=f"build_sigma({variant!r})", check_size=(64, 80))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            print(f"\n{variant}: exported in {report.seconds:.0f} s (peak memory of this process {peak:.1f} GB), "
                  f"file {report.file_bytes / 1e6:.1f} MB for {report.weight_bytes / 1e6:.1f} MB float32 weights, "
                  f"{report.scans} scans, relative difference {report.relative_difference:.1g}")
            for threads in args.threads:
                runners = make_runners(model, path, threads, size)
                times = {name: [] for name in runners}
                cpu_times = {name: [] for name in runners}
                logits = {name: run() for name, run in runners.items()}  # warm-up
                for name in runners:
                    if name == "onnxruntime+kernel" or name.startswith("openvino"):
                        difference = abs(logits[name] - logits["onnxruntime"]).max()
                        print(f"  {threads} thread(s) {name}: largest logit difference from onnxruntime (the file's "
                              f"own scan ops) {difference:.2g} "
                              f"(largest |logit| {abs(logits['onnxruntime']).max():.3g})")
                for _ in range(args.rounds):
                    for name, run in runners.items():
                        start, cpu_start = time.perf_counter(), time.process_time()
                        run()
                        times[name].append(time.perf_counter() - start)
                        cpu_times[name].append(time.process_time() - cpu_start)
                base = statistics.median(times["torch"])
                cpu_base = statistics.median(cpu_times["torch"])
                ort_median = statistics.median(times["onnxruntime"])
                for name, ts in times.items():
                    median, cpu_median = statistics.median(ts), statistics.median(cpu_times[name])
                    print(f"  {threads} thread(s) {name:18s} min {min(ts):7.3f} s  median {median:7.3f} s"
                          f"  x{median / base:.2f} of torch;  CPU time median {cpu_median:7.3f} s"
                          f"  x{cpu_median / cpu_base:.2f}"
                          + (f";  x{median / ort_median:.2f} of onnxruntime" if name.startswith("openvino") else "")
                          + (f";  CPU x{cpu_median / statistics.median(cpu_times['torch+numba']):.2f} of torch+numba"
                             if name.startswith("onnxruntime") else ""))
                # before the next thread count's are built: with two sets alive at once Sigma-T's sessions and
                # compiled models (~9 GB resident) were killed by the OOM killer on a shared 24 GB machine
                del runners, logits
    print(f"\nload at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
