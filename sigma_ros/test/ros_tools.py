"""The real ROS 2 tools in tests: packages that only ROS installs have, the colcon install space, ``ros2`` commands
and ``ros2 launch`` processes. Importable from every test folder (sigma_ros/test is on sys.path).

A test that needs a package from a ROS install (launch_ros, message_filters, cv_bridge, ...) skips without it,
naming it, except where SIGMA_REQUIRE_ROS_TOOLS=1 (tools/test.sh in CI, after building ../shared/ros2-overlay): there
a missing package fails the test.
"""
from __future__ import annotations

import fcntl
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]

# Fast DDS takes domain ids 0..232 (its port formula); 0 is every ROS install's default, so tests never use it.
_DOMAIN_IDS = range(1, 233)
_DOMAIN_LOCKS = Path(tempfile.gettempdir()) / "sigma_ros_test_domains"
_held_domains: list = []  # the lock files of this process's domain ids, open (so held) until it exits


def private_domain_id() -> int:
    """A ROS_DOMAIN_ID no other process on this machine holds: tests in parallel (pytest -n, two checkouts' suites)
    never see each other's nodes, topics or ``ros2`` daemon graph. Held with an flock on a file in the temporary
    folder until this process exits (the kernel drops it even on a crash). Raises RuntimeError when all are held."""
    _DOMAIN_LOCKS.mkdir(exist_ok=True)
    first = os.getpid() % len(_DOMAIN_IDS)  # where to start looking: processes started together try different ids
    for i in range(len(_DOMAIN_IDS)):
        domain_id = _DOMAIN_IDS[(first + i) % len(_DOMAIN_IDS)]
        lock = open(_DOMAIN_LOCKS / f"{domain_id}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _held_domains.append(lock)
        return domain_id
    raise RuntimeError(f"every ROS domain id {_DOMAIN_IDS.start}..{_DOMAIN_IDS.stop - 1} is held by test processes "
                       f"on this machine (lock files in {_DOMAIN_LOCKS}): stop some of them")


def require(module: str) -> ModuleType:
    """``import module``; skip (fail where SIGMA_REQUIRE_ROS_TOOLS=1) naming it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = (f"{module} is not installed ({e}): it comes with a ROS 2 install, or with ../shared/ros2-overlay "
                  "(bash ../shared/ros2-overlay/build_overlay.sh .venv)")
        if os.environ.get("SIGMA_REQUIRE_ROS_TOOLS") == "1":
            pytest.fail(f"this run must not skip it (SIGMA_REQUIRE_ROS_TOOLS=1): {reason}", pytrace=False)
        pytest.skip(reason)


def colcon_build(ws: Path) -> Path:
    """colcon build of the three packages into ``ws``; the install space."""
    env = dict(os.environ)
    prefix = sys.prefix  # the wheels' ROS 2 (or a sourced system ROS 2 through the inherited variables)
    env["CMAKE_PREFIX_PATH"] = os.pathsep.join(p for p in (env.get("CMAKE_PREFIX_PATH"), prefix) if p)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (env.get("AMENT_PREFIX_PATH"), prefix) if p)
    result = subprocess.run(
        ["colcon", "build", "--base-paths", str(REPO), "--build-base", str(ws / "build"),
         "--install-base", str(ws / "install"), "--event-handlers", "console_direct-"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return ws / "install"


def installed_env(install: Path, domain_id: Optional[int] = None) -> dict[str, str]:
    """The environment `source install/setup.sh` gives, read back from a shell (with ``ROS_DOMAIN_ID``)."""
    out = subprocess.run(["bash", "-c", f"source {install}/setup.sh && env -0"], capture_output=True, timeout=60,
                         env=dict(os.environ), check=True).stdout
    env = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


def ros2(env: dict, *args: str, until: Callable[[str], bool] = lambda out: bool(out.strip()),
         timeout: float = 30.0) -> str:
    """``ros2 ARGS`` (stdout + stderr), retried until ``until(output)`` holds or ``timeout`` s passed: the daemon
    answers empty ("Node not found") until it has discovered the graph."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(["ros2", *args], env=env, capture_output=True, text=True, timeout=60)
        out = result.stdout + result.stderr
        if until(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def run_launch_test(colcon_install: Path, path: Path, cwd: Path, domain_id: int,
                    **env_vars: str) -> subprocess.CompletedProcess:
    """A launch_testing file run by pytest in its own process, in the installed environment (``env_vars`` added):
    launch_testing starts the launch file's processes from the install space, as ``colcon test`` would."""
    require("launch_testing")
    env = installed_env(colcon_install, domain_id)
    env.update(env_vars, SIGMA_LAUNCH_TESTING="1")  # launch_testing/conftest.py lets that process collect them
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging", "-rf",
                           "--rootdir", str(cwd), str(path)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


class Launch:
    """``ros2 launch ARGS`` in its own session, its output in ``log_path``; stopped with SIGINT (as Ctrl-C)."""

    def __init__(self, env: dict, log_path: Path, *args: str):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(["ros2", "launch", *args], env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        return text in self.log()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (SIGTERM could orphan the node), then SIGKILL to the whole session if it hangs; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode
