import os
import signal

# A suite started in the background by a shell without job control inherits SIGINT ignored, and every child process
# inherits that: the Ctrl-C tests of the tools and the node would then fail. Ctrl-C means what it normally does here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# The CI machine has 2 cores; a second OpenMP thread stalls badly under contention.
torch.set_num_threads(1)



import pytest  # noqa: E402
from reference_data import parity_fixture, write_published_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def fixture():
    """The published code's parity fixture (shared/reference/sigma/parity_small.pt), loaded once."""
    return parity_fixture()


@pytest.fixture
def published(tmp_path, fixture):
    """The parity network as the published training engine saves it (DDP prefix, optimizer, epoch)."""
    return write_published_checkpoint(tmp_path / "sigma_published.pth", fixture["state_dict"])
