from setuptools import find_packages, setup

package_name = "sigma_core"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["assets/*", "configs/*.yaml", "ops/*.cpp"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "numba", "torch", "opencv-python-headless", "pyyaml", "tqdm", "rosbags", "matplotlib",
                      "pillow"],
    # onnx: run sigma-export files (no torch needed at run time; onnx and onnxruntime-extensions put the native scan
    # kernel in ONNX Runtime); export: write them
    extras_require={"train": ["tensorboard"], "gpu": ["triton"],
                    "onnx": ["onnxruntime", "onnx", "onnxruntime-extensions"],
                    "export": ["onnx", "onnxscript", "onnxruntime"]},
    zip_safe=False,
    maintainer="Sigma ROS maintainers",
    maintainer_email="maintainers@example.com",
    description="Sigma RGB-thermal/depth semantic segmentation: network, kernels, data, training. Imports no ROS.",
    license="MIT",
    entry_points={
        "console_scripts": [
            # `ros2 run sigma_core <name>` runs the short names; the sigma-* names are for pip users.
            "train = sigma_core.cli.train:main",
            "sigma-train = sigma_core.cli.train:main",
            "evaluate = sigma_core.cli.evaluate:main",
            "sigma-evaluate = sigma_core.cli.evaluate:main",
            "extract = sigma_core.cli.extract:main",
            "sigma-extract = sigma_core.cli.extract:main",
            "synth = sigma_core.cli.synth:main",
            "sigma-synth = sigma_core.cli.synth:main",
            "import = sigma_core.cli.import_checkpoint:main",
            "sigma-import = sigma_core.cli.import_checkpoint:main",
            "predict = sigma_core.cli.predict:main",
            "sigma-predict = sigma_core.cli.predict:main",
            "export = sigma_core.cli.export:main",
            "sigma-export = sigma_core.cli.export:main",
            "calibrate = sigma_core.cli.calibrate:main",
            "sigma-calibrate = sigma_core.cli.calibrate:main",
        ],
    },
)
