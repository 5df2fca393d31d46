"""Our own checkpoints, through Orbax's `CheckpointManager`: atomic, asynchronous, multi-host,
on local paths and `gs://`. With `gemma_jax_io` (which reads
Google's gemma-library trees), the only module of the package that imports orbax.

A checkpoint directory is a manager's root that keeps one finished save (`max_to_keep=1`), in a
step directory numbered by save (0, 1, ...):

    <n>/params/    Orbax tree (StandardSave) of the model's `nnx.Param` state as a pure dict
    <n>/config/    the ModelConfig as a HF config.json, plus `tpt_jax_format` and the dtype
    tokenizer/     optional: whatever `tokenizer.save_pretrained` writes, beside the steps

A train state's step holds `arrays/` (every leaf of the state, flat) and `state/` (the leaves'
key paths and the caller's JSON metadata).

Orbax writes each save into `<n>.orbax-checkpoint-tmp-*` and renames it to `<n>` to commit it
(on `gs://`, a commit file instead of the rename); only then is the previous step deleted. So a
kill at any moment leaves the old save or the new one, never half of one, and the next save
removes the debris. Our one addition to that protocol (`_DurableRename`): the data is fsync'd
before the rename, which Orbax leaves to the filesystem, so a power cut cannot commit a step
whose files are not on disk. A save that fails (disk full, a path that cannot be a directory)
raises `CheckpointWriteError`, one line with the directory, the OS reason and what is left.
Restoring hands Orbax the target shardings, so each device reads only its own shards, on any
mesh shape, device count or number of processes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from tpt_jax import faults, storage
from tpt_jax.distributed import as_global, is_primary
from tpt_jax.errors import CheckpointError
from tpt_jax.models.config import ModelConfig
from tpt_jax.models.transformer import Transformer, abstract_model
from tpt_jax.sharding import SAMPLE_RULES, Rules, make_mesh, state_shardings

FORMAT_VERSION = 2
FORMAT_KEY = "tpt_jax_format"
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a step directory Orbax has not committed
LEGACY_MARKER = "COMMITTED"  # format 1 (our own commit protocol): still loaded, never written


class CheckpointWriteError(CheckpointError, OSError):
    """A save failed for an OS reason (`errno` holds it when known): one line naming the
    directory, the reason and what is left there. Also an OSError, as what it wraps."""


def save_checkpoint(model: Transformer, directory: str | Path, *, tokenizer: Any = None) -> Path:
    """Write `model` (and `tokenizer`, if given) as a checkpoint at `directory`.

    An existing checkpoint there stays loadable until the new one is committed.
    """
    directory = _path(directory)
    _save(directory, _model_items(model, host_copy=False), "checkpoint", tokenizer=tokenizer)
    return _returned(directory)


def _model_items(model: Transformer, *, host_copy: bool) -> dict[str, Any]:
    params = as_global(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {
        "params": ocp.args.StandardSave(_host(params) if host_copy else params),
        "config": ocp.args.JsonSave(_config_json(model)),
    }


def load_checkpoint(
    directory: str | Path,
    *,
    dtype: Any = None,
    mesh: Mesh | None = None,
    rules: Rules = SAMPLE_RULES,
) -> Transformer:
    """The model in a checkpoint, each parameter placed with its sharding on `mesh` (default:
    one device) and cast to `dtype` (default: the dtype it was saved in)."""
    directory = _path(directory)
    hf_cfg, config_file, manager, step = _read_config(directory)
    try:
        cfg = ModelConfig.from_hf_config(hf_cfg)
        dtype = jnp.dtype(dtype if dtype is not None else hf_cfg["dtype"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_file}: invalid checkpoint config ({e})") from None
    mesh = mesh or make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, abstract = nnx.split(abstract_model(cfg, dtype))
    shardings = nnx.to_pure_dict(state_shardings(abstract, mesh, rules))
    # A target dtype other than the stored one makes Orbax cast while reading.
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nnx.to_pure_dict(abstract),
        shardings,
    )
    if manager is None:  # format 1
        restored = _restore_legacy(directory / "params", target)
    else:
        try:
            restored = _restore(manager, step, params=ocp.args.StandardRestore(target))
        finally:
            manager.close()
    nnx.replace_by_pure_dict(abstract, restored)
    return nnx.merge(graphdef, abstract)


def checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The HF-form config.json dict of the checkpoint at `directory` (no weights read)."""
    hf_cfg, _, manager, _ = _read_config(_path(directory))
    if manager is not None:
        manager.close()
    return hf_cfg


