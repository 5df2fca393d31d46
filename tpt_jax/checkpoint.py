"""Our own checkpoints: a HF-form config.json plus an Orbax tree of the parameters, committed
atomically. The only module of the package that imports orbax.

Layout of a checkpoint directory:
    config.json  the ModelConfig as a HF config.json, plus `tpt_jax_format` and the param dtype
    params/      Orbax (StandardCheckpointHandler) tree of the `nnx.Param` state as a pure dict
    tokenizer/   optional: whatever `tokenizer.save_pretrained` writes
    COMMITTED    written last; a directory without it is never loaded

Everything is written into a hidden temporary sibling, fsync'd, marked, then swapped into place,
so a crash at any moment leaves the old or the new checkpoint, never a half-written one; the next
save removes the siblings a crash left behind. A save that fails (disk full, a path that cannot
be a directory) raises `CheckpointWriteError`, one line with the directory and the OS reason,
after removing its temporary sibling; the previous checkpoint stays in place.
Restoring builds the abstract model and hands Orbax the target shardings, so each device reads
only its own shards, on any mesh shape or device count.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import glob
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from tpt_jax import faults
from tpt_jax.distributed import as_global, barrier, is_primary, shared_token
from tpt_jax.errors import CheckpointError
from tpt_jax.models.config import ModelConfig
from tpt_jax.models.transformer import Transformer, abstract_model
from tpt_jax.sharding import SAMPLE_RULES, Rules, make_mesh, state_shardings

FORMAT_VERSION = 1
FORMAT_KEY = "tpt_jax_format"
MARKER = "COMMITTED"


class CheckpointWriteError(CheckpointError, OSError):
    """A save failed for an OS reason (`errno` holds it when known): one line naming the
    directory, the reason and what is left there. Also an OSError, as what it wraps."""


def save_checkpoint(model: Transformer, directory: str | Path, *, tokenizer: Any = None) -> Path:
    """Write `model` (and `tokenizer`, if given) as a committed checkpoint at `directory`.

    An existing checkpoint there stays loadable until the new one is complete on disk.
    """
    directory, write = _checkpoint_job(model, directory, tokenizer, host_copy=False)
    _write_committed(directory, write, "checkpoint")
    return directory


def _checkpoint_job(
    model: Transformer, directory: str | Path, tokenizer: Any, *, host_copy: bool
) -> tuple[Path, Callable[[Path], None]]:
    directory = Path(directory).absolute()
    hf_cfg = _config_json(model)
    params = as_global(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    if host_copy and jax.process_count() == 1:
        params = _to_host(params)

    def write(tmp: Path) -> None:
        _save_tree(tmp / "params", params)  # every process writes its own shards
        if is_primary():
            (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
            if tokenizer is not None:
                (tmp / "tokenizer").mkdir()
                tokenizer.save_pretrained(tmp / "tokenizer")

    return directory, write


def load_checkpoint(
    directory: str | Path,
    *,
    dtype: Any = None,
    mesh: Mesh | None = None,
    rules: Rules = SAMPLE_RULES,
) -> Transformer:
    """The model in a committed checkpoint, each parameter placed with its sharding on `mesh`
    (default: one device) and cast to `dtype` (default: the dtype it was saved in)."""
    directory = Path(directory)
    hf_cfg = _read_config(directory)
    try:
        cfg = ModelConfig.from_hf_config(hf_cfg)
        dtype = jnp.dtype(dtype if dtype is not None else hf_cfg["dtype"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{directory / 'config.json'}: invalid checkpoint config ({e})"
        ) from None
    mesh = mesh or make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, abstract = nnx.split(abstract_model(cfg, dtype))
    shardings = nnx.to_pure_dict(state_shardings(abstract, mesh, rules))
    # A target dtype other than the stored one makes Orbax cast while reading.
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nnx.to_pure_dict(abstract),
        shardings,
    )
    restored = _restore_tree(directory / "params", target)
    nnx.replace_by_pure_dict(abstract, restored)
    return nnx.merge(graphdef, abstract)


def is_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` was written by `save_checkpoint` (committed or not: loading an
    uncommitted one then fails with the reason, instead of being mistaken for a HF directory)."""
    directory = Path(directory)
    if (directory / MARKER).is_file():
        return True
    try:
        return FORMAT_KEY in json.loads((directory / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def checkpoint_tokenizer_dir(directory: str | Path) -> Path | None:
    """The tokenizer directory saved with a checkpoint (for `Tokenizer.from_pretrained`)."""
    path = Path(directory) / "tokenizer"
    return path if path.is_dir() else None


# --- train states -----------------------------------------------------------------------------
# A train state is any pytree of arrays (parameters, optimizer state) plus JSON metadata (step,
# best-so-far, history). The arrays are stored flat, one Orbax entry per leaf, with the leaves'
# key paths in state.json: restoring needs no knowledge of optax's or nnx's tree types, and a
# state written for another model or optimizer is refused by name instead of half-restored.

STATE_FORMAT = 1


def save_train_state(directory: str | Path, state: Any, meta: dict[str, Any]) -> Path:
    """Write `state` (a pytree of arrays) and `meta` (JSON-able) as a committed train state.

    Atomic like `save_checkpoint`: the previous state stays loadable until this one is complete.
    """
    directory, write = _train_state_job(directory, state, meta, host_copy=False)
    _write_committed(directory, write, "train state")
    return directory


def _train_state_job(
    directory: str | Path, state: Any, meta: dict[str, Any], *, host_copy: bool
) -> tuple[Path, Callable[[Path], None]]:
    directory = Path(directory).absolute()
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    header = {
        "tpt_jax_train_state": STATE_FORMAT,
        "leaves": [jax.tree_util.keystr(path) for path, _ in leaves],
        "meta": json.loads(json.dumps(meta)),  # a copy: the caller goes on changing `meta`
    }
    arrays = as_global({_leaf_key(i): leaf for i, (_, leaf) in enumerate(leaves)})
    if host_copy and jax.process_count() == 1:
        arrays = _to_host(arrays)

    def write(tmp: Path) -> None:
        _save_tree(tmp / "arrays", arrays)
        if is_primary():
            (tmp / "state.json").write_text(json.dumps(header) + "\n")

    return directory, write


def _to_host(tree: Any) -> Any:
    """Host copies of every array: the device buffers may be donated to the next train step
    while a background save is still writing (on CPU `np.asarray` would alias them)."""
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


class AsyncSaver:
    """Saves on one background thread, in the order submitted, so that training goes on while
    they are written. Each save copies its arrays to host memory first (one device sync), then
    runs the same protocol as a synchronous save on the thread: temporary sibling, Orbax write,
    fsync, COMMITTED marker, atomic swap. A kill -9 at any moment leaves the previous save or
    the new one, never half of one. A failed save is raised (its one-line error) by the next
    `save_*` or by `wait`.

    Why not Orbax's AsyncCheckpointer alone: it writes in the background too, but the marker and
    the swap must follow a finished write, and its own finalize does not fsync the data before
    committing; running our tested commit protocol on the thread keeps one code path."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save_checkpoint(self, model: Transformer, directory: str | Path) -> None:
        self._submit(*_checkpoint_job(model, directory, None, host_copy=True), "checkpoint")

    def save_train_state(self, directory: str | Path, state: Any, meta: dict[str, Any]) -> None:
        self._submit(*_train_state_job(directory, state, meta, host_copy=True), "train state")

    def wait(self) -> None:
        """Block until every submitted save is on disk; raise the first that failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _submit(self, directory: Path, write: Callable[[Path], None], what: str) -> None:
        self.wait()  # one save in flight: a second would double the host copies
        if jax.process_count() > 1:
            # Synchronous: the arrays span other processes' devices (no whole host copy), and
            # every process must reach the save's barriers in the same order as the others.
            _write_committed(directory, write, what)
            return

        def run() -> None:
            try:
                _write_committed(directory, write, what)
            except BaseException as e:  # noqa: BLE001 - raised on the caller's thread
                self._error = e

        self._thread = threading.Thread(target=run, name="tpt-save", daemon=False)
        self._thread.start()


def read_train_state_meta(directory: str | Path) -> dict[str, Any] | None:
    """The metadata of the committed train state at `directory`, or None if there is none."""
    header = _read_state_header(Path(directory))
    return None if header is None else header["meta"]


def load_train_state(directory: str | Path, target: Any) -> tuple[Any, dict[str, Any]]:
    """(state, meta) from a committed train state. `target` is a pytree of
    `jax.ShapeDtypeStruct` with shardings (the shape of what was saved): each device reads only
    its own shards, on any mesh."""
    directory = Path(directory)
    header = _read_state_header(directory)
    if header is None:
        raise CheckpointError(f"{directory}: no committed train state")
    paths, treedef = jax.tree_util.tree_flatten_with_path(target)
    names = [jax.tree_util.keystr(path) for path, _ in paths]
    if names != header["leaves"]:
        missing = sorted(set(names) ^ set(header["leaves"]))[:3]
        raise CheckpointError(
            f"{directory / 'state.json'}: saved for another model or optimizer "
            f"(differs at {', '.join(missing) or 'leaf order'})"
        )
    restored = _restore_tree(
        directory / "arrays", {_leaf_key(i): leaf for i, (_, leaf) in enumerate(paths)}
    )
    leaves = [restored[_leaf_key(i)] for i in range(len(paths))]
    return jax.tree_util.tree_unflatten(treedef, leaves), header["meta"]


def _leaf_key(i: int) -> str:
    return f"leaf_{i:06d}"


def _read_state_header(directory: Path) -> dict[str, Any] | None:
    if not (directory / MARKER).is_file():
        return None
    path = directory / "state.json"
    try:
        header = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable train state ({e})") from None
    if not isinstance(header, dict) or header.get("tpt_jax_train_state") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a tpt_jax train state of format {STATE_FORMAT}")
    return header


# --- internals ------------------------------------------------------------------------------


def _write_committed(directory: Path, write: Callable[[Path], None], what: str) -> None:
    """Run `write(tmp)` into a hidden sibling, fsync it, mark it COMMITTED, swap it into place.
    An OSError on the way (disk full, a parent that is a file, ...) becomes one line naming
    `directory`, the reason and what is left there.

    Several processes: all of them write their shards into one temporary sibling (its name
    drawn by process 0), and process 0 alone marks and swaps it once all have written."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        occupied = directory.is_file() or (directory.is_dir() and any(directory.iterdir()))
    except OSError as e:
        raise _write_error(directory, what, e) from e
    if occupied and not is_checkpoint(directory):
        # Replacing would delete whatever is there: refuse rather than guess it is disposable.
        raise CheckpointError(f"{directory}: exists and is not a tpt_jax checkpoint; not replacing")
    primary = is_primary()
    if primary:
        _remove_leftovers(directory)
    tmp = None
    try:
        if jax.process_count() == 1:
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        else:
            tmp = directory.parent / f".{directory.name}.tmp-{shared_token()}"
            if primary:
                tmp.mkdir()
            barrier(f"checkpoint mkdir {tmp}")
        write(tmp)
        barrier(f"checkpoint written {tmp}")
        faults.reached("checkpoint.write")
        if primary:
            # The marker must not reach the disk before the data it vouches for.
            _fsync_tree(tmp)
            with open(tmp / MARKER, "w") as f:
                f.write(f"tpt_jax checkpoint format {FORMAT_VERSION}\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync(tmp)
            faults.reached("checkpoint.commit")
            _swap_into_place(tmp, directory)
            faults.reached("checkpoint.swapped")
        barrier(f"checkpoint committed {directory}")  # nobody reads it before it is in place
    except OSError as e:
        raise _write_error(directory, what, e) from e
    finally:
        # After a swap `tmp` holds the previous checkpoint; after a failure, the partial one.
        if tmp is not None and primary:
            _remove_tree(tmp)


def _remove_tree(path: Path) -> None:
    """Best-effort removal. After a failed save, TensorStore may still be finishing writes into
    `path` for a moment and recreate what rmtree just removed: retry for up to ~2 s. What
    remains is removed by the next save (`_remove_leftovers`)."""
    for _ in range(40):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.05)


def _write_error(directory: Path, what: str, e: OSError) -> CheckpointWriteError:
    """`directory: cannot write <what> (<OS reason>); <what is left there>`."""
    reason = e.strerror or str(e) or type(e).__name__
    blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir says "File exists" or "Not a directory": name the file
        reason = f"{blocker} is a file, not a directory"
    try:
        if (directory / MARKER).is_file():
            left = f"the previous {what} there is intact"
        else:
            backups = [p for p in _siblings(directory, "old") if (p / MARKER).is_file()]
            left = f"the previous {what} is at {backups[0]}" if backups else "nothing was written"
    except OSError:
        left = "nothing was written"
    error = CheckpointWriteError(f"{directory}: cannot write {what} ({reason}); {left}")
    error.errno = e.errno
    return error


def _save_tree(path: Path, tree: Any) -> None:
    path = Path(path).absolute()
    checkpointer = _checkpointer()
    quiet, failures = _DropTracebacks(), _QuietFailures.install()
    logging.getLogger("absl").addFilter(quiet)
    failures.saving += 1
    failed = False
    try:
        checkpointer.save(path, args=ocp.args.StandardSave(tree))
    except Exception as e:
        failed = failures.failed = True
        if isinstance(e, OSError):
            raise
        # TensorStore reports a failed write as ValueError("... [os_error_code='28']"): make it
        # the OSError it is, so that callers see "No space left on device".
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from e
    finally:
        failures.saving -= 1
        logging.getLogger("absl").removeFilter(quiet)
        checkpointer.close()
        if failed:
            gc.collect()  # report (and drop) the abandoned writes now, not at interpreter exit


class _DropTracebacks(logging.Filter):
    """While saving, Orbax's writer threads log a failed write with its traceback before the
    save re-raises it; the caller reports the error in one line, so drop those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


class _QuietFailures(logging.Filter):
    """A failed Orbax save returns while the other writes of its event loop are still pending:
    TensorStore's completions then hit the closed loop ("Event loop is closed", reported as an
    unraisable exception, during the save and after it), and asyncio logs "Task exception was
    never retrieved" for each abandoned write. The save raised the one-line error already: drop
    those reports while saving and, once a save has failed, from then on. Installed by the first
    save; the hook and the filter pass everything else through."""

    _installed: _QuietFailures | None = None

    @classmethod
    def install(cls) -> _QuietFailures:
        if cls._installed is None:
            cls._installed = cls()
        return cls._installed

    def __init__(self) -> None:
        super().__init__()
        self.saving, self.failed = 0, False
        self.previous = sys.unraisablehook
        sys.unraisablehook = self.unraisable
        logging.getLogger("asyncio").addFilter(self)

    def unraisable(self, unraisable: Any) -> None:
        error = unraisable.exc_value
        closed = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (closed and (self.saving or self.failed)):
            self.previous(unraisable)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.failed and "orbax" in record.getMessage())


def _restore_tree(path: Path, target: Any) -> Any:
    path = Path(path).absolute()  # Orbax refuses relative paths, which users type
    checkpointer = _checkpointer()
    try:
        return checkpointer.restore(path, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax/tensorstore raise many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: cannot restore ({type(e).__name__}: {first})") from e
    finally:
        checkpointer.close()


def _checkpointer() -> ocp.Checkpointer:
    # The synchronous Checkpointer: StandardCheckpointer saves in a background thread, and the
    # marker and rename must follow a finished save. Same API in orbax 0.12.4 and 0.12.8.
    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _config_json(model: Transformer) -> dict[str, Any]:
    cfg = model.config
    hf_cfg = cfg.to_hf_config()
    if ModelConfig.from_hf_config(hf_cfg) != cfg:  # else we would restore another architecture
        back = ModelConfig.from_hf_config(hf_cfg)
        fields = [k for k in cfg.__dataclass_fields__ if getattr(cfg, k) != getattr(back, k)]
        raise CheckpointError(f"config fields {fields} do not survive config.json; cannot save")
    dtypes = {np.dtype(x.dtype).name for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    if len(dtypes) != 1:  # the restore target is built with one dtype for every parameter
        raise CheckpointError(f"parameters have mixed dtypes {sorted(dtypes)}; cast them first")
    (name,) = dtypes
    return {**hf_cfg, FORMAT_KEY: FORMAT_VERSION, "dtype": name, "torch_dtype": name}


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        backups = [p for p in _siblings(directory, "old") if (p / MARKER).is_file()]
        hint = f"; an interrupted save left the previous one at {backups[0]}" if backups else ""
        raise CheckpointError(f"{directory}: checkpoint directory not found{hint}")
    if not (directory / MARKER).is_file():
        raise CheckpointError(
            f"{directory}: no {MARKER} marker, the checkpoint is incomplete (interrupted save?)"
        )
    path = directory / "config.json"
    try:
        hf_cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint config ({e})") from None
    if not isinstance(hf_cfg, dict) or FORMAT_KEY not in hf_cfg:
        raise CheckpointError(f"{path}: not a tpt_jax checkpoint config (no {FORMAT_KEY!r})")
    if hf_cfg[FORMAT_KEY] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported {FORMAT_KEY} {hf_cfg[FORMAT_KEY]!r}")
    return hf_cfg


def _siblings(directory: Path, kind: str) -> list[Path]:
    pattern = f".{glob.escape(directory.name)}.{kind}-*"
    return sorted(directory.parent.glob(pattern))


def _remove_leftovers(directory: Path) -> None:
    # Temporary siblings left by a crashed save are garbage once `directory` holds a committed
    # checkpoint; without one, an `.old-` sibling may be the only complete copy, so keep it.
    if (directory / MARKER).is_file():
        for path in _siblings(directory, "tmp") + _siblings(directory, "old"):
            shutil.rmtree(path, ignore_errors=True)


def _swap_into_place(tmp: Path, directory: Path) -> None:
    """Move the complete `tmp` to `directory`; on return the previous content is at `tmp`."""
    if not directory.exists():
        os.rename(tmp, directory)
    elif not _exchange(tmp, directory):
        # Two renames: between them `directory` is missing but the old copy is complete at
        # `old`, and load_checkpoint's error points there.
        old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(directory, old)
        os.rename(tmp, directory)
        os.rename(old, tmp)
    _fsync(directory.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or another libc
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or filesystem lacks it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms; nothing to sync there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
