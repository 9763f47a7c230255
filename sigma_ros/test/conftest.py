import os
import signal

# A suite started in the background by a shell without job control inherits SIGINT ignored, and every child process
# inherits that: the Ctrl-C tests of the tools and the node would then fail. Ctrl-C means what it normally does here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# One model thread, as tools/test.sh: an in-process node with threads 0 (automatic) sets torch's process-wide count
# from it, for every later test too (else all CPUs but one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402

# This test process's own ROS domain (a user's ROS_DOMAIN_ID would put the tests among a robot's nodes, and two
# suites side by side, or pytest -n workers, among each other's): for what runs without a module's own id. A launch
# test's pytest process (ros_tools.run_launch_test) stays in the domain its parent test holds for it.
if os.environ.get("SIGMA_LAUNCH_TESTING") != "1":
    os.environ["ROS_DOMAIN_ID"] = str(private_domain_id())

# shared/ lies beside the checkout (CI has it there too).
REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "sigma"


@pytest.fixture(scope="session")
def published_parity(tmp_path_factory):
    """(path, fixture): the published code's parity network (shared/reference/sigma/parity_small.pt) written
    as the published training engine writes a DistributedDataParallel run: state dict under "model" with
    "module." prefixes, beside optimizer state, epoch and iteration; and a 9-line class list for it."""
    import torch

    source = REFERENCE_DIR / "parity_small.pt"
    if not source.is_file():
        pytest.fail(f"{source} is missing: shared/ belongs beside the checkout")
    fixture = torch.load(source, map_location="cpu", weights_only=True)
    root = tmp_path_factory.mktemp("published")
    path = root / "sigma_parity_published.pth"
    torch.save({"model": {"module." + key: value for key, value in fixture["state_dict"].items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5, "params": []}]},
                "epoch": 500, "iteration": 50000}, path)
    classes = root / "classes.txt"
    classes.write_text("".join(f"class {i}\n" for i in range(9)))
    return {"checkpoint": path, "classes": classes, "fixture": fixture}


@pytest.fixture(scope="session")
def colcon_install(tmp_path_factory):
    """The three packages built with colcon (once per run): the install space, as `ros2 launch`/`ros2 run` use."""
    import shutil

    from ros_tools import colcon_build

    if shutil.which("colcon") is None:
        pytest.skip("colcon is not installed")
    return colcon_build(tmp_path_factory.mktemp("ws"))
