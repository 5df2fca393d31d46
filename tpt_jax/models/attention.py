"""Attention kernels and the two KV caches that feed them.

`attend` is the reference (and the training/prefill path): grouped-query attention with a
position mask. `LayerCache` is one layer of a position-masked cache ([B, S, K, H], the layout
the projections produce), used by `Transformer.extend` for prefill and for tests. `SlotCache`
is one layer of the generation engine's cache: one row per decode slot, heads before slots
([B, K, S, H]), slot j of a row holding position j, so a row's filled length is all a mask needs.

Why [B, K, S, H] for decoding: a one-token query against S cached keys is a batch of [S, H] x
[H, G] products, one per (row, KV head). With K before S each operand is contiguous; with the
projection layout XLA transposes the whole cache every step. Measured on a 2-core CPU
(SmolLM2-135M shape, 32 rows, 384 slots, 30 layers): 47 ms per step against 290 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

NEG = float(jnp.finfo(jnp.float32).min)  # masked scores: exp underflows to exactly 0


def softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def attention_mask(
    q_pos: Int[Array, "B T"],
    k_pos: Int[Array, "B S"],
    k_valid: Bool[Array, "B S"],
    window: int | None,
    segments: Int[Array, "B T"] | None = None,
) -> Bool[Array, "B T S"]:
    """Causal by position (so left padding and caches need no index arithmetic), plus a window.

    A window W lets a query see keys at most W-1 positions back, as HF's `kv > q - W`.
    `segments` (no cache only, so T == S) keeps packed sequences apart: a token sees only keys
    of its own segment, whose positions restart at 0.
    """
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (delta >= 0) & k_valid[:, None, :]
    if window is not None:
        mask &= delta < window
    if segments is not None:
        mask &= segments[:, :, None] == segments[:, None, :]
    return mask


def attend(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S K H"],
    v: Float[Array, "B S K H"],
    mask: Bool[Array, "B T S"],
    scale: float,
    cap: float | None,
) -> Float[Array, "B T N H"]:
    """Grouped-query attention without repeating K/V: queries are viewed as [K, G] groups."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, h)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k) * scale
    scores = softcap(scores.astype(jnp.float32), cap)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)


# The kernel for self-attention without a cache (training, scoring): "xla" (`attend`, the
# tested reference), "splash" (Pallas splash attention, TPU), "splash_interpret" (the same
# kernel interpreted: CPU tests), "cudnn" (cuDNN flash attention through
# `jax.nn.dot_product_attention`, GPU), "dot_product_xla" (that same call with XLA's
# implementation: CPU tests of the masks the cuDNN path passes), or None = by platform. Read
# while tracing.
_SELF_ATTENTION_KERNEL: str | None = None


@contextlib.contextmanager
def self_attention_kernel(name: str | None) -> Iterator[None]:
    """Force a kernel for `self_attend` while tracing inside this block (tests, benchmarks)."""
    global _SELF_ATTENTION_KERNEL
    old, _SELF_ATTENTION_KERNEL = _SELF_ATTENTION_KERNEL, name
    try:
        yield
    finally:
        _SELF_ATTENTION_KERNEL = old


def self_attend(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T K H"],
    v: Float[Array, "B T K H"],
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
    segments: Int[Array, "B T"] | None,
    window: int | None,
    scale: float,
    cap: float | None,
) -> Float[Array, "B T N H"]:
    """Attention of T tokens over themselves: packed training rows (`segments`) or left-padded
    rows (`valid`). On TPU, splash attention (fused, segment ids, soft-cap, local windows: the
    T x T scores never reach HBM) where T is a multiple of its 128-wide blocks; on GPU, cuDNN
    flash attention for 16-bit inputs without a soft-cap (`masked_dot_product_attend`);
    elsewhere, for other shapes or for what a kernel refuses, `attend` with a position mask.

    The fused kernels mask by column, `attend` by position: the same thing here, because a
    segment's (or a left-padded row's) tokens are contiguous with positions rising by one per
    column."""
    kernel = _SELF_ATTENTION_KERNEL
    if kernel is None:
        platform = jax.devices()[0].platform
        kernel = "splash" if platform == "tpu" else fused_implementation(q.dtype, cap) or "xla"
    if kernel.startswith("splash") and q.shape[1] % SPLASH_BLOCK == 0:
        ids = (segments if segments is not None else valid).astype(jnp.int32)
        return splash_attend(
            q, k, v, ids, window, scale, cap, interpret=kernel == "splash_interpret"
        )
    if kernel in ("cudnn", "dot_product_xla") and cap is None:
        implementation = "cudnn" if kernel == "cudnn" else "xla"
        try:
            return masked_dot_product_attend(
                q, k, v, valid, segments, window, scale, implementation
            )
        except (NotImplementedError, ValueError, TypeError):  # shape or GPU cuDNN refuses
            pass  # (checked while tracing, so the fallback costs nothing at run time)
    mask = attention_mask(positions, positions, valid, window, segments)
    return attend(q, k, v, mask, scale, cap)


