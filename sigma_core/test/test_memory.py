"""The training memory estimate: measured activations against the peak memory of real training steps; warnings."""
import re
import subprocess
import sys

import pytest

from sigma_core.engine.memory import GIB, MemoryEstimate, memory_warning

# One real training step in a fresh process, after a small one (one-time set-up: kernels, gradients, AdamW
# state): the growth of its peak resident memory over the resident memory before it, against the estimated
# activations of the same model, batch and crop.
STEP = """
import gc, json, sys, torch
torch.set_num_threads(1)
from sigma_core.engine.builders import build_model
from sigma_core.engine.config import TrainConfig
from sigma_core.engine.memory import estimate_training_memory
from sigma_core.engine.train import parameter_groups
batch, h, w = (int(v) for v in sys.argv[1:4])
model = build_model(TrainConfig.load(None, ["model.variant=nano"]), 9)
estimate = estimate_training_memory(model, batch, (h, w))
optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4)
def step(x, y):
    torch.nn.functional.cross_entropy(model(x, x), y).backward()
    optimizer.step()
step(torch.randn(1, 3, 32, 32), torch.randint(0, 9, (1, 32, 32)))  # one-time set-up (kernels, optimiser state)
x, y = torch.randn(batch, 3, h, w), torch.randint(0, 9, (batch, h, w))
gc.collect()
def status(key):  # kB -> bytes, from this process's own memory map (ru_maxrss would carry the forking parent's)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS")
step(x, y)
peak = status("VmHWM")
# weights, gradients and AdamW state exist before the measured step: what it adds is its activations
print(json.dumps({"measured": peak - before, "estimated": estimate.activations()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("batch, h, w", [(2, 96, 128), (2, 160, 224)])
def test_estimate_is_close_to_the_peak_memory_of_a_real_training_step(batch, h, w):
    out = subprocess.run([sys.executable, "-c", STEP, str(batch), str(h), str(w)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = r["estimated"] / r["measured"]
    assert 0.8 < ratio < 1.5, r  # measured 1.01-1.15 on CPU for nano


def test_warning_names_settings_that_fit():
    estimate = MemoryEstimate(parameters=10_000_000, fixed_activation_bytes=1e6, activation_bytes_per_pixel=4000.0,
                              batch=8, crop=(480, 640))
    assert memory_warning(estimate, None) is None  # unknown: no guess
    assert memory_warning(estimate, int(2 * estimate.total())) is None
    available = 8 * GIB
    message = memory_warning(estimate, available)
    assert f"needs about {estimate.total() / GIB:.1f} GiB" in message and "8.0 GiB are available" in message
    assert "weights and optimiser state" in message and "153 MiB" in message  # 16 bytes x 10 M parameters
    budget = 0.9 * available
    batch = int(re.search(r"data\.batch_size=(\d+)", message).group(1))
    assert estimate.total(batch) <= budget < estimate.total(batch + 1)
    h, w = (int(v) for v in re.search(r"data\.crop_size=\[(\d+),(\d+)\]", message).groups())
    assert estimate.total(8, (h, w)) <= budget < estimate.total(8, (h + 32, w + 32))
    assert h % 32 == 0 and w % 32 == 0 and abs(w / h - 640 / 480) < 0.1
    # shared by 4 processes on one host: each gets a quarter
    assert "for 4 processes" in memory_warning(estimate, 4 * int(estimate.total()), processes_per_device=4)
    # nothing fits: say what to change
    assert "smaller model.variant" in memory_warning(estimate, 1000)
