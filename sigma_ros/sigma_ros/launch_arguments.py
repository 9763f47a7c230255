"""Checks of the launch files' arguments that `ros2 launch` itself does not make.

`ros2 launch` silently ignores an argument the launch file does not declare (``lifecyle:=true``), and a
boolean argument read with ``text.lower() == "true"`` turns a typo (``lifecycle:=ture``) into false: either
way the node comes up other than asked, without a word. Boolean and closed-set arguments therefore declare
``choices`` (launch refuses another value, naming the valid ones, and ``--show-args`` lists them), and
:func:`refuse_unknown_arguments` refuses an undeclared name. Imports no ROS (launch files import it).
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

BOOLEAN_CHOICES = ["true", "false", "True", "False"]  # what launch's own conditions and ROS users write
# Arguments `ros2 launch` adds itself for its --launch-prefix options.
ROS2_LAUNCH_ARGUMENTS = ("launch-prefix", "launch-prefix-filter")


def is_true(text: str) -> bool:
    """A boolean argument's value (already one of BOOLEAN_CHOICES, or empty) as a bool."""
    return text.lower() == "true"


def _launched_file(argv: Sequence[str]) -> str:
    """The launch file `ros2 launch` was asked to run (its file name), or '' when this is not `ros2 launch`."""
    words = [a for a in argv[1:] if not a.startswith("-") and ":=" not in a]
    if Path(argv[0]).name != "ros2" or not words or words[0] != "launch":
        return ""
    files = [w for w in words[1:] if w.endswith((".py", ".xml", ".yaml", ".yml"))]
    return Path(files[0]).name if files else ""


def refuse_unknown_arguments(context: Any, launch_file: str, declared: Iterable[str],
                             argv: Sequence[str] = ()) -> None:
    """RuntimeError (launch prints it and exits 1) naming a ``name:=value`` argument of the command line that
    ``launch_file`` does not declare, with the closest declared name.

    Only when ``launch_file`` is the file `ros2 launch` runs: a launch file that includes it takes its own
    arguments on the command line. ``argv``: the process's (default ``sys.argv``).
    """
    if _launched_file(argv or sys.argv) != launch_file:
        return
    known = [*declared, *ROS2_LAUNCH_ARGUMENTS]
    for given in context.argv or ():
        name = given.split(":=", 1)[0]
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RuntimeError(f"{launch_file} has no launch argument {name!r}: {hint}its arguments are "
                           f"{', '.join(declared)} (ros2 launch sigma_ros {launch_file} --show-args)")
