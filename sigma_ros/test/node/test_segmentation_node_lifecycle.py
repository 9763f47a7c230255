"""The managed node (``lifecycle:=true``) driven through the standard lifecycle services by a real client.

configure -> activate -> deactivate -> activate -> deactivate -> cleanup -> shutdown, with camera pairs
flowing all along: masks come out only while active. A configure that cannot load the model fails with
the reason in the log and on /diagnostics, and the node stays unconfigured.
"""
from __future__ import annotations

import gc
import signal
import threading
import time
import weakref

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from node_helpers import Streams, image, start_node  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sigma_core.data.bags import stamp_ns  # noqa: E402
from sigma_msgs.msg import ClassMap  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own


def _call(harness, srv_type, name, request):
    client = harness.node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=20), f"no service {name}"
        future = client.call_async(request)
        assert harness.wait_for(future.done, timeout=120), f"{name} did not answer"
        return future.result()
    finally:
        harness.node.destroy_client(client)


def _transition(harness, ns, transition_id) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition_id))
    return _call(harness, ChangeState, f"{ns}/sigma_segmentation/change_state", request).success


def _state(harness, ns) -> int:
    return _call(harness, GetState, f"{ns}/sigma_segmentation/get_state", GetState.Request()).current_state.id


class PairPublisher:
    """Publishes RGB + thermal pairs at 10 Hz from a thread until stopped."""

    def __init__(self, streams: Streams):
        self.streams = streams
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            stamp = time.time_ns()
            self.streams.rgb.publish(image(self.streams.rgb_frame(), "rgb8", stamp))
            self.streams.modal.publish(image(self.streams.thermal_frame(), "mono16", stamp))
            time.sleep(0.1)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


def _masks_during(harness, topic, seconds: float) -> int:
    harness.clear(topic)
    time.sleep(seconds)
    return len(harness.messages(topic))


def _masks_of_pairs_after(harness, topic, since_ns: int, seconds: float) -> int:
    """Masks, arriving within ``seconds``, of pairs stamped after ``since_ns``: one of an earlier pair may
    still be on the wire when a transition returns (late under load), one of a later pair is a fault."""
    time.sleep(seconds)
    return sum(stamp_ns(m) > since_ns for m in harness.messages(topic))


