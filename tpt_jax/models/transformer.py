"""The decoder: one config-driven `Block` for LLaMA 3.x, SmolLM2, Gemma 2 and Gemma 3.

Module attribute names mirror Hugging Face module names (`layers.{i}.self_attn.q_proj`, ...), so
the HF name table in `tpt_jax.hf_io` is a rename plus a reshape.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from tpt_jax.models.config import ModelConfig
from tpt_jax.models.layers import MLP, Attention, RMSNorm, param, softcap


class Block(nnx.Module):
    """Pre-norm residual block; Gemma adds norms after attention and MLP (`post_norms`)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        norm = lambda: RMSNorm(  # noqa: E731
            cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one, rngs=rngs, dtype=dtype
        )
        self.input_layernorm = norm()
        self.self_attn = Attention(cfg, layer, rngs=rngs, dtype=dtype)
        # HF names: LLaMA's pre-MLP norm is called `post_attention_layernorm`; Gemma uses that
        # name for the norm on the attention output and `pre_feedforward_layernorm` before MLP.
        self.post_attention_layernorm = norm()
        if cfg.post_norms:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype)
        self.post_norms = cfg.post_norms

    def __call__(
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"], valid: Bool[Array, "B T"]
    ) -> Float[Array, "B T D"]:
        attn = self.self_attn(self.input_layernorm(x), positions, valid)
        return self.residual_mlp(x, attn)

    def residual_mlp(self, x: Float[Array, "B T D"], attn: Float[Array, "B T D"]) -> Array:
        """Everything after the attention output: shared by the full and the cached pass."""
        if not self.post_norms:
            h = x + attn
            return h + self.mlp(self.post_attention_layernorm(h))
        h = x + self.post_attention_layernorm(attn)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Transformer(nnx.Module):
    """Token ids in, next-token logits out (float32)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        v, d = cfg.vocab_size, cfg.hidden_size
        self.config = cfg
        self.embed_tokens = param(rngs, (v, d), ("vocab", "embed"), dtype)
        self.layers = nnx.List(
            [Block(cfg, i, rngs=rngs, dtype=dtype) for i in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(d, cfg.rms_norm_eps, cfg.norm_plus_one, rngs=rngs, dtype=dtype)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (v, d), ("vocab", "embed"), dtype)

    def embed(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        table = self.embed_tokens[...]
        x = jnp.take(table, tokens, axis=0)
        if self.config.scale_embeddings:  # HF casts sqrt(D) to the weight dtype first
            x = x * jnp.asarray(self.config.hidden_size**0.5, dtype=table.dtype)
        return x

    def unembed(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        head = self.embed_tokens[...] if self.config.tie_embeddings else self.lm_head[...]
        logits = jnp.einsum("BTD,VD->BTV", self.norm(x), head)
        return softcap(logits.astype(jnp.float32), self.config.final_logit_softcap)

    def __call__(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"] | None = None,
        valid: Bool[Array, "B T"] | None = None,
    ) -> Float[Array, "B T V"]:
        """Logits for every position. `valid` marks real tokens (False = padding);
        `positions` default to 0..T-1; with left padding pass the per-row positions."""
        if valid is None:
            valid = jnp.ones(tokens.shape, dtype=bool)
        if positions is None:
            positions = jnp.cumsum(valid, axis=-1) - 1
        x = self.embed(tokens)
        for block in self.layers:
            x = block(x, positions, valid)
        return self.unembed(x)


def init_model(cfg: ModelConfig, seed: int = 0, dtype: Any = jnp.float32) -> Transformer:
    """A randomly initialised model (tests, benchmarks)."""
    return Transformer(cfg, rngs=nnx.Rngs(seed), dtype=dtype)


def abstract_model(cfg: ModelConfig, dtype: Any = jnp.float32) -> Transformer:
    """The model with `ShapeDtypeStruct` leaves: shapes and axes, no memory."""
    return nnx.eval_shape(lambda: init_model(cfg, 0, dtype))


def param_count(cfg: ModelConfig) -> int:
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return sum(int(x.size) for x in jax.tree.leaves(state))


def forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: Int[Array, "B T"],
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
) -> Float[Array, "B T V"]:
    """The pure function that `jax.jit` compiles: params come in as an argument, never closed
    over, so one compilation serves any weights with the same shapes and shardings."""
    return nnx.merge(graphdef, state)(tokens, positions, valid)
