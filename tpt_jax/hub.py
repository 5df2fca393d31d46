"""Hugging Face Hub model ids (`org/name`, `org/name@revision`) as local snapshot directories.

`resolve_model` turns a model spec into a path that `tpt_jax.load` reads: a spec that exists on
disk is that path, whatever it looks like; a string of the form `org/name[@revision]` is looked
up in the local Hugging Face cache, then downloaded (only the files a model needs) unless
`HF_HUB_OFFLINE=1`. Every failure is one line (`TptError`). `huggingface_hub` is imported only
when a hub id is resolved, so `import tpt_jax` neither pays for it nor needs it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tpt_jax.errors import TptError

__all__ = [
    "ALLOW_PATTERNS",
    "IGNORE_PATTERNS",
    "cache_dir",
    "is_hub_id",
    "parse_hub_id",
    "resolve_model",
]

# What `load` reads from a HF directory (hf_io, tokenizer): weights (one file or sharded with
# an index), the config, generation defaults and the fast tokenizer with its chat template.
# Everything else in a repo (*.bin, *.pth, GGUF, ONNX, tokenizer.model) is never read.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
]
# Root files only: subfolders such as Llama's original/ hold a second copy of the weights, and
# `*` in the patterns above would otherwise match across `/`.
IGNORE_PATTERNS = ["*/*"]

# A repo id as the Hub validates it (huggingface_hub.utils.validate_repo_id): namespace/name,
# each 1-96 of [A-Za-z0-9_.-], starting and ending with a letter, digit or `_`. The namespace
# is required here: a bare `name` is far more likely a local path that is missing.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[^\s@]+))?")
_TRUE = {"1", "on", "yes", "true"}


def parse_hub_id(spec: str | Path) -> tuple[str, str | None] | None:
    """`(repo_id, revision)` when `spec` is spelled as a hub id (`org/name`, `org/name@rev`),
    else None. Says nothing about whether the repo exists, or a local path of that name."""
    if not isinstance(spec, str):  # a Path is always a local path
        return None
    m = _HUB_ID.fullmatch(spec)
    if m is None or "--" in m["repo"] or ".." in m["repo"] or m["repo"].endswith(".gguf"):
        return None  # a missing `dir/model.gguf` is a missing file, not a repo
    return m["repo"], m["revision"]


def is_hub_id(spec: str | Path) -> bool:
    """Whether `spec` names a hub model rather than a local path: spelled `org/name[@rev]` and
    not present on disk (a local path of the same spelling always wins)."""
    return parse_hub_id(spec) is not None and not Path(spec).exists()


def cache_dir() -> Path:
    """The hub cache in use: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default
    (~/.cache/huggingface/hub). Read from the environment at each call, not at import, so a
    variable set after `huggingface_hub` was imported still counts."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    # Either the variable now or huggingface_hub's reading of it at import: when either says
    # offline, nothing may touch the network.
    now = any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    from huggingface_hub import constants

    return now or bool(constants.HF_HUB_OFFLINE)


def resolve_model(spec: str | Path, revision: str | None = None) -> Path:
    """The local path to load for `spec`: `spec` itself when it exists on disk or is not a hub
    id (the loader then reports what is wrong with it), else the snapshot directory of the hub
    model `org/name`, at `revision` or the one after `@` (a branch, tag or commit; default
    main). The local cache is used first; otherwise the model's files are downloaded, unless
    HF_HUB_OFFLINE is set. Raises `TptError` (one line) when that fails."""
    parsed = parse_hub_id(spec)
    if parsed is None or Path(spec).exists():
        return Path(spec)
    repo, pinned = parsed
    if pinned and revision and pinned != revision:
        raise TptError(f"{spec}: revision {pinned!r} after @ and revision={revision!r} differ")
    revision = pinned or revision
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise TptError(
            f"{spec}: no such local path, and reading it as a Hugging Face Hub id needs "
            "huggingface_hub: pip install huggingface_hub (or the extra: pip install 'tpt-jax[hf]')"
        ) from None
    cache = cache_dir()
    at = f" at revision {revision!r}" if revision else ""
    kwargs = dict(
        repo_id=repo,
        revision=revision,
        cache_dir=cache,
        allow_patterns=ALLOW_PATTERNS,
        ignore_patterns=IGNORE_PATTERNS,
    )
    # The cache first, with no network at all: a model downloaded once loads the same way on
    # every later call (a resumed run sees the weights it started with, even if main moved).
    try:
        return Path(huggingface_hub.snapshot_download(**kwargs, local_files_only=True))
    except getattr(errors, "IncompleteSnapshotError", ()):  # an interrupted download (>= 2.x)
        cached = "only partly in"
    except errors.LocalEntryNotFoundError:
        cached = "not in"
    except ValueError as e:  # HFValidationError: an id or revision the Hub would refuse
        raise TptError(f"{spec}: not a valid Hugging Face Hub id ({_first_line(e)})") from None
    if _offline():
        raise TptError(
            f"{spec}: no such local path, and Hugging Face Hub model {repo}{at} is {cached} the "
            f"cache at {cache}; HF_HUB_OFFLINE is set, so nothing is downloaded: download it "
            f"with `hf download {repo}{_rev_flag(revision)}` (network needed) or unset "
            "HF_HUB_OFFLINE"
        )
    try:
        return Path(huggingface_hub.snapshot_download(**kwargs))
    except errors.GatedRepoError:  # a RepositoryNotFoundError too: test it first
        raise TptError(
            f"{spec}: {repo} is a gated model: accept its licence at "
            f"https://huggingface.co/{repo}, then log in with `hf auth login` (or set HF_TOKEN)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise TptError(
            f"{spec}: no such local path, and no model {repo} on the Hugging Face Hub (if it is "
            "private, log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise TptError(
            f"{spec}: model {repo} has no revision {revision!r} (a branch, tag or commit) on "
            "the Hugging Face Hub"
        ) from None
    except errors.LocalEntryNotFoundError as e:  # the Hub unreachable, and not in the cache
        raise TptError(
            f"{spec}: not in the Hugging Face cache at {cache}, and the Hub could not be "
            f"reached ({_first_line(e)})"
        ) from None
    except (OSError, ValueError) as e:  # other HTTP errors (HfHubHTTPError is an OSError)
        raise TptError(
            f"{spec}: downloading from the Hugging Face Hub failed: {_first_line(e)}"
        ) from None


def _rev_flag(revision: str | None) -> str:
    return f" --revision {revision}" if revision else ""


def _first_line(e: BaseException) -> str:
    """huggingface_hub's messages run over several lines; the CLI prints one."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
