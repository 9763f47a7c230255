"""A forked child in a fresh interpreter, for tests of what survives fork: the parent runs ``parent_code``, forks,
the child runs ``child_code`` (an exception or a failed assert there is a failure), and a child that has not exited
within ``wait_s`` seconds is killed and reported as hung. OMP_NUM_THREADS is unset, so torch starts its OpenMP team."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_SCRIPT = """
import os, sys, time
{parent}
pid = os.fork()
if pid == 0:
    try:
{child}
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(1)
    os._exit(0)
for _ in range(int({wait_s} * 10)):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child exit", status)
        sys.exit(0 if status == 0 else 1)
    time.sleep(0.1)
os.kill(pid, 9)
print("child hung")
sys.exit(2)
"""


def assert_forked_child_runs(parent_code: str, child_code: str, wait_s: float = 60.0) -> None:
    """Fail (with the child's output) unless the child ran ``child_code`` and exited 0 within ``wait_s``."""
    script = _SCRIPT.format(parent=textwrap.dedent(parent_code),
                            child=textwrap.indent(textwrap.dedent(child_code), " " * 8), wait_s=wait_s)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=wait_s + 120)
    assert out.returncode == 0 and "child exit 0" in out.stdout, out.stdout + out.stderr[-2000:]
