"""The sandbox against hostile programs: each is contained, gets the right status, and leaves
this process, the machine's files and its process table as they were."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from tpt_jax import sandbox

LIMITS = {"timeout_s": 2.0, "memory_mb": 256}


def run(source: str, stdin: str = "", **limits) -> sandbox.Result:
    return sandbox.run(source, stdin, **{**LIMITS, **limits})


def sandbox_processes() -> list[int]:
    """Processes of the sandbox user (nobody) on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
            if int(uid) == sandbox.NOBODY:
                pids.append(int(entry.name))
    return pids


def scratch_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("tpt-sandbox-")}


@pytest.fixture(autouse=True)
def leaves_nothing_behind():
    before = scratch_dirs()
    yield
    assert scratch_dirs() <= before  # every scratch directory removed
    if sandbox.isolation()["drop_to_nobody"]:
        assert sandbox_processes() == []  # every process the program started is gone


def test_this_machine_gives_the_full_isolation() -> None:
    """CI runs as root on Linux with namespaces: every hostile test below relies on them."""
    where = sandbox.isolation()
    assert where["namespaces"] and where["drop_to_nobody"], where


def test_a_correct_program_reads_stdin_and_writes_stdout() -> None:
    result = run("a, b = map(int, input().split())\nprint(a + b)", "3 4\n")
    assert (result.status, result.stdout, result.returncode) == ("ok", "7\n", 0)


def test_errors_are_runtime_errors_with_their_traceback() -> None:
    result = run("print('before')\n1 / 0")
    assert result.status == "runtime_error" and result.stdout == "before\n"
    assert "ZeroDivisionError" in result.stderr and result.returncode == 1


def test_an_infinite_loop_is_stopped() -> None:
    result = run("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout" and result.wall_s < 5


def test_sleeping_past_the_wall_limit_is_stopped() -> None:
    result = run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout_s=1.0)
    assert result.status == "timeout" and result.stdout == "started\n" and result.wall_s < 5


def test_a_memory_hog_is_refused() -> None:
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))")
    assert result.status == "memory", result


def test_a_huge_output_is_cut_at_the_cap() -> None:
    result = run("while True:\n    print('x' * 10000)", output_bytes=100_000)
    assert result.status == "output_limit"
    assert 100_000 < len(result.stdout) + len(result.stderr) <= 100_000 + 65536


def test_a_fork_bomb_is_contained() -> None:
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = run(bomb, timeout_s=2.0)
    assert result.status == "timeout"  # the fixture checks that no process of it is left


def test_writing_outside_the_scratch_directory_fails_or_stays_private() -> None:
    here = Path(__file__).parent / "pwned-by-sandbox.txt"  # not under /tmp
    shared_tmp = Path(tempfile.gettempdir()) / "tpt-sandbox-escape.txt"
    source = (
        f"open('mine.txt', 'w').write('ok')\n"  # its own scratch directory: allowed
        f"open({str(shared_tmp)!r}, 'w').write('x')\n"  # a private /tmp: allowed, invisible
        f"open({str(here)!r}, 'w').write('x')\n"  # anything else: refused
    )
    result = run(source)
    # Refused; a checkout under /tmp (a CI clone) is hidden by the private /tmp instead.
    under_tmp = Path(tempfile.gettempdir()) in here.resolve().parents
    refused = ("PermissionError", "FileNotFoundError") if under_tmp else ("PermissionError",)
    assert result.status == "runtime_error"
    assert any(f"{error}:" in result.stderr.splitlines()[-1] for error in refused), result.stderr
    assert not here.exists() and not shared_tmp.exists()


def test_the_parents_environment_is_not_visible(monkeypatch) -> None:
    monkeypatch.setenv("TPT_SECRET_TOKEN", "hunter2")
    source = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            print(open(f'/proc/{pid}/environ').read())\n"
        "        except OSError:\n"
        "            pass\n"
        f"print(open('/proc/{os.getpid()}/environ').read())\n"
    )
    result = run(source)
    assert "hunter2" not in result.stdout + result.stderr
    assert "TPT_SECRET_TOKEN" not in result.stdout
    assert result.status == "runtime_error"  # this process's /proc entry does not exist there


def test_no_network() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert result.status == "runtime_error" and "OSError" in result.stderr
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached us


def test_it_cannot_kill_its_parent() -> None:
    source = f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)"
    result = run(source)
    assert result.status == "runtime_error"  # no such process in its PID namespace
    assert "ProcessLookupError" in result.stderr or "PermissionError" in result.stderr
    # Signalling every process it may: as PID 1 of its own namespace there is none.
    result = run("import os, signal\nos.kill(-1, signal.SIGKILL)")
    assert result.status == "runtime_error" and "ProcessLookupError" in result.stderr
