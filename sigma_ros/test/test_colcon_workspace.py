"""The roboticist's path: colcon builds the three packages, and the installed node runs from the install space."""
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from ros_tools import installed_env, private_domain_id


@pytest.fixture(scope="module")
def workspace(colcon_install):
    return colcon_install


def test_colcon_installs_executables_launch_config_and_the_bundled_model(workspace):
    assert sorted(p.name for p in workspace.iterdir() if p.is_dir()) == ["sigma_core", "sigma_msgs", "sigma_ros"]
    # `ros2 run sigma_core train` and `ros2 run sigma_ros sigma_node` look in lib/<package>/.
    for pkg, exe in [("sigma_core", "train"), ("sigma_core", "evaluate"), ("sigma_core", "extract"),
                     ("sigma_core", "import"), ("sigma_ros", "sigma_node"), ("sigma_ros", "replay_eval"),
                     ("sigma_ros", "bag_player")]:
        assert (workspace / pkg / "lib" / pkg / exe).exists(), f"lib/{pkg}/{exe}"
    share = workspace / "sigma_ros" / "share" / "sigma_ros"
    for f in ["launch/sigma.launch.py", "launch/replay_eval.launch.py", "config/sigma.yaml",
              "config/fastdds_large_images.xml"]:
        assert (share / f).exists(), f
    env = installed_env(workspace)
    probe = ("import sigma_core, sigma_ros, sigma_msgs.msg, sigma_core.assets as a; "
             "print(sigma_core.__file__); print(sigma_ros.__file__); print(a.demo_checkpoint())")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    paths = out.stdout.split()
    assert all(p.startswith(str(workspace)) for p in paths), paths  # the install space, not the source checkout
    assert pathlib.Path(paths[2]).stat().st_size > 1_000_000


def test_installed_node_starts_with_the_bundled_model_and_stops_on_sigint(workspace):
    env = installed_env(workspace)
    env["ROS_DOMAIN_ID"] = str(private_domain_id())
    node = subprocess.Popen(
        [sys.executable, str(workspace / "sigma_ros" / "lib" / "sigma_ros" / "sigma_node"),
         "--ros-args", "-p", "device:=cpu", "-p", "warmup.size:=[48, 64]"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline, lines = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            line = node.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready:" in line:
                break
        assert any("ready:" in line and "model sigma_nano" in line for line in lines), "".join(lines)[-3000:]
        node.send_signal(signal.SIGINT)
        assert node.wait(timeout=15) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