def test_lifecycle_transitions_with_masks_only_while_active(tmp_path_factory, checkpoints, harness):
    ns, mask_topic = "/l", "/l/segmentation/mask"
    ckpt = checkpoints["thermal"]
    node = start_node(tmp_path_factory, ns, {"checkpoint": ckpt, "lifecycle": "true"}, DOMAIN_ID,
                      ready="lifecycle node: waiting for configure")
    pairs = None
    try:
        harness.subscribe(Image, mask_topic)
        harness.subscribe(ClassMap, f"{ns}/segmentation/class_map", latched=True)
        pairs = PairPublisher(Streams(harness, ns))
        assert _state(harness, ns) == State.PRIMARY_STATE_UNCONFIGURED
        assert _masks_during(harness, mask_topic, 1.0) == 0

        assert _transition(harness, ns, Transition.TRANSITION_CONFIGURE), node.log()
        assert _state(harness, ns) == State.PRIMARY_STATE_INACTIVE
        assert "configured: model" in node.log()
        assert _masks_during(harness, mask_topic, 1.0) == 0, "masks while inactive"

        assert _transition(harness, ns, Transition.TRANSITION_ACTIVATE)
        assert harness.wait_for(lambda: harness.messages(mask_topic), timeout=30), node.log()
        assert harness.wait_for(lambda: harness.messages(f"{ns}/segmentation/class_map"), timeout=10)

        assert _transition(harness, ns, Transition.TRANSITION_DEACTIVATE)
        deactivated = time.time_ns()
        assert _state(harness, ns) == State.PRIMARY_STATE_INACTIVE
        assert _masks_of_pairs_after(harness, mask_topic, deactivated, 1.5) == 0, "masks after deactivate"

        started = time.time_ns()
        assert _transition(harness, ns, Transition.TRANSITION_ACTIVATE)  # the model was kept: no reload
        assert harness.wait_for(
            lambda: any(stamp_ns(m) > started for m in harness.messages(mask_topic)), timeout=30), node.log()

        assert _transition(harness, ns, Transition.TRANSITION_DEACTIVATE)
        assert _transition(harness, ns, Transition.TRANSITION_CLEANUP)
        cleaned_up = time.time_ns()
        assert _state(harness, ns) == State.PRIMARY_STATE_UNCONFIGURED
        assert "unconfigured: model released" in node.log()
        assert _masks_of_pairs_after(harness, mask_topic, cleaned_up, 1.0) == 0, "masks after cleanup"

        assert _transition(harness, ns, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert _state(harness, ns) == State.PRIMARY_STATE_FINALIZED
        assert node.log().count(": configured: model") == 1, "activate after deactivate must not reload the model"
        code, _ = node.stop(signal.SIGINT)
        assert code == 0 and "Traceback" not in node.log(), node.log()
    finally:
        if pairs is not None:
            pairs.close()
        node.kill()


def test_configure_failure_returns_failure_with_the_reason(tmp_path_factory, tmp_path, harness):
    ns = "/lf"
    missing = tmp_path / "missing.pt"
    node = start_node(tmp_path_factory, ns, {"checkpoint": missing, "lifecycle": "true",
                                             "diagnostics.period_s": 0.5}, DOMAIN_ID,
                      ready="lifecycle node: waiting for configure")
    try:
        harness.subscribe(DiagnosticArray, "/diagnostics")
        assert not _transition(harness, ns, Transition.TRANSITION_CONFIGURE)
        assert _state(harness, ns) == State.PRIMARY_STATE_UNCONFIGURED
        assert f"configure failed: parameter checkpoint: no such file '{missing}'" in node.log()

        def failed_status():
            return [s for a in harness.messages("/diagnostics") for s in a.status
                    if f"{ns}/sigma_segmentation" in s.name and s.message.startswith("configure failed")]

        assert harness.wait_for(failed_status, timeout=10)
        assert failed_status()[-1].level == b"\x02"
        assert node.proc.poll() is None, "a failed configure leaves the node running, unconfigured"
    finally:
        node.kill()


def test_cleanup_frees_the_model_and_configure_loads_it_again(checkpoints):
    """In process: after cleanup nothing holds the network any more (on a GPU, empty_cache then returns its memory)."""
    import torch
    from rclpy.parameter import Parameter

    from sigma_ros.node.segmentation_node import SigmaSegmentationNode

    ckpt = checkpoints["thermal"]
    threads_before = torch.get_num_threads()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = SigmaSegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(ckpt)), Parameter("device", value="cpu"),
        Parameter("lifecycle", value=True), Parameter("warmup.size", value=[32, 32])])
    try:
        assert node.seg is None and node.cfg is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        network = weakref.ref(node.seg.model)
        assert node.cfg.checkpoint == ckpt and network() is not None
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert network() is not None, "deactivate keeps the model"
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        gc.collect()
        assert network() is None and node.seg is None and node.cfg is None
        # threads: changeable while unconfigured, read by configure (torch's thread count is process-wide)
        assert node.set_parameters([Parameter("threads", value=2)])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS and node.seg is not None
        assert "2 CPU thread(s) (asked for)" in node._describe() and torch.get_num_threads() == 2
        refused = node.set_parameters([Parameter("threads", value=1)])[0]
        assert not refused.successful and torch.get_num_threads() == 2, "a configured node keeps its threads"
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS and node.seg is None
    finally:
        torch.set_num_threads(threads_before)
        node.destroy_node()
        rclpy.try_shutdown(context=context)


@pytest.mark.parametrize("value,reason", [("lots", "is not a thread count"), ("99999", "above 1024 threads")])
def test_configure_with_a_bad_omp_num_threads_fails_naming_it(checkpoints, monkeypatch, value, reason):
    """threads 0 (automatic) reads $OMP_NUM_THREADS at configure: a bad one is the reason configure fails, before
    any model is loaded (99999 threads made libgomp abort the process)."""
    from rclpy.parameter import Parameter

    from sigma_ros.node.segmentation_node import SigmaSegmentationNode

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = SigmaSegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoints["thermal"])), Parameter("device", value="cpu"),
        Parameter("lifecycle", value=True)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE and node.seg is None
        assert node._configure_error.startswith(f"parameter threads is 0 (automatic) and OMP_NUM_THREADS={value!r} "
                                                f"{reason}")
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
