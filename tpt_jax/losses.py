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

    Logits of any dtype are upcast first; logsumexp subtracts the row maximum, so large logits
    neither overflow nor lose the target's share to rounding.
    """
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    # where, not multiply: a non-finite loss at a masked position (padding) must not leak in.
    total = jnp.sum(jnp.where(mask, nll, 0.0))
    return total, jnp.sum(mask, dtype=jnp.float32)
