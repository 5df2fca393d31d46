"""Hugging Face Hub ids (`org/name`, `org/name@revision`) for `tpt_jax.load`, `model.path` and
`tpt convert`, all offline: a hub cache is laid out by hand in a temporary HF_HOME (refs/,
snapshots/<commit>/ linking into blobs/, as huggingface_hub writes it), and the Hub's failures
(gated, not found, no such revision, unreachable) are simulated by replacing
`huggingface_hub.snapshot_download`, so no test touches the network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import huggingface_hub
import numpy as np
import pytest
from hf_tiny import make_hf_model
from huggingface_hub import constants, errors
from huggingface_hub.utils import filter_repo_objects

import tpt_jax
from tpt_jax import hub
from tpt_jax.cli import main
from tpt_jax.errors import TptError
from tpt_jax.round import Run
from tpt_jax.safetensors_io import SafetensorsDir

MAIN = "a" * 40  # refs/main points here
OLD = "b" * 40  # an older commit, also tagged v1
TOKENS = [[3, 17, 42, 5, 99, 11, 7]]


def add_snapshot(cache: Path, repo: str, commit: str, files: Path, refs=()) -> Path:
    """Put the files of `files` into the hub cache as commit `commit` of model `repo`: content
    in blobs/, relative symlinks from snapshots/<commit>/, and each ref in refs/ naming it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny HF model directories with different weights: the two commits of the repo."""
    out = {}
    for name, seed in (("main", 0), ("old", 1)):
        path = tmp_path_factory.mktemp(name)
        make_hf_model("llama_tied", seed=seed).save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch, models) -> Path:
    """An offline hub cache at $HF_HOME/hub holding org/tiny at MAIN (main) and OLD (v1)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub's own switch too
    root = tmp_path / "hf" / "hub"
    add_snapshot(root, "org/tiny", MAIN, models["main"], refs=("main",))
    add_snapshot(root, "org/tiny", OLD, models["old"], refs=("v1",))
    return root


def snapshot(cache: Path, commit: str) -> Path:
    return cache / "models--org--tiny" / "snapshots" / commit


def one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_parse_hub_id():
    assert hub.parse_hub_id("google/gemma-2-2b-it") == ("google/gemma-2-2b-it", None)
    assert hub.parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert hub.parse_hub_id(f"org/name@{MAIN}") == ("org/name", MAIN)
    not_ids = ["smollm2", "./org/name", "/abs/org", "a/b/c", "dir/model.gguf", "org--x/y", "-o/n"]
    assert [s for s in not_ids if hub.parse_hub_id(s)] == []
    assert hub.parse_hub_id(Path("org/name")) is None  # a Path is always a local path


def test_hub_id_loads_the_same_model_as_its_snapshot(cache):
    handle = tpt_jax.load("org/tiny")
    assert handle.source == str(snapshot(cache, MAIN))
    direct = tpt_jax.load(snapshot(cache, MAIN))
    np.testing.assert_array_equal(handle.logits(TOKENS), direct.logits(TOKENS))


def test_revision_pins_the_snapshot(cache, models):
    assert hub.resolve_model("org/tiny") == snapshot(cache, MAIN)
    assert hub.resolve_model(f"org/tiny@{OLD}") == snapshot(cache, OLD)  # a commit
    assert hub.resolve_model("org/tiny@v1") == snapshot(cache, OLD)  # a tag or branch (a ref)
    assert hub.resolve_model("org/tiny", revision="v1") == snapshot(cache, OLD)
    with pytest.raises(TptError) as e:
        hub.resolve_model("org/tiny@v1", revision="main")
    one_line(e, "'v1'", "'main'", "differ")
    # The pinned commit's weights, not main's.
    old = tpt_jax.load("org/tiny@v1").logits(TOKENS)
    np.testing.assert_array_equal(old, tpt_jax.load(models["old"]).logits(TOKENS))
    assert not np.array_equal(old, tpt_jax.load(models["main"]).logits(TOKENS))


def test_local_path_wins_over_hub_id(cache, models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "org" / "tiny"
    local.mkdir(parents=True)
    for f in models["old"].iterdir():  # the local directory differs from the cached main
        (local / f.name).write_bytes(f.read_bytes())
    assert hub.resolve_model("org/tiny") == Path("org/tiny")
    assert not hub.is_hub_id("org/tiny") and hub.is_hub_id("org/other")
    handle = tpt_jax.load("org/tiny")
    assert handle.source == "org/tiny"
    np.testing.assert_array_equal(handle.logits(TOKENS), tpt_jax.load(models["old"]).logits(TOKENS))


def test_offline_and_not_cached_is_one_line_and_never_downloads(cache, monkeypatch):
    calls = []
    real = huggingface_hub.snapshot_download

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    with pytest.raises(TptError) as e:
        tpt_jax.load("org/missing")
    one_line(e, "org/missing", "HF_HUB_OFFLINE", str(cache), "hf download org/missing")
    with pytest.raises(TptError) as e:
        hub.resolve_model("org/tiny@nope")  # a revision the cache does not have
    one_line(e, "org/tiny", "revision 'nope'", "HF_HUB_OFFLINE", "--revision nope")
    assert calls and all(c["local_files_only"] for c in calls)


def test_offline_with_an_interrupted_download_says_so(cache, models):
    """huggingface_hub records a commit's file list (trees/<commit>.json) before downloading;
    a snapshot missing one of the listed model files is not loaded half-way."""
    commit = "c" * 40
    add_snapshot(cache, "org/partial", commit, models["main"], refs=("main",))
    listed = {
        f.name: {"size": f.stat().st_size, "blob_id": "0" * 40} for f in models["main"].iterdir()
    }
    listed["model-00002-of-00002.safetensors"] = {"size": 1, "blob_id": "1" * 40}  # not there
    trees = cache / "models--org--partial" / "trees"
    trees.mkdir()
    (trees / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listed}))
    with pytest.raises(TptError) as e:
        hub.resolve_model("org/partial")
    one_line(e, "org/partial", "only partly in the cache", "HF_HUB_OFFLINE")


