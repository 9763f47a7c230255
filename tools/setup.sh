#!/usr/bin/env bash
# One-command, idempotent set-up of the development environment in .venv.
# Without a sourced ROS 2 (ROS_DISTRO unset) it installs the ROS 2 Kilted wheels
# from PyPI and builds sigma_msgs with CMake into the venv. With a system ROS 2
# sourced, the venv inherits its Python packages and sigma_msgs comes from colcon.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
python="${PYTHON:-python3}"

# Re-run only when an input of the set-up changed.
inputs=(tools/setup.sh tools/requirements-dev.txt sigma_core/setup.py sigma_core/package.xml
        sigma_ros/setup.py sigma_ros/package.xml sigma_msgs/CMakeLists.txt sigma_msgs/package.xml sigma_msgs/msg/*.msg)
stamp_value="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)-${ROS_DISTRO:-pip}"
stamp="$venv/.sigma-setup-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$stamp_value" ]]; then
  exit 0
fi

echo "[setup] creating/updating $venv"
if [[ ! -x "$venv/bin/python" ]]; then
  if [[ -n "${ROS_DISTRO:-}" ]]; then
    "$python" -m venv --system-site-packages "$venv"   # see rclpy from /opt/ros
  else
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -r tools/requirements-dev.txt

if [[ -z "${ROS_DISTRO:-}" ]]; then
  "${pip[@]}" ros-kilted-rclpy ros-kilted-rmw-fastrtps-cpp ros-kilted-std-msgs ros-kilted-sensor-msgs \
    ros-kilted-diagnostic-msgs ros-kilted-lifecycle-msgs ros-kilted-rosidl-default-generators ros-kilted-ament-cmake \
    ros-kilted-ament-package ros-kilted-ament-cmake-include-directories \
    ros-kilted-rosidl-core-generators ros-kilted-ament-cmake-ros-core catkin-pkg
  # The wheels' CMake exports name the wheel builder's Python and numpy include dirs.
  "$venv/bin/python" tools/fix_ros_wheel_cmake.py "$venv"
  echo "[setup] building sigma_msgs"
  mkdir -p build
  # shellcheck disable=SC1091
  (source "$venv/bin/activate"
   cmake -S sigma_msgs -B build/sigma_msgs -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF \
     -DPython3_EXECUTABLE="$venv/bin/python" >build/cmake-configure.log 2>&1 \
     || { cat build/cmake-configure.log; exit 1; }
   cmake --build build/sigma_msgs -j2 >build/cmake-build.log 2>&1 || { tail -50 build/cmake-build.log; exit 1; }
   cmake --install build/sigma_msgs >/dev/null
   touch build/COLCON_IGNORE)
fi
# compat mode puts the source folders on sys.path, so the repo-root folders of the same
# names cannot shadow the packages as namespace packages.
"${pip[@]}" --no-deps --config-settings editable_mode=compat -e sigma_core -e sigma_ros
# The native scan kernel is compiled now (a few seconds, into the user's cache), not at the first frame; without a
# C++ compiler this says why, and the numba scan is used.
"$venv/bin/python" -c "
from sigma_core.native_kernel import BackendUnavailable, cache_dir, library
try:
    library()  # built now (or found in the cache) and loaded
    print('[setup] native scan kernel ready in', cache_dir())
except BackendUnavailable as err:
    print(f'[setup] {err}; the numba scan is used instead')"
touch "$venv/COLCON_IGNORE"  # a colcon workspace around this repo must not build the wheels in here
echo "$stamp_value" >"$stamp"
echo "[setup] done"
