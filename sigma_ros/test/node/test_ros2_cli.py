"""The ros2 CLI against the node started by `ros2 launch sigma_ros sigma.launch.py` from a colcon install.

What a robot integrator types: node info, topic echo /diagnostics, param get/set/describe/dump, a dump reloaded
as the params file of a second launch (the same configuration), and `ros2 lifecycle` through every transition of
a node launched with lifecycle:=true. Two launches per run; the ros2 daemon runs on the module's private
ROS_DOMAIN_ID and is stopped at the end.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from node_helpers import CLASSES
from ros_tools import Launch, installed_env, private_domain_id, require, ros2

DOMAIN_ID = private_domain_id()  # this module's own
NODE = "/sigma_segmentation"
pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def env(colcon_install):
    require("launch_ros")
    require("ros2param")
    env = installed_env(colcon_install, DOMAIN_ID)
    yield env
    ros2(env, "daemon", "stop", until=lambda out: True)


@pytest.fixture(scope="module")
def plain(env, checkpoints, tmp_path_factory):
    """The plain node; a params file also sets diagnostic_updater's own parameter (its Updater declares it)."""
    tmp = tmp_path_factory.mktemp("plain")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "warmup": {"size": [64, 80]}, "diagnostic_updater": {"period": 0.5}}}}))
    launch = Launch(env, tmp / "launch.log", "sigma_ros", "sigma.launch.py", f"checkpoint:={checkpoints['thermal']}",
                    f"params_file:={params}", "device:=cpu")
    try:
        assert launch.wait_log("ready:"), launch.log()[-3000:]
        yield launch
    finally:
        launch.stop()


def test_node_info_lists_the_outputs_and_no_lifecycle_interface(env, plain):
    info = ros2(env, "node", "info", NODE, until=lambda out: "segmentation/mask" in out)
    assert "/segmentation/mask: sensor_msgs/msg/Image" in info and "/diagnostics" in info, info
    assert "vision_msgs/msg/LabelInfo" in info, info
    # lifecycle false: a plain node, no transition_event topic and no lifecycle services
    assert "transition_event" not in info and "change_state" not in info, info


def test_diagnostics_echo_and_diagnostic_updater_parameter(env, plain):
    out = ros2(env, "topic", "echo", "/diagnostics", "--once", until=lambda out: "level" in out, timeout=60)
    assert "name: 'sigma_segmentation: /sigma_segmentation'" in out, out
    assert ros2(env, "param", "get", NODE, "diagnostic_updater.period").split()[-1] == "0.5"


def test_label_info_is_latched_vision_msgs(env, plain):
    """vision_msgs/LabelInfo (transient local, as Isaac ROS publishes class metadata), read by `ros2 topic echo`."""
    out = ros2(env, "topic", "echo", "/segmentation/label_info", "vision_msgs/msg/LabelInfo", "--once",
               "--qos-durability", "transient_local", "--qos-reliability", "reliable",
               until=lambda out: "class_name" in out, timeout=60)
    names = [line.split(":", 1)[1].strip().strip("'") for line in out.splitlines() if "class_name:" in line]
    assert names == CLASSES, out


def test_describe_shows_ranges_and_ros_refuses_out_of_range(env, plain):
    described = ros2(env, "param", "describe", NODE, "output.overlay_alpha")
    assert "Min value: 0.0" in described and "Max value: 1.0" in described, described
    assert "Read only: true" in ros2(env, "param", "describe", NODE, "sync.slop").replace("True", "true")
    assert "Min value: 1" in ros2(env, "param", "describe", NODE, "sync.queue_size")
    refused = ros2(env, "param", "set", NODE, "output.overlay_alpha", "1.5")
    assert "out of range" in refused, refused  # the descriptor's range, checked by rclpy before our callback
    assert "successful" in ros2(env, "param", "set", NODE, "output.overlay_alpha", "0.25")
    assert ros2(env, "param", "get", NODE, "output.overlay_alpha").split()[-1] == "0.25"
    assert "read-only" in ros2(env, "param", "set", NODE, "sync.slop", "0.1")


