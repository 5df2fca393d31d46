"""The engine's compiled functions: prefill prompts, insert them into decode slots, decode a
chunk of steps for every slot, and resize the cache. Pure functions of (params, cache, state);
the host-side scheduler in `engine.py` decides what goes where.

A slot holds one sample: its pending token (already chosen, not yet run through the model),
that token's position (which is also the cache slot it is written to), how many tokens it has
produced, its limit, whether it is still live, and its random key. Token t of a sample uses
fold(key, t), so what a sample draws never depends on the slot it sits in or when it started.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from tpt_jax.engine.sampling import SamplingParams, chosen_logprobs, sample_logits
from tpt_jax.models.transformer import SlotKV


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlotState:
    token: Int[Array, " B"]  # chosen, emitted, not yet run through the model
    position: Int[Array, " B"]  # of `token`; also the cache slot it is written to
    count: Int[Array, " B"]  # tokens emitted so far
    limit: Int[Array, " B"]  # most tokens this sample may emit
    live: Bool[Array, " B"]
    key: Array  # [B, 2] uint32: the sample's random stream

    @staticmethod
    def empty(slots: int) -> SlotState:
        zeros = lambda: jnp.zeros((slots,), jnp.int32)  # noqa: E731 (distinct buffers: donated)
        live = jnp.zeros((slots,), bool)
        return SlotState(
            zeros(), zeros(), zeros(), zeros(), live, jnp.zeros((slots, 2), jnp.uint32)
        )


@dataclasses.dataclass(frozen=True)
class Static:
    """What a compiled function depends on besides shapes (hashable: a jit static argument)."""

    top_k: int
    top_p_below_one: bool  # False: no nucleus code is compiled at all
    logprobs: bool  # False: no log-softmax is computed
    stop_ids: tuple[int, ...]

    @staticmethod
    def of(params: SamplingParams, stop_ids: tuple[int, ...]) -> Static:
        # With top_k the nucleus cut runs inside the top-k candidates anyway, so top_p stays a
        # traced value there: one compilation per top_k whatever top_p is.
        nucleus = params.top_p < 1.0 or params.top_k > 0
        return Static(params.top_k, nucleus, params.logprobs, stop_ids)


def _model(graphdef: nnx.GraphDef, params: nnx.State) -> Any:
    return nnx.merge(graphdef, params)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def prefill(
    params: nnx.State,
    tokens: Int[Array, "P T"],
    lengths: Int[Array, " P"],
    *,
    graphdef: nnx.GraphDef,
) -> tuple[Float[Array, "P V"], tuple[Array, ...], tuple[Array, ...]]:
    """Logits after each right-padded prompt and its keys and values, [P, K, T, H] per layer."""
    logits, ks, vs = _model(graphdef, params).prefill(tokens, lengths)
    to_slots = lambda xs: tuple(x.transpose(0, 2, 1, 3) for x in xs)  # noqa: E731
    return logits, to_slots(ks), to_slots(vs)


def _choose(logits, keys, step, temperature, top_p, st: Static):
    step_keys = jax.vmap(jax.random.fold_in)(keys, step)
    token = sample_logits(logits, step_keys, temperature, top_p, st.top_k, st.top_p_below_one)
    logprob = chosen_logprobs(logits, token) if st.logprobs else jnp.zeros(token.shape)
    stop = jnp.isin(token, jnp.asarray(st.stop_ids, jnp.int32))
    return token, logprob, stop


@functools.partial(jax.jit, static_argnames=("st",), donate_argnames=("cache", "state"))
def insert(
    cache: SlotKV,
    state: SlotState,
    logits: Float[Array, "P V"],
    ks: tuple[Array, ...],
    vs: tuple[Array, ...],
    lengths: Int[Array, " P"],
    dst: Int[Array, "P N"],
    keys: Array,
    limits: Int[Array, " P"],
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    *,
    st: Static,
) -> tuple[SlotKV, SlotState, Int[Array, "P N"], Float[Array, "P N"]]:
    """Place sample j of prefilled prompt p in slot dst[p, j] (B or more: not now): copy the
    prompt's keys and values there and choose the sample's first token. One prefill serves all
    of a prompt's samples, placed now or in later calls. Returns the first tokens (-1 where
    nothing was placed) and their log-probs."""
    slots = cache.k[0].shape[0]
    width = ks[0].shape[2]
    p, n = dst.shape

    def place(j, carry):
        cache, state, first, first_lp = carry
        where = dst[:, j]
        put = lambda c, x: c.at[where, :, :width].set(x.astype(c.dtype), mode="drop")  # noqa: E731
        cache = SlotKV(
            tuple(put(c, x) for c, x in zip(cache.k, ks, strict=True)),
            tuple(put(c, x) for c, x in zip(cache.v, vs, strict=True)),
        )
        sample_keys = keys[:, j]
        token, logprob, stop = _choose(
            logits, sample_keys, jnp.zeros((p,), jnp.int32), temperature, top_p, st
        )
        row = lambda a, x: a.at[where].set(x, mode="drop")  # noqa: E731
        state = SlotState(
            token=row(state.token, token),
            position=row(state.position, lengths),
            count=row(state.count, jnp.ones((p,), jnp.int32)),
            limit=row(state.limit, limits),
            live=row(state.live, ~stop & (limits > 1)),
            key=row(state.key, sample_keys),
        )
        placed = where < slots
        first = first.at[:, j].set(jnp.where(placed, token, -1))
        first_lp = first_lp.at[:, j].set(logprob)
        return cache, state, first, first_lp

    first = jnp.full((p, n), -1, jnp.int32)
    init = (cache, state, first, jnp.zeros((p, n), jnp.float32))
    return jax.lax.fori_loop(0, n, place, init)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "steps", "st"), donate_argnames=("cache", "state")
)
def decode(
    params: nnx.State,
    cache: SlotKV,
    state: SlotState,
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    min_free: Int[Array, ""],
    *,
    graphdef: nnx.GraphDef,
    steps: int,
    st: Static,
) -> tuple[SlotKV, SlotState, Int[Array, "B S"], Float[Array, "B S"], Int[Array, ""]]:
    """Up to `steps` decode steps for every live slot, on device with no host round trip.
    Stops early once no slot is live, or once `min_free` slots are free (so the host can refill
    them while the rest wait as little as possible). Returns each step's emitted tokens (-1 for
    a slot that emitted nothing), their log-probs and the number of steps run."""
    model = _model(graphdef, params)
    slots = state.token.shape[0]
    out = jnp.full((slots, steps), -1, jnp.int32)
    out_lp = jnp.zeros((slots, steps), jnp.float32)

    def more(carry) -> Array:
        i, _, s, _, _ = carry
        free = slots - jnp.sum(s.live)
        return (i < steps) & jnp.any(s.live) & ((i == 0) | (free < min_free))

    def step(carry):
        i, cache, s, out, out_lp = carry
        logits, cache = model.decode(s.token, s.position, s.live, cache)
        token, logprob, stop = _choose(logits, s.key, s.count, temperature, top_p, st)
        emit = s.live
        count = s.count + emit
        live = emit & ~stop & (count < s.limit)
        s = SlotState(
            token=jnp.where(emit, token, s.token),
            position=s.position + emit,
            count=count,
            limit=s.limit,
            live=live,
            key=s.key,
        )
        out = out.at[:, i].set(jnp.where(emit, token, -1))
        out_lp = out_lp.at[:, i].set(jnp.where(emit, logprob, 0.0))
        return i + 1, cache, s, out, out_lp

    ran, cache, state, out, out_lp = jax.lax.while_loop(
        more, step, (jnp.int32(0), cache, state, out, out_lp)
    )
    return cache, state, out, out_lp, ran


@functools.partial(jax.jit, static_argnames=("length",))
def resize(layer: Float[Array, "B K S H"], *, length: int) -> Float[Array, "B K S H"]:
    """One layer's cache with `length` slots per row, keeping the first min(S, length)."""
    keep = min(layer.shape[2], length)
    out = jnp.zeros((*layer.shape[:2], length, layer.shape[3]), layer.dtype)
    return out.at[:, :, :keep].set(layer[:, :, :keep])


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "sharding"))
def zeros(shape: tuple[int, ...], dtype: Any, sharding: Any) -> Array:
    """A zero array created directly with its sharding (never whole on one device first)."""
    return jax.lax.with_sharding_constraint(jnp.zeros(shape, dtype), sharding)
