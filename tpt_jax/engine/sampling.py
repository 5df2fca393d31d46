"""Choosing tokens: sampling parameters, one completion's record, and the per-row draw.

Each row's draw depends only on its own logits and key, never on the other rows of the batch,
so a sample does not depend on which slot or batch it was computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from tpt_jax.errors import TptError

NUCLEUS_CANDIDATES = 256  # top-p first looks among this many tokens; a full sort only if needed


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    logprobs: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.n >= 1, "n must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise TptError(f"{message} (got {self})")


@dataclass
class Sample:
    """One completion: its token ids (ending with the stop token when finish_reason is 'stop'),
    the decoded text (without the stop token) when a tokenizer is known, and optional log-probs
    of each chosen token under the model's unscaled distribution."""

    tokens: list[int]
    finish_reason: str  # "stop" or "length"
    text: str | None = None
    logprobs: list[float] | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)


def sample_keys(seed: int, key_ids: Array, samples: Array) -> Array:
    """The random stream of sample j of the prompt with key id p: fold(fold(seed, p), j). Each
    token then folds in its own index, so nothing depends on slots, batches or meshes."""
    base = jax.random.PRNGKey(seed)
    fold = lambda p, j: jax.random.fold_in(jax.random.fold_in(base, p), j)  # noqa: E731
    return jax.vmap(fold)(key_ids.astype(jnp.uint32), samples.astype(jnp.uint32))


def sample_logits(
    logits: Float[Array, "B V"],
    keys: Array,
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    top_k: int,
    top_p_below_one: bool = True,
) -> Int[Array, " B"]:
    """One token per row: argmax at temperature 0, else a draw after temperature, top-k, then
    top-p (nucleus, renormalised within the top-k as transformers does).

    With neither filter (top_k 0, top_p 1) the draw is an inverse CDF over the whole softmax:
    no candidates, no sort. Top-p without top-k looks among the `NUCLEUS_CANDIDATES` best
    tokens (`lax.top_k`, no sort of the vocabulary); a row whose candidates hold less mass than
    top_p falls back to the whole vocabulary, so the result is exact. At temperature 0 none of
    that work runs. `top_p_below_one=False` (static) promises top_p is 1: the nucleus code is
    then not compiled at all.
    """
    logits = logits.astype(jnp.float32)
    if not top_p_below_one:
        top_p = jnp.float32(1.0)
    return jax.lax.cond(
        temperature == 0,
        lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
        lambda: _sample(logits, keys, temperature, top_p, top_k, top_p_below_one),
    )


def _sample(logits, keys, temperature, top_p, top_k: int, top_p_below_one: bool) -> Array:
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if not top_k and not top_p_below_one:
        return _inverse_cdf(keys, jax.nn.softmax(scaled, axis=-1))
    if not top_k:
        return jax.lax.cond(
            top_p >= 1.0,
            lambda: _inverse_cdf(keys, jax.nn.softmax(scaled, axis=-1)),
            lambda: _nucleus_only(keys, scaled, top_p),
        )
    vals, idx = jax.lax.top_k(scaled, min(top_k, scaled.shape[-1]))
    return _draw(keys, *_nucleus(vals, jax.nn.softmax(vals, axis=-1), idx, top_p))


def _nucleus_only(keys: Array, scaled: Array, top_p: Array) -> Array:
    vals, idx = jax.lax.top_k(scaled, min(NUCLEUS_CANDIDATES, scaled.shape[-1]))
    probs = jax.nn.softmax(scaled, axis=-1)
    in_candidates = jnp.take_along_axis(probs, idx, axis=-1)
    enough = jnp.sum(in_candidates, axis=-1) >= top_p
    token = _draw(keys, *_nucleus(vals, in_candidates, idx, top_p))

    def sort_and_cut() -> Array:  # some row's nucleus is wider than the candidates
        vals, idx = jax.lax.top_k(scaled, scaled.shape[-1])
        return _draw(keys, *_nucleus(vals, jnp.take_along_axis(probs, idx, -1), idx, top_p))

    full = jax.lax.cond(jnp.all(enough), lambda: token, sort_and_cut)
    return jnp.where(enough, token, full)


def _nucleus(vals: Array, probs: Array, idx: Array, top_p: Array) -> tuple[Array, Array]:
    """Keep the best tokens until their mass reaches top_p (the one crossing it included)."""
    before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(before < top_p, vals, -jnp.inf), idx


def _draw(keys: Array, vals: Array, idx: Array) -> Array:
    choice = jax.vmap(jax.random.categorical)(keys, vals)
    return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _inverse_cdf(keys: Array, probs: Float[Array, "B V"]) -> Int[Array, " B"]:
    """Exact sampling from the full softmax with one uniform number per row: a Gumbel draw
    would need B x V random numbers every step, which dominates a CPU decode step."""
    u = jax.vmap(lambda k: jax.random.uniform(k, dtype=jnp.float32))(keys)
    cdf = jnp.cumsum(probs, axis=-1)
    token = jnp.sum(cdf < u[:, None] * cdf[:, -1:], axis=-1)
    return jnp.minimum(token, probs.shape[-1] - 1).astype(jnp.int32)


def chosen_logprobs(logits: Float[Array, "B V"], tokens: Int[Array, " B"]) -> Float[Array, " B"]:
    """Log-probabilities of the chosen tokens under the model's unscaled distribution."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
