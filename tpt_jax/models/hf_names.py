"""The two-way table between Hugging Face parameter names and ours, for every family.

Each row pairs an HF key with our parameter path and a layout transform that runs both ways.
Transforms are transposes and reshapes only (views, never arithmetic), so a round trip is
bit-identical and a loader can slice a memory-mapped HF tensor straight into device shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tpt_jax.models.config import ModelConfig

Layout = Literal["same", "linear", "heads_in", "heads_out"]
Path = tuple[str | int, ...]

# HF keys a checkpoint may carry that have no parameter here (recomputed buffers).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Row:
    hf_key: str
    path: Path
    layout: Layout
    heads: int = 0  # N or K for the attention projections


def table(cfg: ModelConfig) -> list[Row]:
    """Every parameter of `cfg`'s model, exactly once."""
    rows = [Row("model.embed_tokens.weight", ("embed_tokens",), "same")]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", ("layers", i)
        attn, mlp = f"{hf}.self_attn", ours + ("self_attn",)
        rows += [
            Row(f"{attn}.q_proj.weight", mlp + ("q_proj",), "heads_in", cfg.num_heads),
            Row(f"{attn}.k_proj.weight", mlp + ("k_proj",), "heads_in", cfg.num_kv_heads),
            Row(f"{attn}.v_proj.weight", mlp + ("v_proj",), "heads_in", cfg.num_kv_heads),
            Row(f"{attn}.o_proj.weight", mlp + ("o_proj",), "heads_out", cfg.num_heads),
        ]
        if cfg.qk_norm:
            rows += [
                Row(f"{attn}.q_norm.weight", mlp + ("q_norm", "weight"), "same"),
                Row(f"{attn}.k_norm.weight", mlp + ("k_norm", "weight"), "same"),
            ]
        rows += [
            Row(f"{hf}.mlp.{p}.weight", ours + ("mlp", p), "linear")
            for p in ("gate_proj", "up_proj", "down_proj")
        ]
        norms = ["input_layernorm", "post_attention_layernorm"]
        if cfg.post_norms:
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        rows += [Row(f"{hf}.{n}.weight", ours + (n, "weight"), "same") for n in norms]
    rows.append(Row("model.norm.weight", ("norm", "weight"), "same"))
    if not cfg.tie_embeddings:
        rows.append(Row("lm_head.weight", ("lm_head",), "same"))
    return rows


def is_ignored(hf_key: str, cfg: ModelConfig) -> bool:
    """True for HF keys that carry nothing we need (a tied model's redundant lm_head too)."""
    if hf_key.endswith(IGNORED_SUFFIXES):
        return True
    return cfg.tie_embeddings and hf_key == "lm_head.weight"


def to_ours(row: Row, w: np.ndarray) -> np.ndarray:
    """HF layout → ours. Returns a view where NumPy can, so shards can be sliced lazily."""
    if row.layout == "same":
        return w
    if row.layout == "linear":  # HF [out, in] → [in, out]
        return w.T
    if row.layout == "heads_in":  # HF [N*H, D] → [D, N, H]
        return w.T.reshape(w.shape[1], row.heads, -1)
    return w.T.reshape(row.heads, -1, w.shape[0])  # o_proj: HF [D, N*H] → [N, H, D]


def to_hf(row: Row, w: np.ndarray) -> np.ndarray:
    """Ours → HF layout (the exact inverse of `to_ours`), C-contiguous for writing."""
    if row.layout == "linear":
        w = w.T
    elif row.layout == "heads_in":  # [D, N, H] → [N*H, D]
        w = w.reshape(w.shape[0], -1).T
    elif row.layout == "heads_out":  # [N, H, D] → [D, N*H]
        w = w.reshape(-1, w.shape[-1]).T
    return np.ascontiguousarray(w)


def hf_shape(row: Row, ours: tuple[int, ...]) -> tuple[int, ...]:
    if row.layout == "linear":
        return ours[::-1]
    if row.layout == "heads_in":  # [D, N, H]
        return (ours[1] * ours[2], ours[0])
    if row.layout == "heads_out":  # [N, H, D]
        return (ours[2], ours[0] * ours[1])
    return ours
