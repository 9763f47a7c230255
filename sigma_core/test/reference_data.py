"""shared/ beside the checkout: the published architecture's parity fixture and key maps (shared/reference/sigma),
and real sensor frames, labels and bags published by others (shared/realdata, see its README)."""
import os
from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE_DIR = SHARED_DIR / "reference" / "sigma"
REALDATA_DIR = SHARED_DIR / "realdata"


def reference_file(name: str) -> Path:
    """A file of shared/reference/sigma; skipped where it is absent, but a failure in CI, which always has it."""
    path = REFERENCE_DIR / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference file {path} is missing: CI must have shared/ beside the clone")
        pytest.skip(f"reference file {path} is absent (shared/ belongs beside the checkout)")
    return path


def realdata_file(name: str) -> Path:
    """A file of shared/realdata (e.g. "rgbt/mfnet/01234N.png"). A missing one fails the test, never skips it:
    these tests are the only check that real downloads load, and CI always has shared/ beside the clone."""
    path = REALDATA_DIR / name
    if not path.is_file():
        pytest.fail(f"real data file {path} is missing: shared/realdata must be beside the checkout (see its README)")
    return path
