import os

os.environ.setdefault("ROS_DOMAIN_ID", "0")
