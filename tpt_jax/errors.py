"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class TptError(ValueError):
    """A mistake in the user's input (path, file, config); the message names what is at fault."""


class UnsupportedModelError(TptError):
    """A checkpoint or config describes a model this package does not implement."""


class CheckpointError(TptError):
    """A weights file or directory is missing, truncated, corrupt or inconsistent."""
