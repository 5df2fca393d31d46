"""The decoder: one config-driven `Block` for LLaMA 3.x, SmolLM2, Gemma 2 and Gemma 3.

Module attribute names mirror Hugging Face module names (`layers.{i}.self_attn.q_proj`, ...), so
the HF name table in `tpt_jax.hf_io` is a rename plus a reshape.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from tpt_jax.models.attention import (
    LayerCache,
    PrefillCache,
    SlotCache,
    slot_visibility,
    softcap,
)
from tpt_jax.models.config import ModelConfig
from tpt_jax.models.layers import MLP, Attention, RMSNorm, param


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for B rows and S slots; a slot is usable when `valid`."""

    k: tuple[Float[Array, "B S K H"], ...]
    v: tuple[Float[Array, "B S K H"], ...]
    positions: Int[Array, "B S"]
    valid: Bool[Array, "B S"]

    @staticmethod
    def empty(cfg: ModelConfig, batch: int, slots: int, dtype: Any = jnp.float32) -> KVCache:
        shape = (batch, slots, cfg.num_kv_heads, cfg.head_dim)
        layers = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))  # noqa: E731
        return KVCache(
            layers(),
            layers(),
            jnp.zeros((batch, slots), jnp.int32),
            jnp.zeros((batch, slots), bool),
        )

    def repeat_rows(self, n: int) -> KVCache:
        """Each row n times in a row (row b → rows b*n .. b*n+n-1): n samples share a prefill."""
        return jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), self)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlotKV:
    """The generation engine's cache: keys and values of every layer for B decode slots of S
    positions each, heads before positions (see `tpt_jax.models.attention.SlotCache`)."""

    k: tuple[Float[Array, "B K S H"], ...]
    v: tuple[Float[Array, "B K S H"], ...]

    @staticmethod
    def shape(cfg: ModelConfig, slots: int, length: int) -> tuple[int, int, int, int]:
        return (slots, cfg.num_kv_heads, length, cfg.head_dim)

    @property
    def length(self) -> int:
        return self.k[0].shape[2]


def left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int = 0) -> tuple[Any, Any]:
    """Right-align each row in `width` columns: (tokens [B, width], valid [B, width]) NumPy."""
    tokens = np.full((len(rows), width), pad_id, np.int32)
    valid = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        if len(r):
            tokens[i, width - len(r) :] = r
            valid[i, width - len(r) :] = True
    return tokens, valid


