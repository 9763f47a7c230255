#!/usr/bin/env bash
# The test command: set-up (quick when nothing changed), ruff, then every package's pytest suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh
# shellcheck disable=SC1091
source tools/env.sh
# The real ROS 2 tools (ros2 launch, the ros2 CLI, launch_testing, message_filters, cv_bridge, sensor_msgs_py,
# diagnostic_updater, vision_msgs) that only ROS installs have: a system ROS 2 brings them; without one, the
# overlay beside the checkout builds them into .venv (its own stamp: a rerun with nothing changed is instant).
# CI must run the tests that need them: there a missing overlay is an error, not skipped tests.
overlay="$root/../shared/ros2-overlay"
mkdir -p build
ci=false
[[ "${CI:-}" =~ ^(1|true|TRUE|True|yes)$ ]] && ci=true
if [[ -z "${ROS_DISTRO:-}" ]]; then
  if [[ -f "$overlay/build_overlay.sh" ]]; then
    started=$SECONDS
    bash "$overlay/build_overlay.sh" "$root/.venv" >build/ros2-overlay.log 2>&1 \
      || { tail -20 build/ros2-overlay.log >&2; echo "[test] building $overlay failed (log: build/ros2-overlay.log)" >&2
           exit 1; }
    echo "[test] ROS 2 tools overlay ready ($((SECONDS - started)) s; log: build/ros2-overlay.log)"
  elif $ci; then
    echo "[test] CI needs the real ROS 2 tools: $overlay is missing (or source a ROS 2 install)" >&2
    exit 1
  else
    echo "[test] no $overlay and no ROS 2 install: the tests that need ros2 launch/CLI, message_filters, cv_bridge," \
      "... skip (pytest -rs says which)"
  fi
fi
echo "[test] ruff"
ruff check .
# rclpy and our messages must import here, or the ROS tests would only skip.
if ! python -c "import rclpy, sigma_msgs.msg"; then
  if [[ -n "${ROS_DISTRO:-}" ]]; then
    echo "[test] rclpy or sigma_msgs does not import: build the workspace with colcon and source install/setup.bash" >&2
  else
    echo "[test] rclpy or sigma_msgs does not import: rerun tools/setup.sh (rm .venv/.sigma-setup-stamp to force)" >&2
  fi
  exit 1
fi
if $ci && ! python -c "import launch_ros, launch_testing, ros2cli, message_filters, cv_bridge, sensor_msgs_py, \
diagnostic_updater, vision_msgs.msg" 2>/dev/null; then
  echo "[test] CI needs the real ROS 2 tools, and one of them does not import here" >&2
  exit 1
fi
# The Jazzy venv (below) installs while the main suite runs: pip is mostly waiting on files, not the CPUs.
jazzy=false
[[ $# -eq 0 && ( $ci == true || "${SIGMA_JAZZY:-}" == 1 ) && -z "${ROS_DISTRO:-}" ]] && jazzy=true
if $jazzy; then
  jazzy_started=$SECONDS
  nice -n 5 bash tools/jazzy_venv.sh >build/jazzy-venv.log 2>&1 &
  jazzy_setup=$!
fi
echo "[test] pytest"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# In CI the tests that need the real ROS 2 tools fail instead of skipping when one is missing (ros_tools.require).
$ci && export SIGMA_REQUIRE_ROS_TOOLS=1
# One test process per CPU (pytest-xdist, at most 4; SIGMA_TEST_WORKERS=0 runs them in this one), a test file to a
# process at a time so that a file's fixtures (a running node, an exported model) are made once. ROS tests keep to
# their own domain ids (sigma_ros/test/ros_tools.py: private_domain_id).
workers=(-n "${SIGMA_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile)
set +e
python -m pytest "${workers[@]}" "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "[test] pytest collected no tests" >&2
fi

# A robot's Python stack (tools/jazzy_venv.sh): ROS 2 Jazzy wheels, numpy 1.26, OpenCV 4. In CI (or SIGMA_JAZZY=1),
# without arguments: the tests of the code that meets ROS messages, numpy and OpenCV there (node parameters,
# conversions and lifecycle, compressed transport, offline replay, bag extraction, inference). The live-node,
# launch and CLI tests stay in the main run: they exercise ROS plumbing, not the numpy/OpenCV/rclpy versions.
if $jazzy; then
  started=$SECONDS
  if ! wait "$jazzy_setup"; then
    tail -20 build/jazzy-venv.log >&2
    echo "[test] tools/jazzy_venv.sh failed (log: build/jazzy-venv.log)" >&2
    exit 1
  fi
  echo "[test] pytest in .venv-jazzy (Jazzy, numpy 1.26, OpenCV 4; set-up $((SECONDS - jazzy_started)) s beside the main run)"
  set +e
  (unset SIGMA_REQUIRE_ROS_TOOLS  # no overlay there: the tests needing cv_bridge & co. skip, saying so
   export SIGMA_VENV="$root/.venv-jazzy"
   # shellcheck disable=SC1091
   source tools/env.sh
   python -m pytest -p no:cacheprovider sigma_ros/test/node/test_parameters.py \
     sigma_ros/test/node/test_image_conversion.py sigma_ros/test/node/test_point_cloud.py \
     sigma_ros/test/node/test_segmentation_node_lifecycle.py sigma_ros/test/node/test_segmentation_node_transport.py \
     sigma_ros/test/replay/test_replay_eval.py sigma_core/test/test_extraction.py sigma_core/test/test_inference.py \
     sigma_core/test/test_image_encoding.py sigma_core/test/test_mask_numba.py)
  jazzy_rc=$?
  set -e
  echo "[test] Jazzy run: $((SECONDS - started)) s"
  [[ $rc -eq 0 ]] && rc=$jazzy_rc
fi
exit $rc