def _http_error(cls: type, status: int, repo: str) -> Exception:
    """A huggingface_hub HTTP error as it raises them: a multi-line message and a response."""
    url = f"https://huggingface.co/api/models/{repo}"
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return cls(f"{status} Client Error.\n\nCannot access {url}.", response=response)


@pytest.fixture
def online(cache, monkeypatch):
    """The Hub "reachable", through a stand-in for snapshot_download: a cache miss for
    local_files_only, else whatever the test sets as `online.result` (a path or an error)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    class Hub:
        result: object = None
        calls: list[dict] = []

        @staticmethod
        def snapshot_download(**kwargs):
            Hub.calls.append(kwargs)
            if kwargs.get("local_files_only"):
                raise errors.LocalEntryNotFoundError("Cannot find an appropriate cached snapshot")
            if isinstance(Hub.result, Exception):
                raise Hub.result
            return str(Hub.result)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", Hub.snapshot_download)
    return Hub


def test_download_when_not_cached_fetches_only_model_files(online, cache):
    online.result = snapshot(cache, OLD)  # "downloaded"
    assert hub.resolve_model("org/fresh@v2") == snapshot(cache, OLD)
    first, second = online.calls
    assert first["local_files_only"] and not second.get("local_files_only")
    assert second["repo_id"] == "org/fresh" and second["revision"] == "v2"
    assert Path(second["cache_dir"]) == cache
    repo_files = [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja", "pytorch_model.bin", "tokenizer.model",
        "original/consolidated.00.pth", "original/params.json", "onnx/model.safetensors",
        "README.md", "model.gguf",
    ]  # fmt: skip
    kept = filter_repo_objects(
        repo_files,
        allow_patterns=second["allow_patterns"],
        ignore_patterns=second["ignore_patterns"],
    )
    assert sorted(kept) == sorted(repo_files[:9])


@pytest.mark.parametrize(
    "error, needles",
    [
        (
            _http_error(errors.GatedRepoError, 403, "org/gated"),
            ["org/gated", "gated", "accept its licence", "https://huggingface.co/org/gated",
             "hf auth login", "HF_TOKEN"],
        ),
        (
            _http_error(errors.RepositoryNotFoundError, 401, "org/gated"),
            ["org/gated", "no model org/gated on the Hugging Face Hub", "hf auth login"],
        ),
        (
            _http_error(errors.RevisionNotFoundError, 404, "org/gated"),
            ["org/gated@v9", "no revision 'v9'"],
        ),
        (
            errors.LocalEntryNotFoundError("Got: ConnectError: boom\nAn error happened"),
            ["org/gated@v9", "could not be reached", "ConnectError: boom"],
        ),
    ],
    ids=["gated", "not_found", "no_revision", "unreachable"],
)  # fmt: skip
def test_hub_errors_are_one_line(online, error, needles):
    online.result = error
    with pytest.raises(TptError) as e:
        tpt_jax.load("org/gated@v9")
    one_line(e, *needles)


def test_without_huggingface_hub(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import` now fails
    with pytest.raises(TptError) as e:
        hub.resolve_model("org/tiny")
    one_line(e, "org/tiny", "pip install huggingface_hub", "tpt-jax[hf]")
    assert hub.resolve_model("smollm2") == Path("smollm2")  # only hub ids need it


def test_import_tpt_jax_does_not_import_huggingface_hub():
    code = "import sys, tpt_jax, tpt_jax.hub; assert 'huggingface_hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_cli_convert_hub_id(cache, tmp_path, capsys):
    code = main(["convert", "org/tiny", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0 and "wrote hf" in out, err
    a, b = SafetensorsDir(snapshot(cache, MAIN)), SafetensorsDir(tmp_path / "out")
    assert set(a.keys()) == set(b.keys())
    assert all(np.array_equal(a.get(k), b.get(k)) for k in a.keys())

    code = main(["convert", "org/missing", str(tmp_path / "out2")])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tpt: error: org/missing: ")
    assert "HF_HUB_OFFLINE" in lines[0] and not (tmp_path / "out2").exists()


def test_run_model_path_hub_id(cache, tmp_path):
    config = {"model": {"path": f"org/tiny@{OLD}"}, "task": {"name": "arithmetic"}}
    assert Run(config, tmp_path / "run").model_for(0).source == str(snapshot(cache, OLD))
    config["model"]["path"] = "org/missing"
    with pytest.raises(TptError) as e:
        Run(config, tmp_path / "run2").model_for(0)
    msg = one_line(e, "HF_HUB_OFFLINE")
    assert msg.startswith("model.path: org/missing: "), msg
