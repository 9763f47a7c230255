"""The live evaluator hears best-effort camera drivers when asked to (--input-qos sensor_data)."""
import os
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sigma_ros.node.qos import input_qos  # noqa: E402
from sigma_ros.replay.live_evaluator import EvaluatorOptions, ReplayEvaluator  # noqa: E402


@pytest.mark.parametrize("qos_name, expect_heard", [("sensor_data", True), ("reliable", False)])
def test_best_effort_camera_is_heard_only_with_sensor_data_qos(qos_name, expect_heard):
    os.environ["ROS_DOMAIN_ID"] = str(private_domain_id())
    rclpy.init()
    try:
        evaluator = ReplayEvaluator(EvaluatorOptions(rgb_topic="/cam/rgb", modal_topic="/cam/thermal",
                                                     input_qos=qos_name))
        camera = rclpy.create_node("best_effort_camera")
        pub = camera.create_publisher(Image, "/cam/rgb", input_qos("sensor_data"))
        executor = SingleThreadedExecutor()
        executor.add_node(evaluator)
        executor.add_node(camera)
        msg = Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
        deadline = time.monotonic() + (6.0 if expect_heard else 2.0)
        while time.monotonic() < deadline and evaluator.rgb_count == 0:
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.05)
        assert (evaluator.rgb_count > 0) == expect_heard
        evaluator.destroy_node()
        camera.destroy_node()
    finally:
        rclpy.shutdown()
