"""shared/reference/sigma beside the checkout: the published architecture's parity fixture and key maps."""
import os
from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "sigma"


def reference_file(name: str) -> Path:
    """A file of shared/reference/sigma; skipped where it is absent, but a failure in CI, which always has it."""
    path = REFERENCE_DIR / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference file {path} is missing: CI must have shared/ beside the clone")
        pytest.skip(f"reference file {path} is absent (shared/ belongs beside the checkout)")
    return path
