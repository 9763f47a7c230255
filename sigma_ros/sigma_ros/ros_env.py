"""Make rclpy importable where ROS 2 comes from the PyPI wheels instead of a ROS installation.

Import this module before ``rclpy`` in every entry point of sigma_ros. On a real
ROS 2 install (``ROS_DISTRO`` set by its setup script) it does nothing. With the
``ros-kilted-*`` wheels, ``ros_wheels_bootstrapper`` re-executes the interpreter
once with ``LD_LIBRARY_PATH`` pointing at the wheels' shared libraries (a no-op
when ``tools/env.sh`` already set things up).
"""
import os

if not os.environ.get("ROS_DISTRO"):
    try:
        import ros_wheels_bootstrapper  # noqa: F401  (side effect: the re-exec described above)
    except ImportError:
        pass
