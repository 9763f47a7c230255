"""GPU deployment check: the exported file in ONNX Runtime's CUDA and TensorRT providers against torch CUDA.

    python benchmarks/onnx_gpu.py                      # nano and tiny (Sigma-T) at 480x640, batch 1
    python benchmarks/onnx_gpu.py --variants tiny --iters 50

Needs a CUDA GPU, torch with CUDA and onnxruntime-gpu (TensorRT for its provider; without it those rows are
skipped and said so). A GPU machine has no internet: bring the onnxruntime-gpu (and onnx, onnxscript) wheels.
Without a GPU it prints that it is ready and what it needs, and exits 0.

For each variant: exports fp32 and fp16 files fixed at the size (sigma_core.export; TensorRT prefers
static shapes), then times, after warm-up (a TensorRT engine is built on the first run, its build time
printed), the median forward of: torch CUDA fp32 and fp16 (autocast, the Segmenter's policy), ORT CUDA fp32
and fp16, ORT TensorRT fp32 and fp16 (trt_fp16_enable). Prints FPS, the largest logit difference from
torch fp32, and the mask agreement with torch fp32 (the fp16 target is >= 99.5 % of pixels).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def ready_or_exit() -> None:
    try:
        import torch
    except ImportError:
        torch = None
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    if torch is None or not torch.cuda.is_available() or "CUDAExecutionProvider" not in providers:
        print("benchmarks/onnx_gpu.py is ready; this machine cannot run it: needs a CUDA GPU "
              f"(torch CUDA: {bool(torch and torch.cuda.is_available())}) and onnxruntime-gpu "
              f"(providers here: {providers or 'onnxruntime not installed'}). Run it on a GPU machine.")
        sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["nano", "tiny"])
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640])
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    ready_or_exit()
    import numpy as np
    import onnxruntime as ort
    import torch

    from sigma_core import build_sigma
    from sigma_core.checkpoints import CheckpointMeta
    from sigma_core.data.modality import ModalityScaling
    from sigma_core.export import export_onnx

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    height, width = args.size
    available = ort.get_available_providers()
    print(f"GPU {torch.cuda.get_device_name()}; onnxruntime {ort.__version__} providers {available}")
    for variant in args.variants:
        torch.manual_seed(0)
        model = build_sigma(variant).eval()
        meta = CheckpointMeta(config=model.config, class_names=[f"c{i}" for i in range(model.config.num_classes)],
                              palette=[[i, i, i] for i in range(model.config.num_classes)],
                              scaling=ModalityScaling("thermal"))
        rgb, modal = (torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(i)) for i in range(2))
        feeds = {"rgb": rgb.numpy(), "modal": modal.numpy()}
        cuda_model = model.cuda()
        with torch.inference_mode():
            reference = cuda_model(rgb.cuda(), modal.cuda()).float().cpu().numpy()
        rows = []

        gpu_inputs = (rgb.cuda(), modal.cuda())

        def torch_run(fp16: bool, net=cuda_model, inputs=gpu_inputs):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
                out = net(*inputs)
            torch.cuda.synchronize()
            return out.float().cpu().numpy()

        rows += [("torch CUDA fp32", lambda: torch_run(False)), ("torch CUDA fp16", lambda: torch_run(True))]
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for precision in ("fp32", "fp16"):
                files[precision] = Path(tmp) / f"{variant}_{precision}.onnx"
                model.cpu()
                report = export_onnx(model, meta, files[precision], source=variant, height=height, width=width,
                                     precision=precision, check_size=(height, width))
                print(f"{variant} {precision}: exported in {report.seconds:.0f} s, {report.file_bytes / 1e6:.1f} MB")
            cuda_model = model.cuda()
            for precision, path in files.items():
                sessions = [("ORT CUDA", [("CUDAExecutionProvider", {})])]
                if "TensorrtExecutionProvider" in available:
                    trt = {"trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
                           "trt_engine_cache_path": tmp}
                    sessions.append(("ORT TensorRT", [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider"]))
                else:
                    print("  TensorrtExecutionProvider not available: TensorRT rows skipped")
                for name, providers in sessions:
                    start = time.perf_counter()
                    session = ort.InferenceSession(str(path), providers=providers)
                    session.run(None, feeds)  # builds the TensorRT engine
                    print(f"  {name} {precision}: session + first run {time.perf_counter() - start:.1f} s")
                    rows.append((f"{name} {precision}", lambda s=session, f=feeds: s.run(None, f)[0]))
        for name, run in rows:
            out = run()
            times = []
            for _ in range(args.iters):
                start = time.perf_counter()
                out = run()
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            agreement = float((out.argmax(1) == reference.argmax(1)).mean())
            print(f"{variant} {name:22s} {1 / median:7.1f} FPS  median {median * 1e3:7.2f} ms  max |diff| "
                  f"{float(np.abs(out - reference).max()):.3g}  masks {agreement:.3%} equal to torch fp32")


if __name__ == "__main__":
    main()
