"""replay_eval.launch.py under launch_testing (sigma_ros/test/launch_testing/replay_eval_launch_test.py), against
the colcon install: a 2-second synthetic bag replayed at twice its speed through the node into a scored report."""
from pathlib import Path

import pytest
from replay_helpers import synthetic_bag, tiny_checkpoint
from ros_tools import private_domain_id, run_launch_test

LAUNCH_TEST = Path(__file__).resolve().parents[1] / "launch_testing" / "replay_eval_launch_test.py"
DOMAIN_ID = private_domain_id()  # this module's own
pytestmark = pytest.mark.ros


def test_replay_eval_launch(colcon_install, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    synthetic_bag(tmp_path / "bag", seconds=2.0)
    run = run_launch_test(colcon_install, LAUNCH_TEST, tmp_path, DOMAIN_ID, SIGMA_LAUNCH_BAG=str(tmp_path / "bag"),
                          SIGMA_LAUNCH_CHECKPOINT=str(checkpoint), SIGMA_LAUNCH_OUT=str(tmp_path / "report"))
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-6000:] + run.stderr[-3000:]
