"""Decoder building blocks with Hugging Face numerics: RMSNorm, split-half RoPE, GQA attention, MLP.

Parameters are stored in einsum-friendly shapes ([D, N, H] rather than HF's [N*H, D]) and carry
logical axis names (`logical_axes` metadata) that `tpt_jax.sharding` maps onto the mesh.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from tpt_jax.models.attention import (
    LayerCache,
    PrefillCache,
    SlotCache,
    self_attend,
)
from tpt_jax.models.config import ModelConfig, RopeScaling

Initializer = jax.nn.initializers.Initializer


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype, init=None):
    """A parameter with logical axis names; random normal(0.02) unless `init` says otherwise."""
    init = init or jax.nn.initializers.normal(0.02)
    return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32; Gemma scales by (1 + w), LLaMA by w (HF's two variants)."""

    def __init__(self, dim: int, eps: float, plus_one: bool, *, rngs: nnx.Rngs, dtype=jnp.float32):
        init = jax.nn.initializers.zeros if plus_one else jax.nn.initializers.ones
        self.weight = param(rngs, (dim,), ("norm",), dtype, init)
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.weight[...]
        if self.plus_one:  # Gemma multiplies in float32, then casts
            return (normed * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
        return w * normed.astype(x.dtype)  # LLaMA casts first, then multiplies


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Inverse frequencies [H/2] as HF computes them (float32), with linear or llama3 scaling."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
    inv = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    if scaling is None:
        return inv
    if scaling.rope_type == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32)
    ctx = scaling.original_max_position_embeddings
    low_wavelen = ctx / scaling.low_freq_factor
    high_wavelen = ctx / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (ctx / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(
    x: Float[Array, "B T N H"], positions: Int[Array, "B T"], inv_freq: np.ndarray
) -> Float[Array, "B T N H"]:
    """Split-half ("rotate_half") RoPE, the layout of HF checkpoints."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = param(rngs, (d, n, h), ("embed", "q_heads", "head_dim"), dtype)
        self.k_proj = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), dtype)
        self.v_proj = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), dtype)
        self.o_proj = param(rngs, (n, h, d), ("q_heads", "head_dim", "embed"), dtype)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg.rms_norm_eps, True, rngs=rngs, dtype=dtype)
            self.k_norm = RMSNorm(h, cfg.rms_norm_eps, True, rngs=rngs, dtype=dtype)
        sliding = cfg.layer_type(layer) == "sliding_attention"
        self.window = cfg.sliding_window if sliding else None
        local_theta = cfg.rope_local_theta if sliding else None
        theta = local_theta or cfg.rope_theta
        self.rope = (h, theta, None if local_theta else cfg.rope_scaling)  # static, hashable
        self.scale = cfg.attn_scale
        self.cap = cfg.attn_logit_softcap
        self.qk_norm = cfg.qk_norm

    def project_qkv(
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"]
    ) -> tuple[Float[Array, "B T N H"], Float[Array, "B T K H"], Float[Array, "B T K H"]]:
        """Queries, keys and values with QK-norm and RoPE applied (what a KV cache stores)."""
        q = jnp.einsum("BTD,DNH->BTNH", x, self.q_proj[...])
        k = jnp.einsum("BTD,DKH->BTKH", x, self.k_proj[...])
        v = jnp.einsum("BTD,DKH->BTKH", x, self.v_proj[...])
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = rope_inv_freq(*self.rope)
        return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v

    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        valid: Bool[Array, "B T"],
        cache: LayerCache | PrefillCache | SlotCache | None = None,
        segments: Int[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], LayerCache | PrefillCache | SlotCache | None]:
        """Attention over the new tokens alone, or (with `cache`) over every cached token too.

        The cache writes this layer's new keys and values, then attends by position (a
        `LayerCache` from its slot positions, a `SlotCache` from its rows' lengths), which makes
        sliding windows exact however long the cache grows.
        """
        q, k, v = self.project_qkv(x, positions)
        if cache is None:
            out = self_attend(
                q, k, v, positions, valid, segments, self.window, self.scale, self.cap
            )
            return self.output(out), None
        cache = cache.write(k, v)
        return self.output(cache.attend(q, positions, self.window, self.scale, self.cap)), cache

    def output(self, attn: Float[Array, "B T N H"]) -> Float[Array, "B T D"]:
        return jnp.einsum("BTNH,NHD->BTD", attn, self.o_proj[...])


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); SiLU for LLaMA, tanh-GELU (GeGLU) for Gemma."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = param(rngs, (d, f), ("embed", "mlp"), dtype)
        self.up_proj = param(rngs, (d, f), ("embed", "mlp"), dtype)
        self.down_proj = param(rngs, (f, d), ("mlp", "embed"), dtype)
        self.activation = cfg.activation

    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        gate = jnp.einsum("BTD,DF->BTF", x, self.gate_proj[...])
        up = jnp.einsum("BTD,DF->BTF", x, self.up_proj[...])
        if self.activation == "silu":
            act = jax.nn.silu(gate)
        else:
            act = jax.nn.gelu(gate, approximate=True)
        return jnp.einsum("BTF,FD->BTD", act * up, self.down_proj[...])
