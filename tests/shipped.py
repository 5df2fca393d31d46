"""The shipped GGUF models, each loaded once per test session and shared by the test files that
compare with it (transformers dequantizes Gemma 3's Q4_K_M file in numpy: about a minute per
load on 2 cores)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import jax

import tpt_jax
from tpt_jax.gguf_io import find_gemma3_270m_gguf, find_smollm2_gguf
from tpt_jax.sharding import make_mesh

FINDERS = {"smollm2": find_smollm2_gguf, "gemma3-270m": find_gemma3_270m_gguf}


def gguf_path(name: str) -> Path:
    return Path(FINDERS[name]())


@functools.cache
def handle(name: str) -> tpt_jax.ModelHandle:
    """tpt_jax's float32 model on one device (the 8 fake CPU devices would each repeat a batch
    of one on 2 real cores)."""
    return tpt_jax.load(name, mesh=make_mesh((1, 1, 1), jax.devices()[:1]))


_READERS: dict = {}


@contextlib.contextmanager
def _each_gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file's metadata for the config, again for the weights and
    again for the tokenizer (Gemma 3's 262k-entry vocabulary: ~25 s a parse on 2 cores, 2/3 of
    a load); inside this block one read-only parse per file serves every call, made by our
    reader (the same `gguf.GGUFReader`, parsing from a plain view of the memory map: 2-3x
    faster)."""
    import gguf

    from tpt_jax.gguf_io import _open

    original = gguf.GGUFReader

    def shared(path, mode="r"):
        key = (str(path), mode)
        if key not in _READERS:
            gguf.GGUFReader = original  # what our reader subclasses
            try:
                _READERS[key] = _open(Path(path)) if mode == "r" else original(path, mode)
            finally:
                gguf.GGUFReader = shared
        return _READERS[key]

    gguf.GGUFReader = shared  # transformers imports it at each call, so this is what it gets
    try:
        yield
    finally:
        gguf.GGUFReader = original


@functools.cache
def reference_model(name: str):
    """transformers' float32 model from the same file, eager attention, in eval mode."""
    import torch
    import transformers

    path = gguf_path(name)
    with _each_gguf_parsed_once():
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
        ).eval()


@functools.cache
def reference_tokenizer(name: str):
    import transformers

    path = gguf_path(name)
    with _each_gguf_parsed_once():
        return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
