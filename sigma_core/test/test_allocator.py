"""sigma_core.allocator: freed CPU memory kept for the next frame (glibc malloc), never over a user's own settings.

Each case runs in a new process: malloc's settings are process-wide and the decision is taken once per process.
"""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")

# A 96 MB map (above glibc's largest mmap threshold, 32 MB) filled, freed and filled again, as a network does
# frame after frame: the page faults of the later fills are what reuse saves.
REFILL = """
import json, resource, sys, torch
from sigma_core.allocator import reuse_freed_memory
state = reuse_freed_memory() if sys.argv[1] == "reuse" else "glibc defaults"
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def frame():  # two 96 MB maps alive at once, as in a layer
    return (torch.full((24 * 2**20,), 1.0) * 2).sum()
def frames():
    global before, after
    for _ in range(8):  # the first frames fault in either mode, until the heap has holes that fit
        frame()
    before = faults()
    for _ in range(4):
        frame()
    after = faults()
if sys.argv[2:] == ["thread"]:  # as the node's inference thread, started after the Segmenter
    import threading
    worker = threading.Thread(target=frames)
    worker.start()
    worker.join()
else:
    frames()
print(json.dumps({"state": state, "faults": after - before}))
"""


def _run(code: str, *args: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES",
                                                                                              "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_maps_are_reused_without_page_faults(where):
    kept = _run(REFILL, "reuse", where)
    default = _run(REFILL, "glibc", where)
    assert kept["state"] == "kept for reuse (glibc malloc)"
    pages = 4 * 2 * 96 * 2**20 // 4096  # 4 frames of two 96 MB maps, in 4 KB pages
    assert default["faults"] > pages // 2, default  # glibc mmaps and unmaps each one: the faults come back
    assert kept["faults"] < pages // 8, kept


@pytest.mark.parametrize("setting", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES", "LD_PRELOAD"])
def test_a_users_own_malloc_settings_are_left_alone(setting):
    value = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072", "LD_PRELOAD": " "}.get(setting, "131072")
    result = _run(REFILL, "reuse", **{setting: value})
    assert result["state"] == f"left as is: {setting} set"
    assert result["faults"] > 2 * 96 * 2**20 // 4096  # and malloc really is as the user left it


def test_the_cpu_segmenter_applies_it_and_says_so():
    code = """
import json
from sigma_core import Segmenter
from sigma_core.assets import demo_checkpoint
print(json.dumps({"state": Segmenter.from_checkpoint(demo_checkpoint(), device="cpu").cpu_memory}))
"""
    assert _run(code)["state"] == "kept for reuse (glibc malloc)"