@pytest.mark.parametrize("arguments, said", [
    (["sigma.launch.py", "lifecycle:=ture"], 'Argument "lifecycle" provided value "ture" is not valid'),
    (["sigma.launch.py", "use_sim_time:=yes"], 'Argument "use_sim_time" provided value "yes" is not valid'),
    (["sigma.launch.py", "lifecyle:=true"], "has no launch argument 'lifecyle': did you mean 'lifecycle'?"),
    (["sigma.launch.py", "params_file:=/no/such/params.yaml"], "params_file: '/no/such/params.yaml' is not a file"),
    (["replay_eval.launch.py", "bag:=none", "use_sim_tim:=true"], "did you mean 'use_sim_time'?"),
    (["replay_eval.launch.py", "bag:=none", "use_sim_time:=ture"], 'provided value "ture" is not valid'),
])
def test_a_launch_argument_typo_is_refused_before_the_node_starts(env, arguments, said):
    """lifecycle:=ture and use_sim_time:=yes meant false, ros2 launch ignores an undeclared lifecyle:=true, and
    launch_ros only warns about a params_file that is not there: each brought the node up otherwise than asked."""
    run = subprocess.run(["ros2", "launch", "sigma_ros", *arguments], env=env,
                         capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 1 and said in out and "process started" not in out, out


def test_a_params_file_for_another_node_is_refused(env, tmp_path):
    """A dump of the node under namespace front, launched without it: rcl applied none of its values (another
    checkpoint, the bundled model, ran) without a word."""
    params = tmp_path / "dump.yaml"
    params.write_text(yaml.safe_dump({"/front/sigma_segmentation": {"ros__parameters": {"sync": {"slop": 0.1}}}}))
    run = subprocess.run(["ros2", "launch", "sigma_ros", "sigma.launch.py", f"params_file:={params}"], env=env,
                         capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "are for other nodes than /sigma_segmentation" in out, out
    assert "process started" not in out, out


@pytest.mark.parametrize("parameters, said", [
    ({"qos_overrides": {"/segmentation/mask": {"publisher": {"reliability": "best_effort"}}}},
     "parameter qos_overrides./segmentation/mask.publisher.reliability would be ignored"),
    # a dump holds both; editing one of them was silently undone by the other
    ({"diagnostics": {"period_s": 0.25}, "diagnostic_updater": {"period": 1.0}},
     "parameters diagnostics.period_s (0.25) and diagnostic_updater.period (1.0) disagree"),
])
def test_a_parameter_the_node_would_ignore_is_refused(env, tmp_path, parameters, said):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": parameters}}))
    run = subprocess.run(["ros2", "launch", "sigma_ros", "sigma.launch.py", f"params_file:={params}"], env=env,
                         capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert said in out and "exit code 2" in out, out


def test_runtime_use_sim_time_keeps_diagnostics_and_updater_parameters_are_refused(env, plain):
    """Set at run time, use_sim_time stopped /diagnostics (diagnostic_updater's timer on the node's clock, which
    stands still without /clock); diagnostic_updater.period "successfully" set changed nothing."""
    assert "successful" in ros2(env, "param", "set", NODE, "use_sim_time", "true")
    try:
        out = ros2(env, "topic", "echo", "/diagnostics", "--once", until=lambda out: "level" in out, timeout=30)
        assert "name: 'sigma_segmentation: /sigma_segmentation'" in out, out
    finally:
        assert "successful" in ros2(env, "param", "set", NODE, "use_sim_time", "false")
    for name, value in [("diagnostic_updater.period", "0.25"), ("diagnostic_updater.use_fqn", "true")]:
        refused = ros2(env, "param", "set", NODE, name, value)
        assert f"parameter {name} is read once at start-up" in refused, refused


def test_another_node_of_the_same_name_is_reported(plain):
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    twin = rclpy.create_node("sigma_segmentation", context=context)
    try:
        assert plain.wait_log("2 nodes named /sigma_segmentation run in this ROS domain", timeout=30), \
            plain.log()[-3000:]
    finally:
        twin.destroy_node()
        rclpy.shutdown(context=context)


def _parameters(dump: str) -> dict:
    return yaml.safe_load(dump)[NODE]["ros__parameters"]


def test_a_dump_reloads_as_params_file_and_lifecycle_launch_argument(env, plain, tmp_path):
    """`ros2 param dump` (with nulls for unset parameters and diagnostic_updater's) is a valid params file: a
    second launch from it, managed (lifecycle:=true), walks through every transition and, once configured,
    dumps the same configuration."""
    first = ros2(env, "param", "dump", NODE, until=lambda out: "ros__parameters" in out)
    assert "range: null" in first, first  # thermal.range, depth.max_range: unset
    (tmp_path / "dump.yaml").write_text(first)
    plain.stop()
    second = Launch(env, tmp_path / "launch.log", "sigma_ros", "sigma.launch.py", "lifecycle:=true",
                    f"params_file:={tmp_path / 'dump.yaml'}")
    try:
        assert second.wait_log("waiting for configure"), second.log()[-3000:]
        get = ("lifecycle", "get", NODE)
        assert ros2(env, *get, until=lambda out: "[" in out).startswith("unconfigured [1]")
        # Unconfigured, the parameters read at configure may change (a configure that failed on one was final:
        # they were read only); a bad value is refused at once; configured, they are fixed again.
        assert "successful" in ros2(env, "param", "set", NODE, "sync.slop", "0.2")
        slop = str(_parameters(first)["sync"]["slop"])
        assert "successful" in ros2(env, "param", "set", NODE, "sync.slop", slop)
        refused = ros2(env, "param", "set", NODE, "checkpoint", str(tmp_path / "missing.pt"))
        assert "parameter checkpoint: no such file" in refused, refused
        assert "read-only" in ros2(env, "param", "set", NODE, "lifecycle", "false")  # read before configure
        for transition, state in [("configure", "inactive [2]"), ("activate", "active [3]"),
                                  ("deactivate", "inactive [2]"), ("activate", "active [3]")]:
            assert "Transitioning successful" in ros2(env, "lifecycle", "set", NODE, transition), transition
            assert ros2(env, *get).startswith(state), transition
        assert "read at configure: deactivate and clean up" in ros2(env, "param", "set", NODE, "sync.slop", "0.2")
        again = _parameters(ros2(env, "param", "dump", NODE, until=lambda out: "ros__parameters" in out))
        expected = _parameters(first)
        assert again.pop("lifecycle") is True and expected.pop("lifecycle") is False
        assert again == expected
        for transition, state in [("deactivate", "inactive [2]"), ("cleanup", "unconfigured [1]"),
                                  ("shutdown", "finalized [4]")]:
            assert "Transitioning successful" in ros2(env, "lifecycle", "set", NODE, transition), transition
            assert ros2(env, *get).startswith(state), transition
        # SIGTERM, as a supervisor or `timeout` stops it, kills ros2 launch at once: its node ran on, orphaned.
        node_pid = int(re.search(r"process started with pid \[(\d+)\]", second.log())[1])
        second.proc.send_signal(signal.SIGTERM)
        second.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _running(node_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(node_pid), "the node outlived ros2 launch"
    finally:
        second.stop()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False
