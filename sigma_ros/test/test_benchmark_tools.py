"""The ROS benchmarks under benchmarks/ run end to end against a real node and exit cleanly."""
import json
import os
import subprocess
import sys

from ros_tools import REPO, private_domain_id, require


def test_node_latency_measures_a_real_node_and_exits_cleanly(tmp_path):
    # It aborted at exit ("terminate called without an active exception", status 134) after printing its results:
    # its daemon spinner thread was still in rclpy's wait when the interpreter finalised.
    require("rclpy")
    report = tmp_path / "latency.json"
    # As a user runs it, from the checkout and with no OMP_NUM_THREADS: it aborted so, 5 runs in 5
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "node_latency.py"), "--seconds", "3", "--rate", "10",
         "--threads", "0", "--domain-id", str(private_domain_id()), "--json", str(report)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0 and "terminate called" not in out.stderr, log
    result = json.loads(report.read_text())
    assert result["sent"] > 0 and result["segmented"] > 0, result
