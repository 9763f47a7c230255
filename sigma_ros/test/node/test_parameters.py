"""Node parameters: validation with errors that name the parameter, runtime changes, the shipped YAML's agreement.

Parsing needs no ROS: these tests run without rclpy.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sigma_ros.node.parameters import (
    PARAMETERS,
    ConfigError,
    RuntimeParameters,
    check_palette_fits,
    parse_node_config,
)

YAML = Path(__file__).resolve().parents[2] / "config" / "sigma.yaml"


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    return str(path)


def test_defaults_and_overrides(ckpt):
    cfg = parse_node_config({"checkpoint": ckpt})
    assert cfg.device == "auto" and cfg.precision == "fp32" and cfg.modality is None
    assert cfg.sync_slop == 0.05 and cfg.sync_queue_size == 10 and cfg.input_qos == "sensor_data"
    assert cfg.thermal_range is None and cfg.palette is None and cfg.overlay_alpha == 0.5
    cfg = parse_node_config({"checkpoint": ckpt, "sync.slop": 1, "thermal.range": [20, 40], "device": "cuda:1",
                             "output.palette": [1, 2, 3, 4, 5, 6], "modality": "depth"})
    assert cfg.sync_slop == 1.0 and cfg.thermal_range == (20.0, 40.0) and cfg.device == "cuda:1"
    assert cfg.modality == "depth" and cfg.palette.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert cfg.dataset is None and parse_node_config({"checkpoint": ckpt, "dataset": "mfnet"}).dataset == "mfnet"
    assert cfg.threads == 0 and parse_node_config({"checkpoint": ckpt, "threads": 3}).threads == 3


@pytest.mark.parametrize(
    "override,match",
    [
        ({"device": "gpu"}, "device"),
        ({"precision": "fp8"}, "precision"),
        ({"modality": "lidar"}, "modality"),
        ({"sync.slop": 0.0}, "sync.slop"),
        ({"sync.slop": "fast"}, "sync.slop"),
        ({"sync.queue_size": 0}, "sync.queue_size"),
        ({"sync.queue_size": 2.5}, "sync.queue_size"),
        ({"input.qos": "best-effort"}, "input.qos"),
        ({"thermal.range": [40.0, 20.0]}, "thermal.range"),
        ({"thermal.range": [1.0]}, "thermal.range"),
        ({"depth.max_range": -1.0}, "depth.max_range"),
        ({"output.overlay_alpha": 1.5}, "overlay_alpha"),
        ({"output.palette": [1, 2]}, "palette"),
        ({"output.palette": [1, 2, 300]}, "palette"),
        ({"sigma.unknown": 1}, "unknown"),
        ({"chekpoint": "x.pt"}, "unknown parameter 'chekpoint': did you mean 'checkpoint'"),
        ({"checkpoint": 5}, "checkpoint must be a path"),
        ({"sync.slop": float("inf")}, "sync.slop must be a finite number"),
        ({"sync.slop": float("nan")}, "sync.slop must be a finite number"),
        ({"depth.max_range": float("inf")}, "depth.max_range must be a finite"),
        ({"thermal.range": 5.0}, "thermal.range must be a list"),
        ({"warmup.size": 480}, "warmup.size must be a list"),
        ({"warmup.size": [100000, 100000]}, "warmup.size must be .height, width. of 4..8192"),
        ({"output.palette": 5}, "output.palette must be a list"),
        ({"output.palette": True}, "output.palette must be a list"),
        ({"device": 1}, "device"),
        ({"depth.registered": "yes"}, "depth.registered"),
        ({"dataset": 3}, "dataset"),
        ({"diagnostics.period_s": 1e12}, r"diagnostics.period_s must be within 0.01..3600"),  # was an rclpy TypeError
        ({"diagnostics.period_s": 1e-9}, r"diagnostics.period_s must be within 0.01..3600"),  # a timer spinning a core
        ({"threads": -1}, r"threads must be 0 \(automatic\) or within 1..1024"),
        ({"threads": 100000}, r"threads must be 0 \(automatic\) or within 1..1024"),
        ({"threads": 2.5}, "threads must be an integer"),
        ({"threads": "4"}, "threads must be an integer"),
    ],
)
def test_invalid_values_name_the_parameter(ckpt, override, match):
    with pytest.raises(ConfigError, match=match):
        parse_node_config({"checkpoint": ckpt, **override})


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file.*nothing.pt"):
        parse_node_config({"checkpoint": str(tmp_path / "nothing.pt")})
    try:
        from sigma_core.assets import demo_checkpoint
    except ImportError:
        demo_checkpoint = None
    if demo_checkpoint is None or not Path(demo_checkpoint()).is_file():
        with pytest.raises(ConfigError, match="checkpoint is empty"):
            parse_node_config({})


def test_palette_must_match_the_model(ckpt):
    assert parse_node_config({"checkpoint": ckpt, "output.palette": []}).palette is None
    palette = parse_node_config({"checkpoint": ckpt, "output.palette": [0, 0, 0, 255, 255, 255]}).palette
    np.testing.assert_array_equal(palette, [[0, 0, 0], [255, 255, 255]])
    check_palette_fits(palette, 2)
    with pytest.raises(ConfigError, match="2 colours but the model has 3 classes"):
        check_palette_fits(palette, 3)


@pytest.mark.parametrize("value", [5, 5.0, True, "red", [1.5, 2.0, 3.0], [1, 2], None, {"r": 1}, float("nan")])
def test_every_runtime_change_is_answered_whatever_its_type(ckpt, value):
    changed = []
    runtime = RuntimeParameters(parse_node_config({"checkpoint": ckpt}), fits=lambda cfg: check_palette_fits(
        cfg.palette, 2), on_change=lambda old, new: changed.append(new))
    for name in ("output.palette", "output.overlay_alpha"):
        reason = runtime.validate({name: value})
        if value is None and name == "output.palette":  # unset: back to the checkpoint's palette
            assert reason is None
            continue
        assert reason and name in reason, (name, value, reason)
    assert runtime.validate({"sync.slop": 0.1}) == "parameter sync.slop is read once at start-up; restart the node " \
        "to change it"
    assert runtime.validate({"use_sim_time": True}) is None  # rclpy's own parameter, not ours to judge
    runtime.apply({"output.overlay_alpha": 1, "output.palette": [1, 2, 3, 4, 5, 6]})
    assert runtime.cfg.overlay_alpha == 1.0 and runtime.cfg.palette.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert changed == [runtime.cfg]


def test_a_managed_node_takes_configure_time_parameters_only_while_unconfigured(ckpt, tmp_path):
    runtime = RuntimeParameters(None, managed=True)  # unconfigured
    assert runtime.validate({"sync.slop": 0.1}) is None
    assert "no such file" in runtime.validate({"checkpoint": str(tmp_path / "missing.pt")})
    assert "read once at start-up" in runtime.validate({"lifecycle": False})  # read before configure
    runtime.cfg = parse_node_config({"checkpoint": ckpt})  # configured
    assert "read at configure: deactivate and clean up" in runtime.validate({"sync.slop": 0.1})


def test_parameters_import_without_rclpy():
    code = "import sys, sigma_ros.node.parameters; sys.exit('rclpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _flatten(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_shipped_yaml_documents_every_parameter_and_parses(ckpt):
    text = YAML.read_text()
    values = dict(_flatten(yaml.safe_load(text)["/**"]["ros__parameters"]))
    assert set(values) <= set(PARAMETERS)
    for name in PARAMETERS:
        assert name.split(".")[-1] + ":" in text, f"config/sigma.yaml does not document {name}"
    values["checkpoint"] = ckpt
    parse_node_config(values)


def test_parameters_ros_libraries_declare_are_accepted_and_typos_refused(ckpt):
    """diagnostic_updater's Updater declares two parameters on our node, rclpy a few: a params file or -p may set
    them. A typo of ours, or of theirs, is still refused, naming the closest known name."""
    ros = {"use_sim_time": True, "start_type_description_service": True, "diagnostic_updater.period": 2.0,
           "diagnostic_updater.use_fqn": False, "qos_overrides./parameter_events.publisher.depth": 10}
    parse_node_config({"checkpoint": ckpt, **ros})
    with pytest.raises(ConfigError, match="'diagnostics.perod_s': did you mean 'diagnostics.period_s'"):
        parse_node_config({"checkpoint": ckpt, "diagnostics.perod_s": 2.0})
    with pytest.raises(ConfigError, match="did you mean 'diagnostic_updater.period'"):
        parse_node_config({"checkpoint": ckpt, "diagnostic_updater.periood": 2.0})


def test_a_dumped_null_is_unset(ckpt):
    """`ros2 param dump` writes unset parameters as null; rcl reads that back as the string "null"."""
    unset = {"thermal.range": "null", "depth.max_range": "null", "output.palette": "null", "warmup.size": "~"}
    cfg = parse_node_config({"checkpoint": ckpt, **unset})
    assert (cfg.thermal_range, cfg.depth_max_range, cfg.palette, cfg.warmup_size) == (None, None, None, None)
    with pytest.raises(ConfigError, match="depth.max_range must be a number"):
        parse_node_config({"checkpoint": ckpt, "depth.max_range": "far"})


@pytest.mark.parametrize("name", [n for n, s in PARAMETERS.items() if s.bounds is not None])
def test_descriptor_bounds_agree_with_the_parser(name):
    """The range ROS enforces (and `ros2 param describe` shows) is the parser's: both ends pass, beyond fails."""
    spec = PARAMETERS[name]
    low, high = spec.bounds
    spec.parse(name, low)
    step = 1 if isinstance(low, int) else 1e-6
    with pytest.raises(ConfigError, match=name):
        spec.parse(name, low - step)
    if high not in (float("inf"), 2**63 - 1):  # an open end (ROS integers are int64): no parameter beyond it
        spec.parse(name, high)
        with pytest.raises(ConfigError, match=name):
            spec.parse(name, high + step * max(1, abs(high)))
    assert {"output.overlay_alpha", "diagnostics.period_s", "sync.queue_size", "output.depth"} <= {
        n for n, s in PARAMETERS.items() if s.bounds is not None}


