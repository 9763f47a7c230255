"""The live evaluator scores a label topic only where its ids are the model's classes; others are logged,
counted and left out (never silently scored on fewer pixels). Real DDS between two nodes on a private domain."""
import os
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sigma_msgs.msg import ClassMap  # noqa: E402
from sigma_ros.node.qos import latched_qos  # noqa: E402
from sigma_ros.replay.live_evaluator import EvaluatorOptions, ReplayEvaluator  # noqa: E402


def _mono8(stamp_s: int, values: np.ndarray) -> Image:
    return Image(header=Header(stamp=Time(sec=stamp_s), frame_id="cam"), height=values.shape[0],
                 width=values.shape[1], encoding="mono8", step=values.shape[1], data=values.astype(np.uint8).tobytes())


def _image(stamp_s: int, values: np.ndarray, encoding: str) -> Image:
    row = values.shape[1] * values.itemsize * (values.shape[2] if values.ndim == 3 else 1)
    return Image(header=Header(stamp=Time(sec=stamp_s), frame_id="cam"), height=values.shape[0],
                 width=values.shape[1], encoding=encoding, step=row, data=values.tobytes())


def test_labels_with_ids_beyond_the_models_classes_are_counted_not_scored():
    os.environ["ROS_DOMAIN_ID"] = str(private_domain_id())
    rclpy.init()
    try:
        evaluator = ReplayEvaluator(EvaluatorOptions(rgb_topic="/cam/rgb", modal_topic="/cam/thermal",
                                                     label_topic="/cam/label"))
        driver = rclpy.create_node("label_and_mask_source")
        class_map = driver.create_publisher(ClassMap, "segmentation/class_map", latched_qos())
        labels = driver.create_publisher(Image, "/cam/label", QoSProfile(depth=100))
        masks = driver.create_publisher(Image, "segmentation/mask", QoSProfile(depth=100))
        class_map.publish(ClassMap(ids=[0, 1, 2], names=["background", "road", "person"], colors=[0] * 9))
        executor = SingleThreadedExecutor()
        executor.add_node(evaluator)
        executor.add_node(driver)
        mask = np.zeros((4, 6), np.uint8)
        good, bad = np.ones((4, 6), np.uint8), np.ones((4, 6), np.uint8)
        bad[0, 0] = 7  # an 8-class labelling scored against a 3-class model
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not evaluator.class_map_event.is_set():
            executor.spin_once(timeout_sec=0.05)
        assert evaluator.class_map_event.is_set()
        colour = np.zeros((4, 6, 3), np.uint8)
        colour[..., 0] = 1  # a colour label: its first channel (all 1) is no class id
        wide = np.ones((4, 6), np.uint16)
        wide[0, 0] = 257  # a 16-bit label: 257 is not class 1 (it was cast to uint8)
        checks = ((1, _mono8(1, good), lambda: 1_000_000_000 in evaluator.confusion),
                  (2, _mono8(2, bad), lambda: evaluator.bad_labels),
                  (3, _image(3, colour, "rgb8"), lambda: evaluator.unreadable_labels),
                  (4, _image(4, wide, "mono16"), lambda: evaluator.bad_labels >= 2),
                  (5, _mono8(5, good[:2, :3]), lambda: evaluator.misfit_labels))  # not at the mask size
        for stamp_s, label, handled in checks:
            while time.monotonic() < deadline and not handled():  # publish until heard (DDS matching takes time)
                labels.publish(label)
                masks.publish(_mono8(stamp_s, mask))
                for _ in range(10):
                    executor.spin_once(timeout_sec=0.02)
        assert evaluator.bad_labels >= 2 and evaluator.unreadable_labels >= 1 and evaluator.misfit_labels >= 1
        assert list(evaluator.confusion) == [1_000_000_000]
        notes = evaluator.summary().notes
        assert any("labels on /cam/label were not scored: they hold class ids the model does not predict "
                   "(it has 3 classes)" in n for n in notes)
        assert any("messages on /cam/label hold no class ids (colour or float images)" in n for n in notes)
        assert any("labels on /cam/label were not scored: they are not at the mask's (RGB) size" in n for n in notes)
        evaluator.destroy_node()
        driver.destroy_node()
    finally:
        rclpy.shutdown()
