"""tpt_jax: Think–Prune–Train in JAX/Flax.

- `tpt_jax.load(path)` loads a HF directory, a GGUF file, a tpt_jax checkpoint or a shipped
  model name and returns a `ModelHandle` (logits, generate, save).
- `tpt_jax.Run(config, run_dir)` is one TPT run (what `tpt run` drives): `.run()`,
  `.stage(name, round)`, `.report()`, `.model(round)`.
- `tpt_jax.load_config(path, overrides)` reads a run config into a `RunConfig`.

Submodules import lazily, so `import tpt_jax` stays cheap (no JAX until one is used).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ModelHandle", "Run", "RunConfig", "__version__", "load", "load_config"]

_LAZY = {
    "load": "tpt_jax.api",
    "ModelHandle": "tpt_jax.api",
    "Run": "tpt_jax.round",
    "RunConfig": "tpt_jax.config",
    "load_config": "tpt_jax.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tpt_jax' has no attribute {name!r}")
