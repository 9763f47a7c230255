"""The launch_testing proof-of-life tests of launch/*.launch.py (sigma_ros/test/launch_testing/), run under pytest
against the colcon install, each in its own pytest process (the installed environment) on a private ROS domain.

A launch test that passes, and the same test with a node that exits 2 (a checkpoint that does not exist): it
must fail, and say why in the node's own words.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from ros_tools import private_domain_id, run_launch_test

HERE = Path(__file__).resolve().parent / "launch_testing"  # the launch test files
DOMAIN_ID = private_domain_id()  # this module's own
pytestmark = pytest.mark.ros


def _launch_test(colcon_install, name: str, tmp_path: Path, **env_vars) -> subprocess.CompletedProcess:
    return run_launch_test(colcon_install, HERE / name, tmp_path, DOMAIN_ID, **env_vars)


@pytest.fixture(scope="module")
def sigma_params(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"sync": {"slop": 0.03},
                                                                 "warmup": {"size": [64, 80]}}}}))
    return path


def test_sigma_launch(colcon_install, tmp_path, sigma_params):
    from node_helpers import write_checkpoints

    checkpoint = write_checkpoints(tmp_path)["thermal"]
    run = _launch_test(colcon_install, "sigma_launch_test.py", tmp_path, SIGMA_LAUNCH_CHECKPOINT=str(checkpoint),
                       SIGMA_LAUNCH_PARAMS=str(sigma_params))
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-6000:] + run.stderr[-3000:]


def test_sigma_launch_fails_with_the_message_of_a_node_that_exits_2(colcon_install, tmp_path, sigma_params):
    missing = tmp_path / "no_such_model.pt"
    run = _launch_test(colcon_install, "sigma_launch_test.py", tmp_path, SIGMA_LAUNCH_CHECKPOINT=str(missing),
                       SIGMA_LAUNCH_PARAMS=str(sigma_params))
    assert run.returncode != 0, run.stdout[-6000:]
    # launch_testing stops at once and names the process, its exit code and its output
    assert "Process 'sigma_node-1' exited with 2" in run.stdout, run.stdout[-6000:]
    said = run.stdout[run.stdout.find("##### 'sigma_node-1' output #####"):]
    assert f"no such file '{missing}'" in said, run.stdout[-6000:]

