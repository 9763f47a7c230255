"""The researcher's path: `pip install ./sigma_core` gets a wheel with the model, the presets and no ROS."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_wheel_carries_the_bundled_model_the_training_presets_and_the_native_scan_source(tmp_path):
    # Build from a copy: setuptools leaves build/ in the source folder, and stale files there leak into later wheels.
    source = tmp_path / "src"
    shutil.copytree(REPO / "sigma_core", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("sigma_core-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"sigma_core/assets/sigma_nano_synthetic.pt", "sigma_core/assets/sigma_nano_synthetic_depth.pt"} <= set(
        names)
    assert {"sigma_core/configs/mfnet.yaml", "sigma_core/configs/synthetic_demo.yaml"} <= set(names)
    assert "sigma_core/ops/scan_cpu.py" in names and "sigma_core/models/sigma.py" in names
    assert "sigma_core/ops/scan_native.cpp" in names  # built on first use: the source must ship
    assert not any(n.startswith("test/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "sigma-train = sigma_core.cli.train:main" in entry_points
    assert "sigma-import = sigma_core.cli.import_checkpoint:main" in entry_points
    assert "sigma-predict = sigma_core.cli.predict:main" in entry_points
