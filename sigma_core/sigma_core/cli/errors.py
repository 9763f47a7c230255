"""One-line error exits for the command-line tools."""
from __future__ import annotations

import sys
from typing import NoReturn


def fail(prog: str, error: BaseException | str, code: int = 1) -> NoReturn:
    """Print ``prog: error: message`` on one line to stderr and exit with ``code``."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)