def _read_config(directory: Any) -> tuple[dict[str, Any], Any, Any, int | None]:
    """(config dict, where it is, the reading manager, its step); no manager for format 1
    (a format-1 directory saved into since holds steps too: the steps win)."""
    if (directory / LEGACY_MARKER).is_file() and not _has_steps(directory):
        config_file = directory / "config.json"
        hf_cfg = _check_config(_read_json(config_file, "checkpoint config"), config_file)
        return hf_cfg, config_file, None, None
    manager, step = _latest(directory, "checkpoint")
    config_file = directory / str(step) / "config"
    hf_cfg = _check_config(_restore(manager, step, config=ocp.args.JsonRestore()), config_file)
    return hf_cfg, config_file, manager, step


def is_checkpoint(directory: str | Path) -> bool:
    """Whether `directory` holds our checkpoints or train states (finished or not: loading an
    unfinished one then fails with the reason, instead of it being mistaken for a HF
    directory)."""
    directory = _path(directory)
    try:
        if not directory.is_dir():
            return False
        if (directory / LEGACY_MARKER).is_file():
            return True
        return any(
            _step_number(p.name) is not None or TMP_MARK in p.name for p in directory.iterdir()
        )
    except OSError:
        return False


def checkpoint_tokenizer_dir(directory: str | Path) -> Any:
    """The tokenizer directory saved with a checkpoint (for `Tokenizer.from_pretrained`): a
    `pathlib.Path` for a local checkpoint, an `epath.Path` on `gs://`; None if it has none."""
    path = _returned(_path(directory) / "tokenizer")
    return path if path.is_dir() else None


# --- train states -----------------------------------------------------------------------------
# A train state is any pytree of arrays (parameters, optimizer state) plus JSON metadata (step,
# best-so-far, history). The arrays are stored flat, one Orbax entry per leaf, with the leaves'
# key paths beside them: restoring needs no knowledge of optax's or nnx's tree types, and a
# state written for another model or optimizer is refused by name instead of half-restored.

STATE_FORMAT = 1


def save_train_state(directory: str | Path, state: Any, meta: dict[str, Any]) -> Path:
    """Write `state` (a pytree of arrays) and `meta` (JSON-able) as a train state.

    Atomic like `save_checkpoint`: the previous state stays loadable until this one is committed.
    """
    directory = _path(directory)
    _save(directory, _train_state_items(state, meta, host_copy=False), "train state")
    return _returned(directory)


def _train_state_items(state: Any, meta: dict[str, Any], *, host_copy: bool) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    header = {
        "tpt_jax_train_state": STATE_FORMAT,
        "leaves": [jax.tree_util.keystr(path) for path, _ in leaves],
        "meta": json.loads(json.dumps(meta)),  # a copy: the caller goes on changing `meta`
    }
    arrays = as_global({_leaf_key(i): leaf for i, (_, leaf) in enumerate(leaves)})
    return {
        "arrays": ocp.args.StandardSave(_host(arrays) if host_copy else arrays),
        "state": ocp.args.JsonSave(header),
    }


def read_train_state_meta(directory: str | Path) -> dict[str, Any] | None:
    """The metadata of the last finished train state at `directory`, or None if there is none."""
    directory = _path(directory)
    if not is_checkpoint(directory):
        return None
    manager, step = _latest(directory, "train state", missing_ok=True)
    try:
        return None if step is None else _state_header(manager, step, directory)["meta"]
    finally:
        manager.close()


