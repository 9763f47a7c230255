"""cli.errors in a real ``python -m`` process: Ctrl-C that lands in exec/eval code (namedtuple, dataclasses: all
through ``import torch``) and is caught by the tool is its exit code, not CPython's exit by SIGINT (-2)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import os, signal, sys
    from sigma_core.cli.errors import catch_ctrl_c

    def main():
        if sys.argv[1] == "ours":
            catch_ctrl_c()
        try:
            eval("os.kill(os.getpid(), signal.SIGINT) or sum(range(10))")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            return 7
        return 3

    sys.exit(main())
""")


def _run_child(tmp_path, handler: str) -> subprocess.CompletedProcess:
    (tmp_path / "ctrl_c_child.py").write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ctrl_c_child", handler], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK,
                                                                                           [signal.SIGINT]))


def test_ctrl_c_caught_by_a_tool_is_its_exit_code(tmp_path):
    result = _run_child(tmp_path, "ours")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (7, "interrupted", ""), result


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="CPython flaw checked on 3.10-3.13")
def test_without_it_python_itself_exits_by_sigint(tmp_path):
    """The control: what sigma-import did (one line printed, then exit -2)."""
    result = _run_child(tmp_path, "python")
    assert result.returncode == -signal.SIGINT and result.stdout.strip() == "interrupted", result
