"""Point the ROS 2 wheels' exported CMake files at this venv's Python and numpy headers.

The wheels were built on another machine and their `*.cmake` exports name its
include directories, which makes CMake refuse to configure a package that uses them.
"""
import pathlib
import re
import sys
import sysconfig

import numpy


def main(venv: str) -> None:
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = 0
    for path in pathlib.Path(venv, "share").rglob("*.cmake"):
        text = path.read_text()
        new = text.replace("/opt/python/cp311-cp311/include/python3.11", python_include)
        new = re.sub(r"/[^\s;\"]*?/site-packages/numpy/(?:_core|core)/include", numpy_include, new)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"[setup] rewrote include paths in {changed} CMake files")


if __name__ == "__main__":
    main(sys.argv[1])
