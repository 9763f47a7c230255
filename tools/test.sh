#!/usr/bin/env bash
# The test command: set-up (quick when nothing changed), ruff, then every package's pytest suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh
# shellcheck disable=SC1091
source tools/env.sh
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
echo "[test] pytest"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
set +e
python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "[test] pytest collected no tests" >&2
fi
exit $rc