def load_train_state(directory: str | Path, target: Any) -> tuple[Any, dict[str, Any]]:
    """(state, meta) from the last finished train state. `target` is a pytree of
    `jax.ShapeDtypeStruct` with shardings (the shape of what was saved): each device reads only
    its own shards, on any mesh."""
    directory = _path(directory)
    manager, step = _latest(directory, "train state")
    try:
        return _restore_state(manager, step, directory, target)
    finally:
        manager.close()


def _restore_state(
    manager: ocp.CheckpointManager, step: int, directory: Any, target: Any
) -> tuple[Any, dict[str, Any]]:
    header = _state_header(manager, step, directory)
    paths, treedef = jax.tree_util.tree_flatten_with_path(target)
    names = [jax.tree_util.keystr(path) for path, _ in paths]
    if names != header["leaves"]:
        missing = sorted(set(names) ^ set(header["leaves"]))[:3]
        raise CheckpointError(
            f"{directory / str(step) / 'state'}: saved for another model or optimizer "
            f"(differs at {', '.join(missing) or 'leaf order'})"
        )
    arrays = {_leaf_key(i): leaf for i, (_, leaf) in enumerate(paths)}
    restored = _restore(manager, step, arrays=ocp.args.StandardRestore(arrays))
    leaves = [restored[_leaf_key(i)] for i in range(len(paths))]
    return jax.tree_util.tree_unflatten(treedef, leaves), header["meta"]


def _leaf_key(i: int) -> str:
    return f"leaf_{i:06d}"


def _state_header(manager: ocp.CheckpointManager, step: int, directory: Any) -> dict[str, Any]:
    header = _restore(manager, step, state=ocp.args.JsonRestore())
    if not isinstance(header, dict) or header.get("tpt_jax_train_state") != STATE_FORMAT:
        raise CheckpointError(
            f"{directory / str(step) / 'state'}: not a tpt_jax train state of format {STATE_FORMAT}"
        )
    return header


class AsyncSaver:
    """Saves in the background, in the order submitted, so that training goes on while they
    are written: Orbax's asynchronous `CheckpointManager.save` returns once the arrays are
    copied off the device, and writes and commits on its own threads (every process taking
    part). One save is in flight at a time (a second would double the host copies). A failed
    save is raised (its one-line error) by the next `save_*` or by `wait`."""

    def __init__(self) -> None:
        self._pending: list[tuple[ocp.CheckpointManager, Any, str]] = []

    def save_checkpoint(self, model: Transformer, directory: str | Path) -> None:
        self._submit(_path(directory), _model_items(model, host_copy=True), "checkpoint")

    def save_train_state(self, directory: str | Path, state: Any, meta: dict[str, Any]) -> None:
        items = _train_state_items(state, meta, host_copy=True)
        self._submit(_path(directory), items, "train state")

    def wait(self) -> None:
        """Block until every submitted save is committed; raise the first that failed."""
        pending, self._pending = self._pending, []
        error: BaseException | None = None
        for manager, directory, what in pending:
            try:
                with _quiet_saving():
                    manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 - Orbax raises many types; one line for all
                error = error or _failed(directory, what, e)
            finally:
                manager.close()
        if error is not None:
            raise error

    def _submit(self, directory: Any, items: dict[str, Any], what: str) -> None:
        self.wait()
        self._pending.append(
            (_start_save(directory, items, what, background=True), directory, what)
        )


# --- internals ------------------------------------------------------------------------------


def _path(directory: str | Path) -> Any:
    """An `epath.Path` (local or `gs://`); local paths made absolute, as Orbax requires."""
    text = os.fspath(directory)
    return storage.run_path(text) if "://" in text else epath.Path(Path(text).absolute())


def _returned(directory: Any) -> Any:
    """What the save functions return: a pathlib.Path for a local directory."""
    return Path(os.fspath(directory)) if _local(directory) else directory


def _local(directory: Any) -> bool:
    return "://" not in os.fspath(directory)


def _has_steps(directory: Any) -> bool:
    return any(_step_number(p.name) is not None for p in directory.iterdir())


