"""Run an untrusted Python program (a sampled solution of a code task) and say how it ended.

    result = sandbox.run(source, stdin="3 4\n", timeout_s=2.0, memory_mb=256)
    result.status  # ok, timeout, memory, runtime_error or output_limit
    result.stdout

Each program runs in a fresh, empty scratch directory (its working directory and HOME), with a
scrubbed environment, stdin from a file, stdout and stderr read up to a cap, and these limits:

- resource limits: CPU seconds, address space (`memory_mb`), size of any file it writes,
  number of processes of its user, open files, no core dumps;
- wall time: at `timeout_s` (or when its output passes the cap) the whole program is killed,
  every process it started included;
- where the OS allows (root, or unprivileged user namespaces): new network, PID and mount
  namespaces, so it has no network (only a loopback that is down), sees and can signal only its
  own processes (all of which die with it), and gets private empty /tmp, /var/tmp and /dev/shm;
  run by root, it also drops to the `nobody` user, so it can write nowhere but its scratch
  directory and the private temporaries, and the process limit holds (root ignores it).
  `isolation()` says which of these this machine gives.

Why not a container runtime or seccomp: they need a daemon or a compiled filter; namespaces,
rlimits and a setuid drop are in every Linux kernel and need only the standard library.
Linux only (the resource limits alone elsewhere would not contain a hostile program).
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["Result", "isolation", "run"]

STATUSES = ("ok", "timeout", "memory", "runtime_error", "output_limit")
NOBODY = 65534
_SIGNALLED = 128  # the launcher exits 128 + N when the program died of signal N


@dataclass(frozen=True)
class Result:
    status: str  # one of STATUSES
    stdout: str
    stderr: str
    returncode: int | None  # the program's exit code; -N for signal N; None when we killed it
    wall_s: float


# Runs between us and the program, in a fresh interpreter (so no thread of ours is forked
# with a lock held): namespaces, the user drop and the limits, then the program as PID 1 of
# its PID namespace, which the kernel tears down (every process in it) when PID 1 dies.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, NEWUSER, NEWPID, NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
if cfg["namespaces"]:
    flags = NEWNS | NEWPID | NEWNET | (0 if os.geteuid() == 0 else NEWUSER)
    if libc.unshare(flags) != 0:
        sys.exit(f"sandbox: unshare failed (errno {ctypes.get_errno()})")
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    MS_REC, MS_PRIVATE = 16384, 1 << 18
    libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)  # our mounts stay ours
    scratch, held = os.getcwd(), os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(path):
            libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, b"size=64m,mode=1777")
    if not (os.path.isdir(scratch) and os.path.samefile(scratch, f"/proc/self/fd/{held}")):
        # Hidden under a new tmpfs: bind it back at its own path (absolute paths to it work).
        os.makedirs(scratch, exist_ok=True)
        MS_BIND = 4096
        libc.mount(f"/proc/self/fd/{held}".encode(), scratch.encode(), None, MS_BIND, None)
    os.chdir(scratch)
    os.close(held)
pid = os.fork() if cfg["namespaces"] else 0
if pid:
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda n, f: os.kill(pid, signal.SIGKILL))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)
if cfg["namespaces"]:  # PID 1 of the new namespace: a /proc that shows only its processes
    libc.mount(b"proc", b"/proc", b"proc", 0, None)
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
if cfg["namespaces"]:
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the launcher (after setuid)
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
"""


def run(
    source: str,
    stdin: str = "",
    *,
    timeout_s: float,
    memory_mb: int,
    cpu_s: float | None = None,
    output_bytes: int = 1 << 20,
    max_processes: int = 32,
    max_files: int = 64,
    file_bytes: int = 16 << 20,
) -> Result:
    """Run `source` (Python 3) with `stdin`; see the module docstring for the containment.
    `cpu_s` defaults to `timeout_s`; `output_bytes` caps stdout and stderr together."""
    if sys.platform != "linux":
        raise OSError("tpt_jax.sandbox runs untrusted programs only on Linux")
    scratch = tempfile.mkdtemp(prefix="tpt-sandbox-")
    try:
        return _run_in(scratch, source, stdin, timeout_s, memory_mb, cpu_s or timeout_s,
                       output_bytes, max_processes, max_files, file_bytes)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@functools.cache
