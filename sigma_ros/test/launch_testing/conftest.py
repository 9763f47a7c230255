"""The launch_testing files here run through ros_tools.run_launch_test, in their own pytest process with the colcon
install's environment: the main test run (no installed sigma_ros on its ament path) must not collect them itself."""
import os

collect_ignore_glob = [] if os.environ.get("SIGMA_LAUNCH_TESTING") == "1" else ["*_launch_test.py"]