def _step_number(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def _options(directory: Any, *, background: bool = False, writing: bool = True) -> Any:
    return ocp.CheckpointManagerOptions(
        max_to_keep=1,  # the previous step is deleted only once the new one is committed
        create=writing,
        cleanup_tmp_directories=writing,  # debris of an interrupted save
        enable_async_checkpointing=background,
        # gs:// keeps Orbax's default there (a commit file: a rename is a copy on GCS).
        temporary_path_class=_DurableRename if _local(directory) else None,
    )


class _DurableRename(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """Orbax's commit by rename, with the step's files fsync'd before it and the rename
    fsync'd after it; the points where the fault tests kill a save are marked here. (Orbax
    finalizes each item's directory inside the step first, the same way: those pass through.)"""

    async def finalize(self, *args: Any, **kwargs: Any) -> None:
        final = Path(os.fspath(self.get_final()))
        if _step_number(final.name) is None:  # an item inside the uncommitted step
            await super().finalize(*args, **kwargs)
            return
        await asyncio.to_thread(_fsync_tree, Path(os.fspath(self.get())))
        faults.reached("checkpoint.write")  # written, not committed
        await super().finalize(*args, **kwargs)
        await asyncio.to_thread(_fsync, final.parent)
        faults.reached("checkpoint.commit")  # committed, the previous step not yet deleted


def _save(directory: Any, items: dict[str, Any], what: str, tokenizer: Any = None) -> None:
    manager = _start_save(directory, items, what, tokenizer=tokenizer)
    try:
        with _quiet_saving():
            manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - Orbax raises many types; one line for all
        raise _failed(directory, what, e) from e
    finally:
        manager.close()


def _start_save(
    directory: Any, items: dict[str, Any], what: str, *, background: bool = False,
    tokenizer: Any = None,
) -> ocp.CheckpointManager:  # fmt: skip
    """Open the manager at `directory` and start a save of `items` as the next step; the
    caller waits for it (and closes the manager)."""
    try:
        occupied = directory.is_file() or (directory.is_dir() and any(directory.iterdir()))
        if occupied and not is_checkpoint(directory):
            # Replacing would delete whatever is there: refuse rather than guess it is disposable.
            raise CheckpointError(
                f"{directory}: exists and is not a tpt_jax checkpoint; not replacing"
            )
        manager = ocp.CheckpointManager(
            directory, options=_options(directory, background=background)
        )
    except OSError as e:
        raise _write_error(directory, what, e) from e
    except Exception as e:  # noqa: BLE001 - e.g. Orbax's own "exists and is not a directory"
        if isinstance(e, CheckpointError):
            raise
        raise _failed(directory, what, e) from e
    try:
        if tokenizer is not None and is_primary():
            _write_tokenizer(tokenizer, directory)
        latest = manager.latest_step()
        step = 0 if latest is None else latest + 1
        with _quiet_saving():
            manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # noqa: BLE001
        manager.close()
        raise _failed(directory, what, e) from e
    return manager


def _write_tokenizer(tokenizer: Any, directory: Any) -> None:
    """`tokenizer/` beside the steps, replaced whole: written locally, then copied in. Not part
    of the atomic step (a kill can leave a new tokenizer beside the old step), which is safe
    for how it is used: a run's tokenizer does not change between its rounds."""
    with tempfile.TemporaryDirectory(prefix="tpt-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        target = directory / "tokenizer"
        if target.exists():
            target.rmtree()
        target.mkdir(parents=True)
        for name in sorted(os.listdir(tmp)):
            if os.path.isfile(os.path.join(tmp, name)):
                (target / name).write_bytes(Path(tmp, name).read_bytes())


def _failed(directory: Any, what: str, e: BaseException) -> CheckpointError:
    """The one-line error for a failed save: the OS reason when there is one (TensorStore
    reports a failed write as ValueError("... [os_error_code='28']"))."""
    if isinstance(e, CheckpointError):
        return e
    if _local(directory) and is_primary() and directory.is_dir():
        for debris in directory.glob(f"*{TMP_MARK}*"):  # the uncommitted step
            shutil.rmtree(debris, ignore_errors=True)
    if not isinstance(e, OSError):
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code is None:
            reason = _first_line(e) or type(e).__name__
            return CheckpointError(f"{directory}: cannot write {what} ({reason})")
        number = int(code.group(1))
        e = OSError(number, os.strerror(number), os.fspath(directory))
    return _write_error(directory, what, e)


def _write_error(directory: Any, what: str, e: OSError) -> CheckpointWriteError:
    """`directory: cannot write <what> (<OS reason>); <what is left there>`."""
    reason = e.strerror or str(e) or type(e).__name__
    if _local(directory):
        local = Path(os.fspath(directory))
        blocker = next((p for p in local.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # mkdir says "File exists" or "Not a directory": name the file
            reason = f"{blocker} is a file, not a directory"
    try:
        finished = _has_steps(directory)
    except OSError:
        finished = False
    left = f"the previous {what} there is intact" if finished else "nothing was written"
    error = CheckpointWriteError(f"{directory}: cannot write {what} ({reason}); {left}")
    error.errno = e.errno
    return error


def _latest(
    directory: Any, what: str, *, missing_ok: bool = False
) -> tuple[ocp.CheckpointManager, int | None]:
    """A manager for reading `directory` (it neither creates nor cleans) and its last step
    (None: there is none, allowed with `missing_ok`)."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: {what} directory not found")
    try:
        manager = ocp.CheckpointManager(directory, options=_options(directory, writing=False))
        step = manager.latest_step()
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{directory}: cannot read {what} ({_first_line(e)})") from e
    if step is None and not missing_ok:
        debris = sorted(p.name for p in directory.iterdir() if TMP_MARK in p.name)
        if debris:
            raise CheckpointError(
                f"{directory}: no committed {what}, only an interrupted save ({debris[0]})"
            )
        raise CheckpointError(f"{directory}: not a tpt_jax {what} (no committed step)")
    return manager, step


def _restore(manager: ocp.CheckpointManager, step: int, **items: Any) -> Any:
    """One item of a step, restored; any failure is one line naming the step's directory."""
    (name,) = items
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))[name]
    except Exception as e:  # orbax/tensorstore raise many types; the user needs one line
        where = manager.directory / str(step) / name
        raise CheckpointError(
            f"{where}: cannot restore ({type(e).__name__}: {_first_line(e)})"
        ) from e


def _restore_legacy(path: Any, target: Any) -> Any:
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        return checkpointer.restore(path, args=ocp.args.StandardRestore(target))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: cannot restore ({type(e).__name__}: {_first_line(e)})"
        ) from e
    finally:
        checkpointer.close()


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _host(tree: Any) -> Any:
    """Host copies of every array when one process holds them all: the device buffers may be
    donated to the next train step while a background save is still writing (on CPU
    `np.asarray` would alias them). Arrays spanning other processes are Orbax's to copy."""
    if jax.process_count() > 1:
        return tree
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


class _quiet_saving:
    """While saving, Orbax's writer threads log a failed write with its traceback before the
    save re-raises it (we report it in one line), and TensorStore's completions of abandoned
    writes hit a closed event loop: drop those reports (see `_QuietFailures`)."""

    def __enter__(self) -> None:
        self.failures = _QuietFailures.install()
        self.quiet = _DropTracebacks()
        logging.getLogger("absl").addFilter(self.quiet)
        self.failures.saving += 1

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        self.failures.saving -= 1
        logging.getLogger("absl").removeFilter(self.quiet)
        if error is not None:
            self.failures.failed = True
            gc.collect()  # report (and drop) the abandoned writes now, not at interpreter exit


class _DropTracebacks(logging.Filter):
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


def _read_json(path: Any, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({e})") from None


def _check_config(hf_cfg: Any, where: Any) -> dict[str, Any]:
    if not isinstance(hf_cfg, dict) or FORMAT_KEY not in hf_cfg:
        raise CheckpointError(f"{where}: not a tpt_jax checkpoint config (no {FORMAT_KEY!r})")
    if hf_cfg[FORMAT_KEY] not in (1, FORMAT_VERSION):
        raise CheckpointError(f"{where}: unsupported {FORMAT_KEY} {hf_cfg[FORMAT_KEY]!r}")
    return hf_cfg


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