def positions_from_valid(valid: Bool[Array, "B T"]) -> Int[Array, "B T"]:
    """Per-row positions of left-padded tokens: 0 at each row's first real token (padding gets
    0 too; the mask hides it). One rule for the forward pass and `logits()`."""
    return jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0).astype(jnp.int32)


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
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        valid: Bool[Array, "B T"],
        cache: LayerCache | PrefillCache | SlotCache | None = None,
        segments: Int[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], LayerCache | PrefillCache | SlotCache | None]:
        attn, cache = self.self_attn(self.input_layernorm(x), positions, valid, cache, segments)
        if not self.post_norms:
            h = x + attn
            return h + self.mlp(self.post_attention_layernorm(h)), cache
        h = x + self.post_attention_layernorm(attn)
        out = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        return out, cache


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

    def head(self) -> Float[Array, "V D"]:
        """The unembedding matrix (the embedding when tied)."""
        return self.embed_tokens[...] if self.config.tie_embeddings else self.lm_head[...]

    def unembed(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        logits = jnp.einsum("BTD,VD->BTV", self.norm(x), self.head())
        return softcap(logits.astype(jnp.float32), self.config.final_logit_softcap)

    def hidden(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        valid: Bool[Array, "B T"],
        segments: Int[Array, "B T"] | None = None,
        *,
        remat: str = "none",
        scan: bool = False,
    ) -> Float[Array, "B T D"]:
        """The final-normed hidden states that `unembed` would turn into logits (training: the
        loss gathers the completion positions first). `remat` ("none", "minimal": keep matmul
        outputs and recompute the rest in the backward pass, "full": keep only each layer's
        input) and `scan` (one compiled layer body, see `scan_blocks`) change memory and
        compile time, not the function."""
        x = self.embed(tokens)

        def block_fn(graphdef: nnx.GraphDef, state: nnx.State, x: Array) -> Array:
            out, _ = nnx.merge(graphdef, state)(x, positions, valid, None, segments)
            return out

        if remat != "none":
            block_fn = jax.checkpoint(block_fn, policy=REMAT_POLICIES[remat], static_argnums=(0,))
        splits = [nnx.split(block) for block in self.layers]
        if scan:
            x = scan_blocks(block_fn, splits, x)
        else:
            for graphdef, state in splits:
                x = block_fn(graphdef, state, x)
        return self.norm(x)

    def __call__(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"] | None = None,
        valid: Bool[Array, "B T"] | None = None,
        segments: Int[Array, "B T"] | None = None,
    ) -> Float[Array, "B T V"]:
        """Logits for every position. `valid` marks real tokens (False = padding);
        `positions` default to 0..T-1; with left padding pass the per-row positions. Packed
        rows pass `segments` (one id per packed sequence) and positions restarting per segment."""
        if valid is None:
            valid = jnp.ones(tokens.shape, dtype=bool)
        if positions is None:
            positions = positions_from_valid(valid)
        x = self.embed(tokens)
        for block in self.layers:
            x, _ = block(x, positions, valid, None, segments)
        return self.unembed(x)

    def extend(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        valid: Bool[Array, "B T"],
        cache: KVCache,
        start: Int[Array, ""],
        last_only: bool = False,
    ) -> tuple[Float[Array, "B T V"], KVCache]:
        """Run T new tokens against a KV cache, writing them into slots start..start+T-1.

        Prefill is `extend` of the whole (left-padded) prompt at slot 0; each decode step is
        `extend` of one token. `last_only` unembeds just the final position: a prefill needs
        one row of logits, not T rows of a 256k vocabulary.
        """
        at = (0, start)
        slot_pos = jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32), at)
        slot_valid = jax.lax.dynamic_update_slice(cache.valid, valid, at)
        layers = [
            LayerCache(cache.k[i], cache.v[i], slot_pos, slot_valid, start)
            for i in range(len(self.layers))
        ]
        x, layers = self._blocks(self.embed(tokens), positions, valid, layers)
        if last_only:
            x = x[:, -1:]
        ks, vs = tuple(c.k for c in layers), tuple(c.v for c in layers)
        return self.unembed(x), KVCache(ks, vs, slot_pos, slot_valid)

    def prefill(
        self, tokens: Int[Array, "B T"], lengths: Int[Array, " B"]
    ) -> tuple[Float[Array, "B V"], tuple[Array, ...], tuple[Array, ...]]:
        """Right-padded prompts (row b's tokens in its first lengths[b] columns, position j in
        column j): the logits after each prompt's last token, and every layer's keys and values
        [B, T, K, H] (zero past each prompt), which the engine copies into its decode slots.
        Attention is fused where the platform has a kernel (`causal_attend`)."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        valid = positions < lengths[:, None]
        layers = [PrefillCache(None, None, lengths) for _ in self.layers]
        x, layers = self._blocks(self.embed(tokens), positions, valid, layers)
        last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)
        return self.unembed(last)[:, 0], tuple(c.k for c in layers), tuple(c.v for c in layers)

    def decode(
        self,
        tokens: Int[Array, " B"],
        positions: Int[Array, " B"],
        live: Bool[Array, " B"],
        cache: SlotKV,
    ) -> tuple[Float[Array, "B V"], SlotKV]:
        """One token per decode slot at its own position, written to slot `position` of its
        row (rows that are not live write nothing), attending to slots 0..position."""
        slots = cache.length
        index = jnp.where(live, positions, slots)  # out of range: the scatter drops it
        windows = {block.self_attn.window for block in self.layers}
        visible = {w: slot_visibility(positions, slots, w) for w in windows}
        layers = [
            SlotCache(cache.k[i], cache.v[i], index, visible[block.self_attn.window])
            for i, block in enumerate(self.layers)
        ]
        x, layers = self._blocks(
            self.embed(tokens[:, None]), positions[:, None], live[:, None], layers
        )
        logits = self.unembed(x)[:, 0]
        return logits, SlotKV(tuple(c.k for c in layers), tuple(c.v for c in layers))

    def _blocks(self, x, positions, valid, caches: list) -> tuple[Array, list]:
        out = []
        for block, cache in zip(self.layers, caches, strict=True):
            x, cache = block(x, positions, valid, cache)
            out.append(cache)
        return x, out


# jax.checkpoint policies by `train.remat` name.
REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def scan_blocks(block_fn, splits: list[tuple[nnx.GraphDef, nnx.State]], x: Array) -> Array:
    """`x` through every block with one compiled layer body: `lax.scan` over groups of P layers
    (P = the period of the layer pattern: 1 for LLaMA, 2 for Gemma 2's local/global layers, 6
    for Gemma 3's), each group's P blocks unrolled, their weights stacked along a new axis; the
    layers after the last whole group run unrolled (Gemma 3 1B: 26 = 4 x 6 + 2)."""
    graphdefs = [g for g, _ in splits]
    n = len(splits)
    period = next(
        p for p in range(1, n + 1) if all(graphdefs[i] == graphdefs[i % p] for i in range(n))
    )
    groups = n // period
    if groups < 2:
        for graphdef, state in splits:
            x = block_fn(graphdef, state, x)
        return x
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    stacked = [
        jax.tree.map(stack, *(splits[g * period + j][1] for g in range(groups)))
        for j in range(period)
    ]

    def body(x: Array, group: list[nnx.State]) -> tuple[Array, None]:
        for graphdef, state in zip(graphdefs[:period], group, strict=True):
            x = block_fn(graphdef, state, x)
        return x, None

    x, _ = jax.lax.scan(body, x, stacked)
    for graphdef, state in splits[groups * period :]:
        x = block_fn(graphdef, state, x)
    return x


def init_model(cfg: ModelConfig, seed: int = 0, dtype: Any = jnp.float32) -> Transformer:
    """A randomly initialised model (tests, benchmarks)."""
    return Transformer(cfg, rngs=nnx.Rngs(seed), dtype=dtype)


def abstract_model(cfg: ModelConfig, dtype: Any = jnp.float32) -> Transformer:
    """The model with `ShapeDtypeStruct` leaves: shapes and axes, no memory."""
    return nnx.eval_shape(lambda: init_model(cfg, 0, dtype))


@functools.cache  # building the abstract model takes seconds at 80 layers (Llama-3.1-70B)
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
