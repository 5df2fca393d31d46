"""tpt_jax: Think–Prune–Train in JAX/Flax.

`tpt_jax.load(path)` loads a HF directory, a GGUF file, a tpt_jax checkpoint or a shipped model
name and returns a `ModelHandle`. Submodules import lazily so `import tpt_jax` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "ModelHandle", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("load", "ModelHandle"):
        from tpt_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'tpt_jax' has no attribute {name!r}")
