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
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sigma_ros.package_files import fastdds_profile_env, share_file

# Launch argument -> (node parameter it sets, description). Empty (the default) keeps the params file's value.
NODE_PARAMETERS = {
    "checkpoint": ("checkpoint", "Sigma checkpoint; empty: params file (the shipped one: the bundled demo model)"),
    "dataset": ("dataset", "a published checkpoint's dataset (mfnet, pst900, nyudepthv2, sunrgbd, a file)"),
    "device": ("device", "auto, cpu, cuda or cuda:N"),
    "precision": ("precision", "fp32, fp16 or bf16"),
    "modality": ("modality", "thermal or depth (the checkpoint's by default)"),
    "lifecycle": ("lifecycle", "true: a managed node waiting for configure/activate (ros2 lifecycle set)"),
    "input_transport": ("input.transport", "raw (Image) or compressed (CompressedImage)"),
    "input_qos": ("input.qos", "sensor_data (best effort) or reliable"),
}


def _boolean(text: str) -> bool:
    return text.lower() in ("true", "1", "yes")


def _sigma_node(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {"use_sim_time": _boolean(arg("use_sim_time"))}
    for argument, (parameter, _) in NODE_PARAMETERS.items():
        value = arg(argument)
        if value:  # empty: keep the params file's value
            overrides[parameter] = _boolean(value) if parameter == "lifecycle" else value
    if arg("calibration_file"):
        overrides["registration.calibration_file"] = arg("calibration_file")
        overrides["registration.mode"] = arg("registration_mode") or "rig"
    elif arg("registration_mode"):
        overrides["registration.mode"] = arg("registration_mode")
    env = fastdds_profile_env()
    return [
        Node(
            package="sigma_ros",
            executable="sigma_node",
            name="sigma_segmentation",
            namespace=arg("namespace"),
            parameters=[arg("params_file"), overrides],
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
    return LaunchDescription(
        [
            *(DeclareLaunchArgument(argument, default_value="", description=f"{text}; empty: params file")
              for argument, (_, text) in NODE_PARAMETERS.items()),
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
            DeclareLaunchArgument("registration_mode", default_value="",
                                  description="none, homography or rig; empty: rig with calibration_file, else the "
                                              "params file's"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
            DeclareLaunchArgument(
                "params_file", default_value=str(share_file("config", "sigma.yaml")), description="parameters YAML"
            ),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
            OpaqueFunction(function=_sigma_node),
        ]
    )
