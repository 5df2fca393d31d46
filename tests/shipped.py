"""The shipped GGUF models, each loaded once per test session and shared by the test files that
compare with it (transformers dequantizes Gemma 3's Q4_K_M file in numpy: about a minute per
load on 2 cores)."""

from __future__ import annotations

import functools
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


@functools.cache
def reference_model(name: str):
    """transformers' float32 model from the same file, eager attention, in eval mode."""
    import torch
    import transformers

    path = gguf_path(name)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@functools.cache
def reference_tokenizer(name: str):
    import transformers

    path = gguf_path(name)
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
