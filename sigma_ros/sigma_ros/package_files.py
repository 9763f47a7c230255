"""The files sigma_ros ships in share/sigma_ros (config/, launch/) and the Fast DDS profile environment.

Used by the launch files and the demo. Installed (colcon, ``ros2 launch``) the files come from the
package's share folder; from a checkout (pip ``-e``, ``python -m``) from the source tree. No ROS import
here beyond ``ament_index_python`` (optional), so launch files may import it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

__all__ = ["FASTDDS_PROFILE", "share_file", "fastdds_profile_env"]

FASTDDS_PROFILE = "fastdds_large_images.xml"  # in config/: shared memory segments sized for camera images


def share_file(*parts: str) -> Path:
    """``share/sigma_ros/<parts>``, e.g. ``share_file("config", "sigma.yaml")``: installed, else in the source tree.

    Raises FileNotFoundError naming every place looked at.
    """
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("sigma_ros")).joinpath(*parts))
    except (ImportError, LookupError):  # no ament index (pip ROS), or sigma_ros not installed in it
        pass
    candidates.append(Path(__file__).resolve().parents[1].joinpath(*parts))
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"sigma_ros file {'/'.join(parts)} not found in {', '.join(map(str, candidates))}: "
        "rebuild/reinstall sigma_ros (colcon build or tools/setup.sh)"
    )


def fastdds_profile_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``{"FASTDDS_DEFAULT_PROFILES_FILE": <shipped profile>}`` unless ``environ`` sets one already, else ``{}``.

    Fast DDS' default shared-memory segment is too small for camera images; the user's own profile wins.
    """
    if environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return {}
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(share_file("config", FASTDDS_PROFILE))}
