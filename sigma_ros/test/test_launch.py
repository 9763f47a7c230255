"""launch/sigma.launch.py: compiles here; where `launch` is installed, builds a launch description."""
import importlib.util
import py_compile
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "sigma.launch.py"
PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"


def test_launch_file_compiles():
    py_compile.compile(str(LAUNCH), doraise=True)


def test_fastdds_profile_is_well_formed_and_sized_for_images():
    import xml.etree.ElementTree as ET

    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(PROFILE).getroot()
    shm = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", None, ns) == "SHM"]
    assert shm and int(shm[0].findtext("d:segment_size", None, ns)) >= 640 * 480 * 3 * 8
    participant = root.find(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"


def test_generate_launch_description():
    pytest.importorskip("launch_ros", reason="launch/launch_ros are only on real ROS 2 installs")
    from launch import LaunchContext, LaunchDescription

    spec = importlib.util.spec_from_file_location("sigma_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {a.name for a in description.get_launch_arguments()}
    assert {"checkpoint", "device", "rgb_topic", "modal_topic", "namespace", "params_file", "use_sim_time"} <= names
    context = LaunchContext()
    for action in description.entities:
        action.visit(context)
