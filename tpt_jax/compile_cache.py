"""JAX's persistent compilation cache, on by default for `tpt` commands (layer 0).

A resumed run, each new round of a run, and every later run with the same shapes load their
compiled programs from disk instead of compiling again (a train step of a 2B model takes tens
of seconds to compile per shape). Where it lives, first match wins:
    JAX_COMPILATION_CACHE_DIR   set by the user: JAX reads it itself; left alone
    TPT_COMPILE_CACHE=off       no persistent cache
    TPT_COMPILE_CACHE=PATH      that directory
    otherwise                   $XDG_CACHE_HOME/tpt_jax/xla (default ~/.cache/tpt_jax/xla)
One directory for every run of a user, not one per run directory: programs depend on shapes and
code, not on the run, so runs share them. JAX keys each entry by the program, the backend and
the jax/XLA versions, so an upgrade or another machine can never load a stale program.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tpt_jax" / "xla"


def enable() -> Path | None:
    """Turn the cache on (see the module docstring); returns its directory, None when off.
    Call before the first compilation: JAX reads the setting once, when it first compiles."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    choice = os.environ.get("TPT_COMPILE_CACHE", "").strip()
    if choice.lower() == "off":
        return None
    path = Path(choice).expanduser() if choice else default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
