"""launch_testing proof of life of `sigma.launch.py`, as ros2/demos and Isaac ROS test their launch files.

The installed launch file starts the node with every launch argument set away from its default; the active
tests check that each reaches the node (its parameters over the parameter service, its namespace and remaps in
the graph and on its command line) and that a mask comes out for an RGB + thermal pair with the RGB's stamp,
frame id and size. After shutdown, every process must have exited 0; a node that exits 2 fails the test with
its own error line.

Run with a colcon install sourced: ``launch_test sigma_ros/test/launch_testing/sigma_launch_test.py`` or under
pytest (sigma_ros/test/test_launch_files.py does, in a private ROS domain). Environment: SIGMA_LAUNCH_CHECKPOINT
(a thermal checkpoint; required), SIGMA_LAUNCH_PARAMS (params file, required).
"""
import os
import time
import unittest

import launch
import launch_testing.actions
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import parameter_value_to_python
from sensor_msgs.msg import Image

from sigma_ros.node.image_conversion import array_to_image_msg

NS = "/lt"
H, W = 64, 80
ARGUMENTS = {  # launch argument -> value, all away from the defaults
    "checkpoint": os.environ.get("SIGMA_LAUNCH_CHECKPOINT", ""),
    "params_file": os.environ.get("SIGMA_LAUNCH_PARAMS", ""),
    "dataset": "mfnet",  # a sigma_core checkpoint ignores it, with a warning: still the node's parameter
    "device": "cpu",
    "precision": "fp32",
    "modality": "thermal",
    "lifecycle": "false",
    "input_transport": "raw",
    "input_qos": "reliable",
    "registration_mode": "none",
    "namespace": NS.strip("/"),
    "rgb_topic": "/cam/rgb",
    "modal_topic": "/cam/thermal",
    "camera_info_topic": "/cam/thermal_info",
    "rgb_camera_info_topic": "/cam/rgb_info",
    "use_sim_time": "true",
}
PARAMETERS = {  # node parameter -> the value it must have
    "checkpoint": ARGUMENTS["checkpoint"], "dataset": "mfnet", "device": "cpu", "precision": "fp32",
    "modality": "thermal", "lifecycle": False, "input.transport": "raw", "input.qos": "reliable",
    "registration.mode": "none", "use_sim_time": True,
    "sync.slop": 0.03,  # from the params file
}
REMAPS = ["rgb/image:=/cam/rgb", "modal/image:=/cam/thermal", "modal/camera_info:=/cam/thermal_info",
          "rgb/camera_info:=/cam/rgb_info"]


@pytest.mark.launch_test
def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("sigma_ros"), "launch", "sigma.launch.py")
    include = IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file),
                                       launch_arguments=list(ARGUMENTS.items()))
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestSigmaLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.context = rclpy.Context()
        rclpy.init(context=cls.context)
        cls.node = rclpy.create_node("sigma_launch_test", context=cls.context)
        cls.executor = SingleThreadedExecutor(context=cls.context)
        cls.executor.add_node(cls.node)

    @classmethod
    def tearDownClass(cls):
        cls.executor.shutdown()
        cls.node.destroy_node()
        rclpy.shutdown(context=cls.context)

    def _spin_until(self, done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            if done():
                return True
        return done()

    def test_1_arguments_reach_the_node(self, proc_output, proc_info):
        proc_output.assertWaitFor("ready:", timeout=120)
        client = self.node.create_client(GetParameters, f"{NS}/sigma_segmentation/get_parameters")
        self.assertTrue(client.wait_for_service(timeout_sec=30))
        future = client.call_async(GetParameters.Request(names=list(PARAMETERS)))
        self.assertTrue(self._spin_until(future.done, 30))
        got = dict(zip(PARAMETERS, (parameter_value_to_python(v) for v in future.result().values)))
        self.assertEqual(got, PARAMETERS)
        # remaps on the node's command line (the camera_info ones are subscribed only in some modes) ...
        (action,) = [a for a in proc_info.processes() if "sigma_node" in a.process_details["name"]]
        command = " ".join(action.process_details["cmd"])
        for remap in REMAPS:
            self.assertIn(f"-r {remap}", command)
        # ... and the image ones in the graph, under the namespace (as discovery reports them: the parameter service
        # can answer before this process has heard of every subscription, seen with the suite on 2 busy cores)
        def subscribed_topics():
            return dict(self.node.get_subscriber_names_and_types_by_node("sigma_segmentation", NS))

        self._spin_until(lambda: {"/cam/rgb", "/cam/thermal"} <= set(subscribed_topics()), 30)
        subscribed = subscribed_topics()
        self.assertEqual(subscribed.get("/cam/rgb"), ["sensor_msgs/msg/Image"], subscribed)
        self.assertEqual(subscribed.get("/cam/thermal"), ["sensor_msgs/msg/Image"], subscribed)

    def test_2_a_mask_carries_the_rgb_stamp_frame_and_size(self, proc_output):
        import numpy as np

        proc_output.assertWaitFor("ready:", timeout=120)
        masks = []
        self.node.create_subscription(Image, f"{NS}/segmentation/mask", masks.append, 10)
        rgb = self.node.create_publisher(Image, "/cam/rgb", 10)  # input_qos:=reliable
        thermal = self.node.create_publisher(Image, "/cam/thermal", 10)
        rng = np.random.default_rng(0)
        sent = set()
        deadline = time.monotonic() + 60
        while not masks and time.monotonic() < deadline:  # until discovery is done and the node answers
            stamp = 1_000 + len(sent)
            for publisher, arr, encoding in [(rgb, rng.integers(0, 256, (H, W, 3), np.uint8), "rgb8"),
                                             (thermal, rng.integers(0, 65535, (H, W), np.uint16), "mono16")]:
                msg = array_to_image_msg(arr, encoding)
                msg.header.stamp.sec, msg.header.frame_id = stamp, "rgb_optical"
                publisher.publish(msg)
            sent.add(stamp)
            self._spin_until(lambda: bool(masks), 0.3)
        self.assertTrue(masks, "no mask within 60 s")
        mask = masks[0]
        self.assertIn(mask.header.stamp.sec, sent)
        self.assertEqual(mask.header.stamp.nanosec, 0)
        self.assertEqual((mask.header.frame_id, mask.height, mask.width, mask.encoding),
                         ("rgb_optical", H, W, "mono8"))


@launch_testing.post_shutdown_test()
class TestExitCodes(unittest.TestCase):
    def test_every_process_exited_cleanly(self, proc_info, proc_output):
        for info in proc_info:
            if info.returncode != 0:
                said = "".join(event.text.decode(errors="replace") for event in proc_output[info.action])
                errors = [line for line in said.splitlines() if "ERROR" in line] or said.splitlines()[-5:]
                self.fail(f"{info.process_name} exited with code {info.returncode}: " + " | ".join(errors))
