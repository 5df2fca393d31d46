"""Masked next-token cross-entropy (layer 1): from logits, or chunked from hidden states.

Returns sums, not means: gradient accumulation divides the summed loss of every microbatch by
the token count of the whole optimizer step, so the step's loss is the mean over its completion
tokens however the examples were packed or split into microbatches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


def masked_cross_entropy(
    logits: Float[Array, "B T V"],
    targets: Int[Array, "B T"],
    mask: Bool[Array, "B T"],
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(sum of -log p(target) over masked positions, number of masked positions), float32.

    Logits of any dtype are upcast first, then shifted by their row maximum before anything
    else: exp cannot overflow, and the target's log-probability is never the difference of two
    large numbers (float32 has a resolution of 1e-3 at 1e4).
    """
    logits = logits.astype(jnp.float32)
    # The loss is invariant to the shift, so no gradient needs to flow through the maximum.
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    picked = jnp.take_along_axis(shifted, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1)) - picked
    # where, not multiply: a non-finite loss at a masked position (padding) must not leak in.
    total = jnp.sum(jnp.where(mask, nll, 0.0))
    return total, jnp.sum(mask, dtype=jnp.float32)


def chunked_cross_entropy(
    hidden: Float[Array, "B M D"],
    head: Float[Array, "V D"],
    targets: Int[Array, "B M"],
    mask: Bool[Array, "B M"],
    cap: float | None = None,
    chunk: int | None = None,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """`masked_cross_entropy` of the logits `softcap(hidden @ head.T, cap)`, without ever
    holding them: a scan over chunks of `chunk` positions (rows x slots flattened), each chunk's
    logits [chunk, V] formed in float32 (float32 accumulation of `hidden`'s dtype) and, by
    `jax.checkpoint`, formed again in the backward pass instead of being kept. Peak logit memory
    is chunk x V x 4 bytes whatever B x M is (1024 x 256k: 1 GiB, against 13 GB for the
    [8, 1600, 256k] float32 logits of a Gemma microbatch). `chunk` None: `default_chunk`.
    When one chunk holds every position there is nothing to save by recomputing: the logits are
    formed once and kept for the backward pass, as an unchunked loss would."""
    d = hidden.shape[-1]
    flat_h = hidden.reshape(-1, d)
    flat_t, flat_m = targets.reshape(-1), mask.reshape(-1)
    n = flat_h.shape[0]
    chunk = max(1, min(chunk or default_chunk(head.shape[0]), n))
    pad = -n % chunk
    if pad:  # filler positions are masked out
        flat_h = jnp.pad(flat_h, ((0, pad), (0, 0)))
        flat_t, flat_m = jnp.pad(flat_t, (0, pad)), jnp.pad(flat_m, (0, pad))
    steps = (n + pad) // chunk

    def one(h: Array, t: Array, m: Array) -> Array:
        logits = jnp.einsum("ND,VD->NV", h, head, preferred_element_type=jnp.float32)
        if cap is not None:
            logits = jnp.tanh(logits / cap) * cap
        total, _ = masked_cross_entropy(logits, t, m)
        return total

    if steps == 1:
        return one(flat_h, flat_t, flat_m), jnp.sum(flat_m, dtype=jnp.float32)
    recomputed = jax.checkpoint(one)

    def body(total: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, None]:
        return total + recomputed(*xs), None

    xs = (
        flat_h.reshape(steps, chunk, d),
        flat_t.reshape(steps, chunk),
        flat_m.reshape(steps, chunk),
    )
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total, jnp.sum(flat_m, dtype=jnp.float32)


LOGIT_CHUNK_BYTES = 2**30  # float32 logits of one chunk: 1 GiB


def default_chunk(vocab: int) -> int:
    """Positions per chunk: as many as LOGIT_CHUNK_BYTES of float32 logits hold, a multiple of
    128 (SmolLM2's 49k vocabulary: 5,376; Llama 3's 128k: 2,048; Gemma's 256k: 1,024)."""
    return max(128, LOGIT_CHUNK_BYTES // (vocab * 4) // 128 * 128)