def masked_dot_product_attend(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T K H"],
    v: Float[Array, "B T K H"],
    valid: Bool[Array, "B T"],
    segments: Int[Array, "B T"] | None,
    window: int | None,
    scale: float,
    implementation: str,
) -> Float[Array, "B T N H"]:
    """`jax.nn.dot_product_attention`, causal (and windowed) by column, with packed segments
    and padding as a boolean [B, 1, T, T] mask. cuDNN turns the mask into an additive bias
    tile it reads inside the fused kernel: [B, T, T] 16-bit numbers, not the [B, N, T, T]
    float32 scores of `attend`. Why not cuDNN's own packed (ragged offsets) form: it is only in
    jax's private `jax._src.cudnn` API, which JAX does not keep stable between releases."""
    keep = valid[:, None, :]
    if segments is not None:
        keep = keep & (segments[:, :, None] == segments[:, None, :])
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=keep[:, None],
        scale=scale,
        is_causal=True,
        local_window_size=None if window is None else (window - 1, 0),
        implementation=implementation,
    )


SPLASH_BLOCK = 128


@functools.lru_cache(maxsize=64)
def _splash_kernel(length: int, group: int, window: int | None, cap: float | None, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    shape = (length, length)
    one = masks.CausalMask(shape) if window is None else masks.LocalMask(shape, (window - 1, 0), 0)
    block = min(512, length) if length % min(512, length) == 0 else SPLASH_BLOCK
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    return splash.make_splash_mqa_single_device(
        masks.MultiHeadMask([one] * group),
        block_sizes=sizes,
        attn_logits_soft_cap=cap,
        interpret=interpret,
    )


def splash_attend(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T K H"],
    v: Float[Array, "B T K H"],
    segment_ids: Int[Array, "B T"],
    window: int | None,
    scale: float,
    cap: float | None,
    *,
    interpret: bool = False,
) -> Float[Array, "B T N H"]:
    """Splash attention per (row, KV head): the G query heads of a group share one K/V (the
    MQA form of the kernel, as MaxText runs GQA). The scale goes into the queries (the kernel
    has none); the soft-cap is the kernel's own, applied to the scaled scores as `attend` does."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )

    b, t, n, h = q.shape
    kv = k.shape[2]
    kernel = _splash_kernel(t, n // kv, window, cap, interpret)
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]

    def one(q1, k1, v1, ids):  # [G, T, H], [T, H], [T, H], [T]
        return kernel(q1, k1, v1, segment_ids=splash.SegmentIds(q=ids, kv=ids))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over KV heads
    out = jax.vmap(per_head)(qg, kt, vt, segment_ids)  # over rows: [B, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerCache:
    """One layer's keys and values for S slots, with the slot positions and validity shared by
    all layers; `start` is the slot where the tokens of this call are written."""

    k: Float[Array, "B S K H"]
    v: Float[Array, "B S K H"]
    positions: Int[Array, "B S"]
    valid: Bool[Array, "B S"]
    start: Int[Array, ""]

    def write(self, k: Float[Array, "B T K H"], v: Float[Array, "B T K H"]) -> LayerCache:
        at = (0, self.start, 0, 0)
        return dataclasses.replace(
            self,
            k=jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), at),
            v=jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), at),
        )

    def attend(
        self, q: Float[Array, "B T N H"], positions: Int[Array, "B T"], window, scale, cap
    ) -> Float[Array, "B T N H"]:
        mask = attention_mask(positions, self.positions, self.valid, window)
        return attend(q, self.k, self.v, mask, scale, cap)


def fused_implementation(dtype, cap: float | None) -> str | None:
    """The fused kernel for this platform, if one applies: cuDNN flash attention on GPU for
    16-bit inputs without a soft-cap (cuDNN has no tanh cap, so Gemma 2 stays on XLA)."""
    if cap is None and jnp.dtype(dtype).itemsize == 2 and jax.devices()[0].platform == "gpu":
        return "cudnn"
    return None


def causal_attend(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B T K H"],
    v: Float[Array, "B T K H"],
    lengths: Int[Array, " B"],
    window: int | None,
    scale: float,
    cap: float | None,
    implementation: str | None = None,
) -> Float[Array, "B T N H"]:
    """Causal self-attention over right-padded rows (row b real in its first lengths[b]
    positions, position = column): a prefill. `jax.nn.dot_product_attention` with
    `implementation` ("cudnn", "xla"; default `fused_implementation`), else ("reference" or
    no kernel) `attend`. Outputs at padded positions are unspecified."""
    implementation = implementation or fused_implementation(q.dtype, cap)
    if implementation not in (None, "reference") and cap is None:
        try:
            return jax.nn.dot_product_attention(
                q,
                k,
                v,
                scale=scale,
                is_causal=True,
                query_seq_lengths=lengths,
                key_value_seq_lengths=lengths,
                local_window_size=None if window is None else (window - 1, 0),
                implementation=implementation,
            )
        except (NotImplementedError, ValueError, TypeError):  # shape the kernel refuses
            pass  # (checked while tracing, so the fallback costs nothing at run time)
    b, t = q.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = attention_mask(positions, positions, positions < lengths[:, None], window)
    return attend(q, k, v, mask, scale, cap)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefillCache:
    """Captures one layer's keys and values of a prefill (zero past each row's length, so
    padding can never put a NaN into a decode slot) and attends causally over them."""

    k: Float[Array, "B T K H"] | None
    v: Float[Array, "B T K H"] | None
    lengths: Int[Array, " B"]

    def write(self, k: Float[Array, "B T K H"], v: Float[Array, "B T K H"]) -> PrefillCache:
        real = (jnp.arange(k.shape[1])[None, :] < self.lengths[:, None])[:, :, None, None]
        zero = lambda x: jnp.where(real, x, jnp.zeros((), x.dtype))  # noqa: E731
        return dataclasses.replace(self, k=zero(k), v=zero(v))

    def attend(self, q, positions, window, scale, cap) -> Float[Array, "B T N H"]:
        del positions  # column = position
        return causal_attend(q, self.k, self.v, self.lengths, window, scale, cap)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlotCache:
    """One layer of the engine's cache for a single new token per row.

    `index` is where each row writes its new key and value (its position; S or more for a row
    that must not write, which the scatter drops). `visible` holds, per window size, which slots
    each row's query may see: computed once per step for all layers, not once per layer.
    """

    k: Float[Array, "B K S H"]
    v: Float[Array, "B K S H"]
    index: Int[Array, " B"]
    visible: Bool[Array, "B S"]

    def write(self, k: Float[Array, "B 1 K H"], v: Float[Array, "B 1 K H"]) -> SlotCache:
        rows = jnp.arange(k.shape[0])
        put = lambda cache, new: cache.at[rows, :, self.index].set(  # noqa: E731
            new[:, 0].astype(cache.dtype), mode="drop"
        )
        # The barrier keeps XLA from fusing the in-place scatter into the attention products
        # that read the cache next: fused, XLA:CPU recomputes the scatter inside the dot and a
        # decode step of SmolLM2-135M (32 rows, 384 slots) took 3x longer (measured).
        k, v = jax.lax.optimization_barrier((put(self.k, k), put(self.v, v)))
        return dataclasses.replace(self, k=k, v=v)

    def attend(
        self, q: Float[Array, "B 1 N H"], positions: Int[Array, "B 1"], window, scale, cap
    ) -> Float[Array, "B 1 N H"]:
        del positions, window  # `visible` already encodes both
        return decode_attend(q, self.k, self.v, self.visible, scale, cap)


def decode_attend(
    q: Float[Array, "B 1 N H"],
    k: Float[Array, "B K S H"],
    v: Float[Array, "B K S H"],
    visible: Bool[Array, "B S"],
    scale: float,
    cap: float | None,
) -> Float[Array, "B 1 N H"]:
    """One query per row against its slots, with `attend`'s numerics (scores in the cache
    dtype, softmax in float32, weights cast back for the value product). Scores come out
    [B, K, S, G] (each (row, head) a [S, H] x [H, G] product, which XLA:CPU runs ~2x faster than
    [G, H] x [H, S]) and the softmax divides after the value product (G x H numbers, not S x G)."""
    b, _, n, h = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, kv, n // kv, h).astype(k.dtype)
    batch = ((0, 1), (0, 1))  # (row, KV head) pairs: explicit, so XLA never transposes the cache
    scores = jax.lax.dot_general(k, qg, (((3,), (3,)), batch)) * scale  # [B, K, S, G]
    scores = softcap(scores.astype(jnp.float32), cap)
    scores = scores + jnp.where(visible, 0.0, NEG)[:, None, :, None]  # one [B, S] bias, added
    weights = jnp.exp(scores - jnp.max(scores, axis=2, keepdims=True))
    out = jax.lax.dot_general(weights.astype(v.dtype), v, (((2,), (2,)), batch))  # [B, K, G, H]
    out = out / jnp.sum(weights, axis=2)[..., None].astype(out.dtype)
    return out.reshape(b, 1, n, h).astype(q.dtype)


def slot_visibility(
    positions: Int[Array, " B"], slots: int, window: int | None
) -> Bool[Array, "B S"]:
    """Which slots a query at `positions` sees when slot j holds position j: j <= position, and
    within the window when there is one."""
    delta = positions[:, None] - jnp.arange(slots, dtype=positions.dtype)[None, :]
    mask = delta >= 0
    if window is not None:
        mask &= delta < window
    return mask
