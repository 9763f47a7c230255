from glob import glob

from setuptools import find_packages, setup

package_name = "sigma_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "sigma_core"],
    zip_safe=False,
    maintainer="Sigma ROS maintainers",
    maintainer_email="maintainers@example.com",
    description="ROS 2 node for Sigma RGB-thermal/depth semantic segmentation.",
    license="MIT",
    entry_points={
        "console_scripts": [
            "sigma_node = sigma_ros.node:main",
            "replay_eval = sigma_ros.replay.replay_eval:main",
            "sigma-replay-eval = sigma_ros.replay.replay_eval:main",
            "bag_player = sigma_ros.replay.bag_player:main",
            "replay_evaluator = sigma_ros.replay.live_evaluator:main",
            "demo = sigma_ros.replay.demo:main",
            "sigma-demo = sigma_ros.replay.demo:main",
        ],
    },
)
