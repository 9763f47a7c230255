"""package.xml and setup.py of the Python packages agree, and every console script resolves."""
import ast
import importlib
import pathlib
import xml.etree.ElementTree as ET

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def setup_kwargs(package: str) -> dict:
    tree = ast.parse((REPO / package / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            out = {}
            for kw in node.keywords:
                try:
                    out[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    out[kw.arg] = kw.value
            return out
    raise AssertionError(f"no setup() call in {package}/setup.py")


@pytest.mark.parametrize("package", ["sigma_core", "sigma_ros"])
def test_package_xml_matches_setup_py(package):
    xml = ET.parse(REPO / package / "package.xml").getroot()
    kwargs = setup_kwargs(package)
    assert xml.findtext("name") == package
    assert xml.findtext("version") == kwargs["version"]
    assert xml.find("export/build_type").text == "ament_python"
    assert (REPO / package / "resource" / package).exists()
    assert "install_scripts=$base/lib/" + package in (REPO / package / "setup.cfg").read_text()


@pytest.mark.parametrize("package", ["sigma_core", "sigma_ros"])
def test_console_scripts_resolve(package):
    scripts = setup_kwargs(package)["entry_points"]["console_scripts"]
    assert scripts, f"{package} registers no console scripts"
    for line in scripts:
        name, target = (s.strip() for s in line.split("="))
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), f"{name} -> {target}"


def test_msgs_package_declares_every_message():
    cmake = (REPO / "sigma_msgs" / "CMakeLists.txt").read_text()
    msgs = sorted(p.name for p in (REPO / "sigma_msgs" / "msg").glob("*.msg"))
    assert msgs == ["ClassMap.msg", "ClassStat.msg", "SegmentationStats.msg"]
    for m in msgs:
        assert f'"msg/{m}"' in cmake
    xml = ET.parse(REPO / "sigma_msgs" / "package.xml").getroot()
    assert xml.find("export/build_type").text == "ament_cmake"
    assert "rosidl_interface_packages" in [g.text for g in xml.findall("member_of_group")]
