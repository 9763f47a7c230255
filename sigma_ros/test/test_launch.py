"""launch/*.launch.py: compile here; where `launch` is installed, build their launch descriptions."""
import importlib.util
import py_compile
from pathlib import Path

import pytest
import yaml
from ros_tools import require

from sigma_ros.node.parameters import PARAMETERS

LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"
PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"
ARGUMENTS = {  # launch file -> arguments it must declare
    "sigma.launch.py": {"checkpoint", "dataset", "device", "precision", "lifecycle", "rgb_topic", "modal_topic",
                        "namespace", "params_file", "use_sim_time", "calibration_file", "registration_mode",
                        "rgb_camera_info_topic"},
    "replay_eval.launch.py": {"bag", "rgb_topic", "modal_topic", "label_topic", "checkpoint", "dataset", "rate",
                              "use_sim_time", "out"},
}


# The node parameters a user sets at launch (the rest through params_file).
USER_PARAMETERS = {"checkpoint", "dataset", "device", "precision", "modality", "lifecycle", "input.transport",
                   "input.qos"}


def launch_module(name: str):
    require("launch_ros")
    spec = importlib.util.spec_from_file_location(name.split(".")[0] + "_launch", LAUNCH_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_description(name: str):
    return launch_module(name).generate_launch_description()


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


def test_user_parameters_are_launch_arguments_that_reach_the_node():
    """lifecycle:=true was silently ignored (no such argument). Every argument of NODE_PARAMETERS names a node
    parameter and is declared; visiting the launch file with it set gives the node that parameter's value."""
    module = launch_module("sigma.launch.py")
    from launch import LaunchContext

    forwarded = {parameter for parameter, _, _ in module.NODE_PARAMETERS.values()}
    assert forwarded <= set(PARAMETERS) and USER_PARAMETERS <= forwarded
    description = module.generate_launch_description()
    assert set(module.NODE_PARAMETERS) <= {a.name for a in description.get_launch_arguments()}
    context = LaunchContext()
    context.launch_configurations.update({"lifecycle": "true", "precision": "fp16", "input_transport": "compressed"})
    for action in description.entities:
        nested = action.visit(context)
    node = nested[0]
    node._perform_substitutions(context)  # what launch_ros does before it starts the process
    # [(params file, True), (the overrides, written to a temporary file keyed by the node's name, True)]
    files = [Path(path) for path, _ in node._Node__expanded_parameter_arguments]
    assert files[0] == LAUNCH_DIR.parent / "config" / "sigma.yaml"
    overrides = yaml.safe_load(files[1].read_text())["/sigma_segmentation"]["ros__parameters"]
    assert overrides["lifecycle"] is True and overrides["precision"] == "fp16"
    assert overrides["input.transport"] == "compressed" and "device" not in overrides  # empty: the params file's


def test_readme_launch_argument_table_matches_the_launch_file():
    """README's table of sigma.launch.py arguments: every declared argument, in order, with its default."""
    text = (LAUNCH_DIR.parents[1] / "README.md").read_text()
    table = text.split("<!-- launch-arguments:sigma.launch.py -->", 1)[1].split("<!-- end launch-arguments -->")[0]
    rows = [line.split("|")[1:3] for line in table.strip().splitlines()[2:]]
    documented = {name.strip().strip("`"): default.strip() for name, default in rows}
    arguments = launch_description("sigma.launch.py").get_launch_arguments()  # skips without the ROS 2 launch tools
    from launch import LaunchContext

    context = LaunchContext()
    declared = {a.name: "".join(s.perform(context) for s in a.default_value) for a in arguments}
    assert list(documented) == list(declared)
    for name, default in declared.items():
        if name == "params_file":
            assert default.endswith("config/sigma.yaml") and "config/sigma.yaml" in documented[name]
        else:
            assert documented[name] == (f"`{default}`" if default else "empty"), name
