"""Live replay evaluation on a real ROS 2 install: bag player -> sigma_segmentation -> replay evaluator.

    ros2 launch sigma_ros replay_eval.launch.py bag:=/data/run1 rgb_topic:=/camera/color/image_raw \\
        modal_topic:=/thermal/image_raw label_topic:=/camera/labels out:=replay_report

Arguments: bag (required), rgb_topic, modal_topic, label_topic (empty: no accuracy), checkpoint
(empty: the params file's, i.e. the bundled model), dataset (a published checkpoint's), device, rate,
start_offset, use_sim_time (the player then publishes /clock and the node follows it), out (report
folder), idle_timeout (the evaluator stops this long after the last message). The node comes from
sigma.launch.py (same parameters file and Fast DDS profile); when the evaluator finishes and writes
its report, the whole launch shuts down. Without `launch` (pip ROS) run the three executables by hand, or `sigma-demo`.
"""
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    IncludeLaunchDescription,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sigma_ros.launch_arguments import BOOLEAN_CHOICES, is_true, refuse_unknown_arguments
from sigma_ros.package_files import fastdds_profile_env, share_file
from sigma_ros.stop_signals import launch_env


def _player_and_evaluator(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    sim_time = is_true(arg("use_sim_time"))
    env = {**fastdds_profile_env(), **launch_env()}  # launch_env: the processes stop when launch dies
    topics = [t for t in (arg("rgb_topic"), arg("modal_topic"), arg("label_topic")) if t]
    player_args = [arg("bag"), "--rate", arg("rate"), "--start-offset", arg("start_offset"),
                   "--topics", *topics, "--wait-timeout", "300",
                   # the node and the evaluator must both hear the first frame
                   "--wait-for-subscribers", f"{arg('rgb_topic')}=2", f"{arg('modal_topic')}=2",
                   # the evaluator subscribes at once; the node only after loading its model
                   "--wait-for-publisher", "/segmentation/class_map"]
    if sim_time:
        player_args.append("--clock")
    evaluator_args = ["--rgb-topic", arg("rgb_topic"), "--modal-topic", arg("modal_topic"), "--out", arg("out"),
                      "--idle-timeout", arg("idle_timeout"), "--save-overlays"]
    if arg("label_topic"):
        evaluator_args += ["--label-topic", arg("label_topic")]
    evaluator = Node(package="sigma_ros", executable="replay_evaluator", name="replay_evaluator",
                     arguments=evaluator_args, additional_env=env, output="screen")
    player = Node(package="sigma_ros", executable="bag_player", name="bag_player", arguments=player_args,
                  additional_env=env, output="screen")
    return [
        evaluator,
        player,
        RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=[EmitEvent(event=Shutdown(
            reason="replay evaluation finished"))])),
    ]


def generate_launch_description() -> LaunchDescription:
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(share_file("launch", "sigma.launch.py"))),
        launch_arguments={
            "checkpoint": LaunchConfiguration("checkpoint"),
            "dataset": LaunchConfiguration("dataset"),
            "device": LaunchConfiguration("device"),
            "rgb_topic": LaunchConfiguration("rgb_topic"),
            "modal_topic": LaunchConfiguration("modal_topic"),
            "use_sim_time": LaunchConfiguration("use_sim_time"),
        }.items(),
    )
    arguments = [
        DeclareLaunchArgument("bag", description="rosbag2 folder/file or ROS 1 .bag to replay"),
        DeclareLaunchArgument("rgb_topic", default_value="/camera/color/image_raw", description="RGB topic"),
        DeclareLaunchArgument("modal_topic", default_value="/thermal/image_raw", description="thermal/depth"),
        DeclareLaunchArgument("label_topic", default_value="", description="mono8 labels; empty: none"),
        DeclareLaunchArgument("checkpoint", default_value="", description="Sigma checkpoint; empty: params"),
        DeclareLaunchArgument("dataset", default_value="", description="a published checkpoint's dataset"),
        DeclareLaunchArgument("device", default_value="", description="auto, cpu, cuda[:N]; empty: params"),
        DeclareLaunchArgument("rate", default_value="1.0", description="replay speed factor"),
        DeclareLaunchArgument("start_offset", default_value="0.0", description="seconds of the bag to skip"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="replay /clock, node uses it",
                              choices=BOOLEAN_CHOICES),
        DeclareLaunchArgument("out", default_value="replay_report", description="report folder"),
        DeclareLaunchArgument("idle_timeout", default_value="3.0", description="evaluator stops when quiet"),
    ]
    # Before anything starts: ros2 launch would ignore a misspelt argument.
    check = OpaqueFunction(function=refuse_unknown_arguments,
                           args=["replay_eval.launch.py", [a.name for a in arguments]])
    return LaunchDescription([*arguments, check, node, OpaqueFunction(function=_player_and_evaluator)])
