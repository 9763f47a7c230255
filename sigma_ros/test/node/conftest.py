"""Fixtures of the node's real-process tests; each test module sets its own private ``DOMAIN_ID``."""
import pytest


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny thermal and a tiny depth checkpoint (the same random network), written once per module."""
    from node_helpers import write_checkpoints

    return write_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def harness(request):
    """The test process's rclpy node on the module's ROS domain (``DOMAIN_ID``), spinning in a thread."""
    from node_helpers import Harness

    h = Harness(request.module.DOMAIN_ID)
    yield h
    h.close()