@pytest.mark.parametrize("values, match", [
    ({"registration.mode": "homography"}, "needs registration.calibration_file or registration.homography"),
    ({"registration.mode": "homography", "registration.homography": [1, 0, 0, 0, 1, 0, 0, 0]},
     r"registration.homography must be a row-major 3x3 matrix \(9 numbers\)"),
    ({"registration.mode": "rig", "registration.calibration_file": "rig.yaml",
      "registration.translation": [0.06, 0, 0]},
     "are both set: the file holds the calibration; unset registration.translation"),
    ({"registration.homography": [1, 0, 0, 0, 1, 0, 0, 0, 1]}, "registration.mode is none"),
    ({"registration.mode": "rig", "registration.translation": [0.06, 0, float("nan")]}, "finite"),
    ({"registration.mode": "stereo"}, "registration.mode must be one of none, homography, rig"),
    ({"registration.distance_m": 0}, "registration.distance_m must be > 0"),
    # the other mode's parameter, which was silently ignored
    ({"registration.mode": "rig", "registration.translation": [0.06, 0, 0],
      "registration.homography": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
     "registration.homography is set but registration.mode is rig, which does not use it"),
    ({"registration.mode": "homography", "registration.translation": [0.06, 0, 0],
      "registration.homography": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
     "registration.translation is set but registration.mode is homography"),
    ({"registration.mode": "rig", "registration.calibration_file": "rig.yaml",
      "registration.rotation": [0, 0, 0.7071068, 0.7071068]},
     "registration.calibration_file and registration.rotation are both set"),
])
def test_registration_parameters_that_contradict_or_miss_name_what_to_set(ckpt, values, match):
    with pytest.raises(ConfigError, match=match):
        parse_node_config({"checkpoint": str(ckpt), **values})


def test_registration_from_camera_info_needs_only_the_pose(ckpt):
    cfg = parse_node_config({"checkpoint": str(ckpt), "registration.mode": "rig",
                             "registration.translation": [0.06, 0.0, 0.0]})
    assert cfg.calibration_file is None and cfg.registration_rotation == (0.0, 0.0, 0.0, 1.0)
