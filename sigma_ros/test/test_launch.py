"""launch/*.launch.py: compile here; where `launch` is installed, build their launch descriptions."""
import importlib.util
import py_compile
from pathlib import Path

import pytest

LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"
PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"
ARGUMENTS = {  # launch file -> arguments it must declare
    "sigma.launch.py": {"checkpoint", "dataset", "device", "rgb_topic", "modal_topic", "namespace", "params_file",
                        "use_sim_time", "calibration_file", "registration_mode", "rgb_camera_info_topic"},
    "replay_eval.launch.py": {"bag", "rgb_topic", "modal_topic", "label_topic", "checkpoint", "dataset", "rate",
                              "use_sim_time", "out"},
}


def launch_description(name: str):
    pytest.importorskip("launch_ros", reason="launch/launch_ros are only on real ROS 2 installs")
    spec = importlib.util.spec_from_file_location(name.split(".")[0] + "_launch", LAUNCH_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_launch_file_compiles(name):
    py_compile.compile(str(LAUNCH_DIR / name), doraise=True)


def test_fastdds_profile_is_well_formed_and_sized_for_images():
    import xml.etree.ElementTree as ET

    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(PROFILE).getroot()
    shm = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", None, ns) == "SHM"]
    assert shm and int(shm[0].findtext("d:segment_size", None, ns)) >= 640 * 480 * 3 * 8
    participant = root.find(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_generate_launch_description(name):
    description = launch_description(name)
    from launch import LaunchDescription

    assert isinstance(description, LaunchDescription)
    names = {a.name for a in description.get_launch_arguments()}
    assert ARGUMENTS[name] <= names


def test_sigma_launch_actions_visit_with_the_default_arguments():
    description = launch_description("sigma.launch.py")
    from launch import LaunchContext

    context = LaunchContext()
    for action in description.entities:
        action.visit(context)
