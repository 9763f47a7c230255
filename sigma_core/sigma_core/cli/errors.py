"""One-line error exits and the --help format of the command-line tools."""
from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from typing import Any, Callable, NoReturn


def interrupt_is_one_line(prog: str, message: str = "interrupted during start-up; nothing was written"):
    """Decorate a tool's ``main(argv)``: Ctrl-C while it imports torch or loads (before its own handler, which
    says what the work left behind) exits 130 with one line, not a KeyboardInterrupt traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            catch_ctrl_c()
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                fail(prog, message, 130)

        return run

    return wrap


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a tool's SIGTERM) as our tools raise it: a KeyboardInterrupt to every ``except`` clause. A subclass
    because CPython (3.10-3.13) flags a KeyboardInterrupt of exactly that type leaving exec/eval code (namedtuple,
    dataclasses: all through ``import torch``) as unhandled, and under ``python -m`` then exits by SIGINT (-2) after
    our one line, although ``main`` caught it (sigma_ros.stop_signals has the details)."""


def raise_interrupted(signum: int, frame: Any) -> None:
    """Signal handler: raise :class:`Interrupted` in the main thread."""
    raise Interrupted(signal.Signals(signum).name)


def catch_ctrl_c() -> None:
    """Ctrl-C raises :class:`Interrupted` from now on, unless the caller (an embedding program, a test) installed a
    SIGINT handler of its own. Call it first in a tool's ``main``."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_interrupted)


def fail(prog: str, error: BaseException | str, code: int = 1) -> NoReturn:
    """Print ``prog: error: message`` on one line to stderr and exit with ``code``."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default, also for options without a help text (argparse's own formatter
    shows it only beside a help text); flags, empty defaults and help texts that already say theirs show none."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and self._shows_default(action):
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)"

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default  # by identity: 0 == False, and a default of 0 (a seed, an offset) is worth showing
        return (bool(action.option_strings) and default is not None and default is not False
                and default is not argparse.SUPPRESS and default != "")
