"""Where a run's files live: a local (or mounted) directory, or a `gs://` bucket prefix.

A run directory is a `pathlib.Path` when local and an `etils.epath.Path` (gcsfs underneath:
the `gcs` extra) when it is a URL; both speak pathlib's API (`/`, `exists`, `read_text`,
`glob`, `mkdir`, ...), so the loop's code reads the same for both. What differs is here:

- atomic replacement: locally a temporary file, fsync and rename (a reader sees the old file or
  the new one); on GCS a single object upload, which is atomic by itself;
- appends: GCS objects cannot grow, so an `Appender` keeps the file's text and uploads it whole
  at each append (metrics lines and THINK chunks: small next to the models);
- trees: removal and copying through the path objects instead of `shutil`;
- the run lock: `flock` locally (the kernel drops it when the holder dies); on GCS a lease
  object renewed by a heartbeat thread, which another process may take over once the heartbeat
  is older than `LEASE_SECONDS` (or at once if its holder is a dead process on this host).

Checkpoints go through Orbax, which handles `gs://` itself (see `checkpoint`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tpt_jax.errors import TptError

LEASE_SECONDS = 60.0  # a gs:// lease whose heartbeat is older than this is free to take


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def run_path(path: str | os.PathLike) -> Any:
    """`path` as a path object: `pathlib.Path` for a local path, `epath.Path` for a URL."""
    if not is_remote(path):
        return Path(path)
    import fsspec.config
    from etils import epath

    from tpt_jax.errors import require

    if os.fspath(path).startswith("gs://"):
        require("gcsfs", "gcs", "a gs:// run directory")
    # gcsfs caches directory listings per process by default, so a process would not see a
    # DONE.json, lease or checkpoint step that another process wrote after it listed the
    # directory: every existence check must ask the bucket.
    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False
    return epath.Path(os.fspath(path))


def write_text(path: Any, text: str) -> None:
    """Replace `path` with `text` atomically: a reader sees the old content or the new."""
    if is_remote(path):
        path.write_text(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Any, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class Appender:
    """Appends text to `path`, each append durable when `append` returns (fsync'd locally;
    uploaded whole on GCS, where an object cannot grow). Starts from the file's content:
    `text` when the caller has just written it (on GCS, saves reading it back), else read."""

    def __init__(self, path: Any, text: str | None = None):
        self.path = path
        self._remote = is_remote(path)
        self._text = ""
        if self._remote:
            self._text = text if text is not None else self._read()

    def _read(self) -> str:
        return self.path.read_text(encoding="utf-8") if self.path.exists() else ""

    def append(self, text: str) -> None:
        if not text:
            return
        if self._remote:
            self._text += text
            self.path.write_text(self._text)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def rmtree(path: Any) -> None:
    """Remove the directory `path` and everything under it; nothing if it is not there."""
    if is_remote(path):
        if path.exists():
            path.rmtree()
        return
    if path.exists():
        shutil.rmtree(path)


def copytree(src: Any, dst: Any, skip: tuple[str, ...] = ()) -> None:
    """Copy the tree `src` to `dst` (which must not exist), leaving out entries named in
    `skip`; either side may be local or a URL."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip))
        return
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir():
            copytree(entry, dst / entry.name, skip)
        else:
            (dst / entry.name).write_bytes(entry.read_bytes())


@contextlib.contextmanager
def local_dir(path: Any) -> Iterator[Path]:
    """`path` as a local directory to read: itself when local, else a temporary copy."""
    if not is_remote(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="tpt-download-") as tmp:
        copytree(path, Path(tmp) / "d")
        yield Path(tmp) / "d"


@contextlib.contextmanager
def writable_dir(path: Any, *, upload: bool = True) -> Iterator[Path]:
    """A local directory to write into, which becomes `path` when the block ends: `path`
    itself when local; for a URL, a temporary directory copied there, replacing what was
    there, when `upload` (False: the other processes of a run, whose process 0 writes).
    On GCS the copy is not atomic: a caller marks it finished afterwards (export's ROUND)."""
    if not is_remote(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="tpt-upload-") as tmp:
        yield Path(tmp)
        if upload:
            rmtree(path)
            copytree(Path(tmp), path)


# --- the run lock ------------------------------------------------------------------------------


class RunLock:
    """One process at a time per run directory; `close` (or the process's death) frees it."""

    def __init__(self, run_dir: Any):
        self.run_dir = run_dir
        if is_remote(run_dir):
            self._lease = _Lease(run_dir / ".lock")
            self._file = None
        else:
            import fcntl

            self._lease = None
            self._file = open(run_dir / ".lock", "w")  # noqa: SIM115 (held until close)
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise TptError(
                    f"{run_dir}: another tpt process is using this run directory"
                ) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lease is not None:
            self._lease.close()
            self._lease = None


class _Lease:
    """A lease object on GCS: {owner, host, pid, heartbeat}. Taken when absent, stale, or held
    by a dead process of this host; renewed every LEASE_SECONDS / 4 by a daemon thread. After
    writing it, the taker reads it back: of two racing takers only the last writer goes on.
    A live holder makes a second run wait 1.5 lease periods, then fail naming it. Heartbeats
    are wall-clock times, so hosts' clocks must agree to seconds (NTP), not to the period."""

    def __init__(self, path: Any):
        self.path = path
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        deadline = time.time() + LEASE_SECONDS * 1.5
        while True:
            holder = self._holder()
            if holder is None or self._free(holder):
                self._write()
                time.sleep(0.2)
                if (self._holder() or {}).get("owner") == self.owner:
                    break
                holder = self._holder()
            if time.time() > deadline:
                raise TptError(
                    f"{path.parent}: another tpt process is using this run directory (lease "
                    f"held by {holder and holder.get('host')} pid {holder and holder.get('pid')}; "
                    f"delete {path} if that process is gone)"
                )
            time.sleep(min(5.0, LEASE_SECONDS / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="tpt-lease")
        self._thread.start()
        atexit.register(self.close)  # an exit without Run.close frees it too, if GCS is reachable

    def _holder(self) -> dict[str, Any] | None:
        """The lease's record; None only when there is none. A record read while its holder
        rewrites it can come back torn: read again, and if it stays unreadable count the lease
        as held (a live holder must never look absent)."""
        for _ in range(5):
            try:
                return json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            except ValueError:
                time.sleep(0.1)
        return {"owner": "?", "host": "?", "pid": "?", "heartbeat": time.time()}

    def _free(self, holder: dict[str, Any]) -> bool:
        if time.time() - float(holder.get("heartbeat", 0)) > LEASE_SECONDS:
            return True
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True  # its holder died on this host
            except (PermissionError, KeyError, ValueError):
                return False
        return False

    def _write(self) -> None:
        record = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
        }
        self.path.write_text(json.dumps(record))

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            with contextlib.suppress(OSError):
                holder = self._holder()
                if holder is not None and holder.get("owner") != self.owner:
                    print(  # never overwrite the new holder's lease: say so, loudly, once
                        f"tpt: lost the lease on {self.path.parent} to {holder.get('host')} "
                        f"pid {holder.get('pid')} (no heartbeat for {LEASE_SECONDS:.0f} s?); "
                        "stop this process: two runs now write the same directory",
                        file=sys.stderr,
                        flush=True,
                    )
                    return
                self._write()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        # At interpreter exit gcsfs's event loop may be gone (RuntimeError): the lease then
        # stays, and expires.
        with contextlib.suppress(OSError, RuntimeError):
            if (self._holder() or {}).get("owner") == self.owner:
                self.path.unlink()
