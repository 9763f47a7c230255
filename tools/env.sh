# Source me: activates .venv (or $SIGMA_VENV, e.g. .venv-jazzy) and, without a system ROS 2, points the dynamic
# loader and ament at the ROS 2 wheels and the sigma_msgs built into the venv.
_sigma_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "${SIGMA_VENV:-$_sigma_root/.venv}/bin/activate"
if [[ -z "${ROS_DISTRO:-}" ]]; then
  _site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  _libs="$VIRTUAL_ENV/lib"
  for d in "$_site"/ros_*.libs; do [[ -d "$d" ]] && _libs="$_libs:$d"; done
  export LD_LIBRARY_PATH="$_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1  # the wheels' re-exec guard: already done here
  unset _site _libs
fi
unset _sigma_root
