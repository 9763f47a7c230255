"""launch_testing proof of life of `replay_eval.launch.py`: bag player -> sigma_segmentation -> replay evaluator.

The installed launch file replays a small synthetic bag (SIGMA_LAUNCH_BAG) with every launch argument set; the
evaluator's exit ends the launch. After shutdown: every process exited 0, each argument is on the command line
of the process it is meant for, and the report in SIGMA_LAUNCH_OUT scored the replayed frames against the labels.

Run with a colcon install sourced: ``launch_test sigma_ros/test/launch_testing/replay_eval_launch_test.py`` or
through sigma_ros/test/test_launch_files.py. Environment: SIGMA_LAUNCH_BAG, SIGMA_LAUNCH_CHECKPOINT,
SIGMA_LAUNCH_OUT (all required).
"""
import json
import os
import unittest
from pathlib import Path

import launch
import launch_testing.actions
import pytest
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

ARGUMENTS = {
    "bag": os.environ.get("SIGMA_LAUNCH_BAG", ""),
    "checkpoint": os.environ.get("SIGMA_LAUNCH_CHECKPOINT", ""),
    "out": os.environ.get("SIGMA_LAUNCH_OUT", ""),
    "rgb_topic": "/camera/color/image_raw",
    "modal_topic": "/thermal/image_raw",
    "label_topic": "/camera/labels",
    "dataset": "",
    "device": "cpu",
    "rate": "2.0",
    "start_offset": "0.1",
    "use_sim_time": "true",
    "idle_timeout": "2.0",
}
EXPECTED_ON_COMMAND_LINE = {  # process name -> what its command line must hold
    "bag_player": [ARGUMENTS["bag"], "--rate 2.0", "--start-offset 0.1", "--clock",
                   "--topics /camera/color/image_raw /thermal/image_raw /camera/labels"],
    "replay_evaluator": ["--rgb-topic /camera/color/image_raw", "--modal-topic /thermal/image_raw",
                         "--label-topic /camera/labels", f"--out {ARGUMENTS['out']}", "--idle-timeout 2.0"],
    "sigma_node": ["rgb/image:=/camera/color/image_raw", "modal/image:=/thermal/image_raw"],
}


@pytest.mark.launch_test
def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("sigma_ros"), "launch", "replay_eval.launch.py")
    include = IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file),
                                       launch_arguments=list(ARGUMENTS.items()))
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestReplay(unittest.TestCase):
    def test_the_replay_runs_to_its_report(self, proc_output, proc_info):
        # The evaluator's exit ends the launch; the end of the active tests would stop it early (SIGINT): wait for
        # it to exit by itself (launch's shutdown of the others then takes longer than this test's return).
        proc_output.assertWaitFor("report: ", timeout=180, stream="stdout")
        (evaluator,) = [a for a in proc_info.processes() if a.process_details["name"].startswith("replay_evaluator")]
        proc_info.assertWaitForShutdown(process=evaluator, timeout=30)


@launch_testing.post_shutdown_test()
class TestAfterReplay(unittest.TestCase):
    def test_every_process_exited_cleanly(self, proc_info, proc_output):
        for info in proc_info:
            if info.returncode != 0:
                said = "".join(event.text.decode(errors="replace") for event in proc_output[info.action])
                self.fail(f"{info.process_name} exited with code {info.returncode}: {said[-1500:]}")

    def test_arguments_reach_their_processes(self, proc_info):
        commands = {action.process_details["name"]: " ".join(action.process_details["cmd"])
                    for action in proc_info.processes()}
        for name, expected in EXPECTED_ON_COMMAND_LINE.items():
            (command,) = [c for n, c in commands.items() if n.startswith(name)]
            for text in expected:
                self.assertIn(text, command, name)

    def test_the_report_scores_the_replayed_frames(self):
        summary = json.loads((Path(ARGUMENTS["out"]) / "summary.json").read_text())
        self.assertGreater(summary["frames"], 0, summary)
        self.assertGreater(summary["frames_scored"], 0, summary)
        self.assertIsNotNone(summary["metrics"], summary)