def isolation() -> dict[str, object]:
    """What this machine gives a sandboxed program: namespaces (no network, own PIDs, private
    temporaries), the drop to `nobody` (only when we run as root), and the Python that runs
    the programs (ours when the sandbox user may execute it, else the system's python3)."""
    drop = os.geteuid() == 0
    pythons = [sys.executable, sys._base_executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    for namespaces in (True, False):
        for python in dict.fromkeys(pythons):
            if _works(python, namespaces):
                return {"namespaces": namespaces, "drop_to_nobody": drop, "python": python}
    raise OSError("tpt_jax.sandbox: no Python 3 that the sandbox user can run; tried "
                  + ", ".join(dict.fromkeys(pythons)))  # fmt: skip


def _works(python: str, namespaces: bool) -> bool:
    config = {"argv": [python, "-I", "-S", "-c", ""], "env": {}, "limits": {},
              "namespaces": namespaces}  # fmt: skip
    scratch = tempfile.mkdtemp(prefix="tpt-sandbox-probe-")
    probe = _launch(scratch, config)
    try:
        return probe.wait(timeout=30) == 0
    except subprocess.TimeoutExpired:
        probe.kill()
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_in(
    scratch: str, source: str, stdin: str, timeout_s: float, memory_mb: int, cpu_s: float,
    output_bytes: int, max_processes: int, max_files: int, file_bytes: int,
) -> Result:  # fmt: skip
    with open(os.path.join(scratch, "main.py"), "w", encoding="utf-8") as f:
        f.write(source)
    with open(os.path.join(scratch, "stdin.txt"), "w", encoding="utf-8") as f:
        f.write(stdin)
    if os.geteuid() == 0:  # the program runs as nobody: its scratch must be its own
        for name in ("", "main.py", "stdin.txt"):
            os.chown(os.path.join(scratch, name), NOBODY, NOBODY)
    os.chmod(scratch, 0o700)
    where = isolation()
    config = {
        "argv": [where["python"], "-I", "-S", "-B", "main.py"],
        "env": {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8"},
        "limits": {
            "RLIMIT_CPU": max(1, int(cpu_s + 0.999)),
            "RLIMIT_AS": memory_mb << 20,
            "RLIMIT_FSIZE": file_bytes,
            "RLIMIT_NPROC": max_processes,
            "RLIMIT_NOFILE": max_files,
            "RLIMIT_CORE": 0,
        },
        "namespaces": where["namespaces"],
    }  # fmt: skip
    start = time.monotonic()
    with open(os.path.join(scratch, "stdin.txt"), "rb") as stdin_file:
        proc = _launch(scratch, config, stdin_file)
    out, err, ended = _collect(proc, start + timeout_s, output_bytes)
    code = _stop(proc, namespaces=config["namespaces"])
    wall = time.monotonic() - start
    text = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if ended != "exited":
        return Result(ended, *text, None, wall)
    returncode = -(code - _SIGNALLED) if code > _SIGNALLED else code
    return Result(_status(returncode, text[1]), *text, returncode, wall)


def _launch(scratch: str, config: dict, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    config = {"uid": NOBODY, **config}
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(config)],
        cwd=scratch, env={}, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, close_fds=True,
    )  # fmt: skip


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, str]:
    """Read stdout and stderr until both close ("exited"), the deadline ("timeout") or more than
    `cap` bytes in all ("output_limit")."""
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    total = 0
    with selectors.DefaultSelector() as selector:
        for pipe in (proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe.fileno(), selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return *_joined(chunks, proc), "timeout"
            for key, _ in selector.select(timeout=left):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    continue
                chunks[key.fd].append(data)
                total += len(data)
                if total > cap:
                    return *_joined(chunks, proc), "output_limit"
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # pipes closed, process still running
        return *_joined(chunks, proc), "timeout"
    return *_joined(chunks, proc), "exited"


def _joined(chunks: dict[int, list[bytes]], proc: subprocess.Popen) -> tuple[bytes, bytes]:
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def _stop(proc: subprocess.Popen, *, namespaces: bool) -> int:
    """Kill whatever is left of the program and return the launcher's exit code. With
    namespaces, the launcher kills the program (PID 1 of its namespace) on SIGTERM; the kernel
    then kills every other process in the namespace, and the launcher's wait returns once all
    of them are gone, so nothing outlives this call."""
    if proc.poll() is None and namespaces:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid)  # without namespaces: the program's process group
    return proc.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _status(returncode: int, stderr: str) -> str:
    if returncode == 0:
        return "ok"
    if returncode == -signal.SIGXCPU:
        return "timeout"  # the CPU-time limit
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return "memory" if last.startswith("MemoryError") else "runtime_error"
