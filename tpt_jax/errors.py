"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class TptError(ValueError):
    """A mistake in the user's input (path, file, config); the message names what is at fault."""


class UnsupportedModelError(TptError):
    """A checkpoint or config describes a model this package does not implement."""


class CheckpointError(TptError):
    """A weights file or directory is missing, truncated, corrupt or inconsistent."""


def require(module: str, extra: str, what: str):  # noqa: ANN201 - returns the module
    """Import an optional dependency, or stop with one line naming the extra that has it:
    `require("gguf", "gguf", "reading a .gguf file")`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TptError(
            f"{what} needs the {module.split('.')[0]} package: pip install 'tpt-jax[{extra}]'"
        ) from None
