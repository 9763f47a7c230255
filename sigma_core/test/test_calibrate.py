"""sigma-calibrate on synthetic target recordings with a known rig (sigma_core.data.synthetic_rig)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from sigma_core.cli.calibrate import main as calibrate_main
from sigma_core.data.calibration import load_calibration
from sigma_core.data.synthetic import TOPICS
from sigma_core.data.synthetic_rig import separate_rig, write_target_bag

RIG = separate_rig((240, 320), (192, 256), baseline_m=0.06)


def _calibrate(bag, out, capsys):
    return _calibrate_with(bag, out, capsys)


def _calibrate_with(bag, out, capsys, *more):
    with pytest.raises(SystemExit) as exit_info:
        calibrate_main([str(bag), "--rgb-topic", TOPICS["rgb"], "--modal-topic", TOPICS["thermal"], "-o", str(out),
                        "--quiet", *more])
    return exit_info.value.code, capsys.readouterr()


def test_a_target_recording_gives_the_rig_within_half_a_pixel_and_2_mm(tmp_path, capsys):
    bag = write_target_bag(tmp_path / "calib", RIG, views=10, seed=1)
    out = tmp_path / "rig.yaml"
    assert calibrate_main([str(bag), "--rgb-topic", TOPICS["rgb"], "--modal-topic", TOPICS["thermal"], "-o",
                           str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    found = re.search(r"found in (\d+) of 10 RGB frames, (\d+) of 10 thermal frames, (\d+) of 10 pairs", printed)
    assert found and min(int(n) for n in found.groups()) >= 8, printed
    cal, truth = load_calibration(out), load_calibration(f"{bag}.rig.yaml")
    assert cal.rms_px["stereo"] <= 0.5 and cal.rms_px["rgb"] <= 0.5 and cal.rms_px["modal"] <= 0.5
    assert abs(cal.baseline_m - truth.baseline_m) <= 0.002
    np.testing.assert_allclose(cal.rotation, np.eye(3), atol=0.02)
    np.testing.assert_allclose(cal.modal.K, truth.modal.K, rtol=0.03)
    assert out.with_suffix(".png").is_file()  # the checker mosaic a person looks at
    # a file it did not write is never overwritten
    other = tmp_path / "notes.yaml"
    other.write_text("my notes\n")
    code, io = _calibrate(bag, other, capsys)
    assert code == 2 and other.read_text() == "my notes\n" and "not a calibration this tool wrote" in io.err


def test_a_target_never_seen_in_thermal_is_one_line_naming_the_counts(tmp_path, capsys):
    bag = write_target_bag(tmp_path / "cold", RIG, views=5, seed=2, thermal_visible=False)
    code, io = _calibrate(bag, tmp_path / "rig.yaml", capsys)
    lines = io.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, io.err
    assert "found in 5 of 5 RGB frames, 0 of 5 thermal frames and 0 of 5 pairs" in lines[0]
    assert "never showed in thermal" in lines[0] and not (tmp_path / "rig.yaml").exists()


def test_intrinsics_may_come_from_camera_info_in_the_bag(tmp_path, capsys):
    from sigma_core.data.synthetic_rig import TARGET_INFO_TOPICS

    bag = write_target_bag(tmp_path / "calib", RIG, views=6, seed=3)
    out = tmp_path / "rig.yaml"
    assert calibrate_main([str(bag), "--rgb-topic", TOPICS["rgb"], "--modal-topic", TOPICS["thermal"],
                           "--modal-info-topic", TARGET_INFO_TOPICS[1], "-o", str(out), "--quiet"]) == 0
    assert "thermal intrinsics from CameraInfo" in capsys.readouterr().out
    cal = load_calibration(out)
    np.testing.assert_array_equal(cal.modal.K, RIG.modal.K)  # taken, not estimated
    assert cal.modal.D == RIG.modal.D and abs(cal.baseline_m - 0.06) <= 0.003
    code, io = _calibrate_with(bag, tmp_path / "r2.yaml", capsys, "--rgb-info-topic", "/nope/camera_info")
    assert code == 2 and "--rgb-info-topic /nope/camera_info is not in" in io.err
