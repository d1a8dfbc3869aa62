"""bhcore.external: the shared runner for external programs."""
from __future__ import annotations

import sys

import pytest

from bhcore.errors import ExternalToolError, MissingEngine
from bhcore.external import isolated_env, private_workdir, require, run, tail


def test_run_returns_output_and_uses_cwd(tmp_path):
    proc = run([sys.executable, "-c", "import os; print(os.getcwd())"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp_path)


def test_run_gives_no_stdin_unless_asked():
    proc = run([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert proc.stdout.strip() == "''"
    proc = run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
               input_text="hello")
    assert proc.stdout.strip() == "HELLO"


def test_failure_carries_command_exit_code_and_stderr_tail():
    code = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(50)]; sys.exit(3)"
    with pytest.raises(ExternalToolError) as info:
        run([sys.executable, "-c", code])
    err = info.value
    assert err.returncode == 3 and err.command[1:] == ["-c", code]
    assert err.stderr_tail.splitlines()[-1] == "line 49"
    assert len(err.stderr_tail.splitlines()) == 20
    assert "(exit code 3): line 49" in str(err)


def test_check_false_returns_the_failed_process():
    proc = run([sys.executable, "-c", "raise SystemExit(2)"], check=False)
    assert proc.returncode == 2


def test_timeout_stops_the_program():
    with pytest.raises(ExternalToolError, match="did not finish within 0.5 s"):
        run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_missing_binary_says_how_to_install():
    with pytest.raises(MissingEngine, match="apt-get install -y --no-install-recommends "
                                            "some-package"):
        run(["bhcore-no-such-program"], apt_package="some-package")
    with pytest.raises(MissingEngine):
        require("bhcore-no-such-program")


def test_private_workdir_is_removed_unless_kept(monkeypatch):
    monkeypatch.delenv("BHCORE_KEEP_WORKDIR", raising=False)
    with private_workdir() as work:
        (work / "x").write_text("1")
        assert work.is_dir()
    assert not work.exists()
    with private_workdir(keep=True) as kept:
        pass
    assert kept.is_dir()
    kept.rmdir()


def test_isolated_env_has_its_own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    env = isolated_env(tmp_path, {"TERM": "xterm"})
    assert env["HOME"] == str(tmp_path) and env["TERM"] == "xterm" and env["USER"]
    assert "SECRET_TOKEN" not in env and "PATH" in env


def test_tail_drops_nul_bytes_and_keeps_the_end():
    assert tail(b"a\x00b\nc\nd", lines=2) == "c\nd"
    assert tail(None) == ""
