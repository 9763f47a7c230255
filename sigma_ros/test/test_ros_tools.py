"""ros_tools.private_domain_id: test processes side by side (pytest -n workers, two suites) get different ROS domain
ids, each held until its process exits."""
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ros_tools
from ros_tools import private_domain_id

HERE = Path(__file__).resolve().parent

# Claims n ids, prints them, then holds them until its stdin closes.
CLAIM = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from ros_tools import private_domain_id
print(" ".join(str(private_domain_id()) for _ in range(int(sys.argv[1]))), flush=True)
sys.stdin.read()
"""


def _claimer(n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def _free(domain_id: int) -> bool:
    with open(ros_tools._DOMAIN_LOCKS / f"{domain_id}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True  # (released again as the file closes)


def test_processes_side_by_side_never_share_an_id_and_an_exited_ones_ids_are_free_again():
    mine = {private_domain_id() for _ in range(3)} | {int(os.environ["ROS_DOMAIN_ID"])}
    first, second = _claimer(10), _claimer(10)
    try:
        ids = [set(map(int, p.stdout.readline().split())) for p in (first, second)]
        assert all(len(claimed) == 10 for claimed in ids), ids
        assert not ids[0] & ids[1] and not (ids[0] | ids[1]) & mine, (ids, mine)
        assert all(0 < i <= 232 for i in ids[0] | ids[1])  # never 0 (every ROS install's default), Fast DDS's range
        assert not any(_free(i) for i in ids[0] | ids[1] | mine)  # held while the processes run
    finally:
        for p in (first, second):
            p.stdin.close()
            p.wait(timeout=30)
    assert all(_free(i) for i in ids[0] | ids[1])  # and free once they exited


def test_all_ids_held_is_an_error_that_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(ros_tools, "_DOMAIN_LOCKS", tmp_path)
    monkeypatch.setattr(ros_tools, "_DOMAIN_IDS", range(7, 9))
    monkeypatch.setattr(ros_tools, "_held_domains", [])
    try:
        assert {private_domain_id(), private_domain_id()} == {7, 8}
        with pytest.raises(RuntimeError, match=r"every ROS domain id 7\.\.8 is held by test processes"):
            private_domain_id()
    finally:
        for lock in ros_tools._held_domains:
            lock.close()
