"""Launch the sigma_segmentation node.

    ros2 launch sigma_ros sigma.launch.py rgb_topic:=/camera/color/image_raw modal_topic:=/thermal/image_raw
    ros2 launch sigma_ros sigma.launch.py checkpoint:=/models/sigma.pt device:=cuda precision:=fp16 namespace:=front
    ros2 launch sigma_ros sigma.launch.py checkpoint:=/models/sigma_tiny_mfnet.pth dataset:=mfnet
    ros2 launch sigma_ros sigma.launch.py lifecycle:=true      # then: ros2 lifecycle set /sigma_segmentation configure
    ros2 launch sigma_ros sigma.launch.py calibration_file:=rig.yaml     # a thermal camera beside the RGB one

Arguments (`ros2 launch sigma_ros sigma.launch.py --show-args`): the node parameters in NODE_PARAMETERS (an empty
value keeps the params file's), calibration_file (registration.calibration_file; with it registration.mode is rig
unless registration_mode says homography), registration_mode, rgb_topic, modal_topic, camera_info_topic,
rgb_camera_info_topic (remaps of rgb/image, modal/image, modal/camera_info, rgb/camera_info), namespace, params_file
(default: the shipped config/sigma.yaml), use_sim_time. Unless FASTDDS_DEFAULT_PROFILES_FILE is already set, the node
gets the shipped Fast DDS profile for camera-sized messages (config/fastdds_large_images.xml).
"""
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sigma_ros.launch_arguments import BOOLEAN_CHOICES, is_true, refuse_unknown_arguments
from sigma_ros.node.parameters import INPUT_QOS_NAMES, MODALITIES, PRECISIONS, REGISTRATION_MODES, TRANSPORTS
from sigma_ros.package_files import fastdds_profile_env, share_file
from sigma_ros.stop_signals import launch_env

# Launch argument -> (node parameter it sets, description, the values launch accepts or None: any). Empty (the
# default) keeps the params file's value.
NODE_PARAMETERS = {
    "checkpoint": ("checkpoint", "Sigma checkpoint (the shipped params file has none: the bundled demo model)", None),
    "dataset": ("dataset", "a published checkpoint's dataset (mfnet, pst900, nyudepthv2, sunrgbd, a file)", None),
    "device": ("device", "auto, cpu, cuda or cuda:N", None),
    "precision": ("precision", "fp32, fp16 or bf16", PRECISIONS),
    "modality": ("modality", "thermal or depth (the checkpoint's by default)", MODALITIES),
    "lifecycle": ("lifecycle", "true: a managed node waiting for configure/activate (ros2 lifecycle set)",
                  BOOLEAN_CHOICES),
    "input_transport": ("input.transport", "raw (Image) or compressed (CompressedImage)", TRANSPORTS),
    "input_qos": ("input.qos", "sensor_data (best effort) or reliable", INPUT_QOS_NAMES),
}


def _sigma_node(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    params_file = arg("params_file")
    if not Path(params_file).expanduser().is_file():  # launch_ros would warn and start the node without it
        raise RuntimeError(f"launch argument params_file: {params_file!r} is not a file; give a parameters YAML "
                           "(e.g. a copy of the shipped config/sigma.yaml, or a `ros2 param dump`)")
    overrides = {"use_sim_time": is_true(arg("use_sim_time"))}
    for argument, (parameter, _, _) in NODE_PARAMETERS.items():
        value = arg(argument)
        if value:  # empty: keep the params file's value
            overrides[parameter] = is_true(value) if parameter == "lifecycle" else value
    if arg("calibration_file"):
        overrides["registration.calibration_file"] = arg("calibration_file")
        overrides["registration.mode"] = arg("registration_mode") or "rig"
    elif arg("registration_mode"):
        overrides["registration.mode"] = arg("registration_mode")
    env = {**fastdds_profile_env(), **launch_env()}  # launch_env: the processes stop when launch dies
    return [
        Node(
            package="sigma_ros",
            executable="sigma_node",
            name="sigma_segmentation",
            namespace=arg("namespace"),
            parameters=[params_file, overrides],
            remappings=[
                ("rgb/image", arg("rgb_topic")),
                ("modal/image", arg("modal_topic")),
                ("modal/camera_info", arg("camera_info_topic")),
                ("rgb/camera_info", arg("rgb_camera_info_topic")),
            ],
            additional_env=env,
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    # Closed sets declare their choices: launch refuses a typo (lifecycle:=ture) instead of it meaning false.
    arguments = [
        *(DeclareLaunchArgument(argument, default_value="", description=f"{text}; empty: params file",
                                choices=None if choices is None else ["", *choices])
          for argument, (_, text, choices) in NODE_PARAMETERS.items()),
        DeclareLaunchArgument("rgb_topic", default_value="rgb/image", description="RGB sensor_msgs/Image topic"),
        DeclareLaunchArgument("modal_topic", default_value="modal/image", description="thermal or depth Image"),
        DeclareLaunchArgument(
            "camera_info_topic", default_value="modal/camera_info", description="modality camera's CameraInfo"
        ),
        DeclareLaunchArgument("rgb_camera_info_topic", default_value="rgb/camera_info",
                              description="RGB camera's CameraInfo (registration.mode rig without a file)"),
        DeclareLaunchArgument("calibration_file", default_value="",
                              description="two-camera calibration (sigma-calibrate, Kalibr, OpenCV); empty: "
                                          "params file"),
        DeclareLaunchArgument("registration_mode", default_value="", choices=["", *REGISTRATION_MODES],
                              description="none, homography or rig; empty: rig with calibration_file, else the "
                                          "params file's"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument(
            "params_file", default_value=str(share_file("config", "sigma.yaml")), description="parameters YAML"
        ),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)",
                              choices=BOOLEAN_CHOICES),
    ]
    # Before anything starts: ros2 launch would ignore a misspelt argument.
    check = OpaqueFunction(function=refuse_unknown_arguments, args=["sigma.launch.py", [a.name for a in arguments]])
    return LaunchDescription([*arguments, check, OpaqueFunction(function=_sigma_node)])
