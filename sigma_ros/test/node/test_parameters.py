"""Node parameters: validation with errors that name the parameter, and the shipped YAML's agreement."""
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
from sigma_ros.node.parameters import PARAMETERS, ConfigError, parse_node_config, parse_palette  # noqa: E402

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
        ({"input.qos": "best_effort"}, "input.qos"),
        ({"thermal.range": [40.0, 20.0]}, "thermal.range"),
        ({"thermal.range": [1.0]}, "thermal.range"),
        ({"depth.max_range": -1.0}, "depth.max_range"),
        ({"output.overlay_alpha": 1.5}, "overlay_alpha"),
        ({"output.palette": [1, 2]}, "palette"),
        ({"output.palette": [1, 2, 300]}, "palette"),
        ({"sigma.unknown": 1}, "unknown"),
        ({"dataset": 3}, "dataset"),
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


def test_palette_must_match_the_model():
    assert parse_palette([], 3) is None
    np.testing.assert_array_equal(parse_palette([0, 0, 0, 255, 255, 255], 2), [[0, 0, 0], [255, 255, 255]])
    with pytest.raises(ConfigError, match="2 colours but the model has 3 classes"):
        parse_palette([0, 0, 0, 255, 255, 255], 3)


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
