"""Masked next-token cross-entropy (layer 1).

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
