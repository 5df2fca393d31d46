"""Batched generation on token ids with a KV cache, on any mesh.

Prompts are left-padded into a few length buckets and batches padded to a few sizes, so a new
call compiles only for a new (batch bucket, prompt bucket, max_new_tokens, n, top_k) and never
for new temperatures, top-p values, seeds or prompt contents. One prefill per prompt, fanned out
to `n` samples, then a `lax.while_loop` of one-token steps that carries (and donates) the cache.

Randomness is keyed per (prompt, sample, step), never per batch row, so a prompt's samples do
not depend on what else is in the batch, how it was padded, or how the mesh splits it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, Int

from tpt_jax.errors import TptError
from tpt_jax.models.transformer import KVCache, Transformer, positions_from_valid
from tpt_jax.sharding import batch_sharding

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
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


def bucket(size: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if size <= b:
            return b
    return -(-size // buckets[-1]) * buckets[-1]  # beyond the table: multiples of the largest


def sample_logits(
    logits: Float[Array, "B V"],
    keys: Array,
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    top_k: int,
) -> Int[Array, " B"]:
    """One token per row: argmax at temperature 0, else a draw after temperature, top-k, then
    top-p (nucleus, renormalised within the top-k as transformers does).

    Top-p without top-k looks among the `NUCLEUS_CANDIDATES` best tokens (`lax.top_k`, no sort
    of the vocabulary); a row whose candidates hold less mass than top_p falls back to the whole
    vocabulary, so the result is exact. Each row's outcome depends only on its own logits and
    key, never on the other rows of the batch. At temperature 0 none of that work runs.
    """
    logits = logits.astype(jnp.float32)
    return jax.lax.cond(
        temperature == 0,
        lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
        lambda: _sample(logits, keys, temperature, top_p, top_k).astype(jnp.int32),
    )


def _sample(logits: Array, keys: Array, temperature: Array, top_p: Array, top_k: int) -> Array:
    scaled = logits / jnp.maximum(temperature, 1e-6)
    vocab = logits.shape[-1]
    width = top_k or min(vocab, NUCLEUS_CANDIDATES)
    vals, idx = jax.lax.top_k(scaled, min(width, vocab))
    if top_k:
        token = _draw(keys, *_nucleus(vals, jax.nn.softmax(vals, axis=-1), idx, top_p))
    else:
        probs = jax.nn.softmax(scaled, axis=-1)
        in_candidates = jnp.take_along_axis(probs, idx, axis=-1)
        enough = (jnp.sum(in_candidates, axis=-1) >= top_p) & (top_p < 1.0)  # 1: no nucleus
        token = _draw(keys, *_nucleus(vals, in_candidates, idx, top_p))
        full = jax.lax.cond(
            jnp.all(enough),
            lambda: token,  # nothing needs the whole vocabulary: skip that work
            lambda: _whole_vocabulary(keys, scaled, probs, top_p),
        )
        token = jnp.where(enough, token, full)
    return token


def _nucleus(vals: Array, probs: Array, idx: Array, top_p: Array) -> tuple[Array, Array]:
    """Keep the best tokens until their mass reaches top_p (the one crossing it included)."""
    before = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(before < top_p, vals, -jnp.inf), idx


def _draw(keys: Array, vals: Array, idx: Array) -> Array:
    choice = jax.vmap(jax.random.categorical)(keys, vals)
    return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]


def _whole_vocabulary(keys: Array, scaled: Array, probs: Array, top_p: Array) -> Array:
    def sort_and_cut() -> Array:
        vals, idx = jax.lax.top_k(scaled, scaled.shape[-1])
        return _draw(keys, *_nucleus(vals, jnp.take_along_axis(probs, idx, -1), idx, top_p))

    return jax.lax.cond(top_p >= 1.0, lambda: _inverse_cdf(keys, probs), sort_and_cut)


def _inverse_cdf(keys: Array, probs: Float[Array, "B V"]) -> Int[Array, " B"]:
    """Exact sampling from the full softmax with one uniform number per row: a Gumbel draw
    would need B x V random numbers every step, which dominates a CPU decode step."""
    u = jax.vmap(lambda k: jax.random.uniform(k, dtype=jnp.float32))(keys)
    cdf = jnp.cumsum(probs, axis=-1)
    token = jnp.sum(cdf < u[:, None] * cdf[:, -1:], axis=-1)
    return jnp.minimum(token, probs.shape[-1] - 1).astype(jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """What the decode loop carries: the cache, the next logits, and the completions so far."""

    step: Int[Array, ""]
    cache: KVCache
    logits: Float[Array, "R V"]
    positions: Int[Array, " R"]  # position of the next token of each row
    tokens: Int[Array, "R M"]
    logprobs: Float[Array, "R M"]
    count: Int[Array, " R"]
    done: Bool[Array, " R"]
    stopped: Bool[Array, " R"]  # done because of a stop token (not a length limit)


@dataclass(frozen=True)
class _Static:
    """Everything a compilation depends on besides array shapes."""

    n: int
    max_new: int
    top_k: int
    stop_ids: tuple[int, ...]
    pad_id: int


def prefill(
    model: Transformer, tokens: Int[Array, "B P"], valid: Bool[Array, "B P"], st: _Static
) -> DecodeState:
    """One pass over the left-padded prompts, then each row's cache copied to its n samples."""
    b, width = tokens.shape
    positions = positions_from_valid(valid)
    dtype = model.embed_tokens[...].dtype
    cache = KVCache.empty(model.config, b, width + st.max_new, dtype)
    logits, cache = model.extend(tokens, positions, valid, cache, jnp.int32(0), last_only=True)
    rows = b * st.n
    return DecodeState(
        step=jnp.int32(0),
        cache=cache.repeat_rows(st.n),
        logits=jnp.repeat(logits[:, 0], st.n, axis=0),
        positions=jnp.repeat(positions[:, -1] + 1, st.n),
        tokens=jnp.full((rows, st.max_new), st.pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, st.max_new), jnp.float32),
        count=jnp.zeros((rows,), jnp.int32),
        done=jnp.zeros((rows,), bool),
        stopped=jnp.zeros((rows,), bool),
    )


def decode_step(
    model: Transformer,
    s: DecodeState,
    row_keys: Array,
    limits: Int[Array, " R"],
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    width: int,
    st: _Static,
) -> DecodeState:
    """Choose one token per row from the carried logits, record it, and run it through the
    model so the next logits are ready. Finished rows keep writing padding."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, s.step)
    token = sample_logits(s.logits, keys, temperature, top_p, st.top_k)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(s.logits), token[:, None], -1)[:, 0]
    live = ~s.done
    token = jnp.where(live, token, st.pad_id)
    stop_now = live & jnp.isin(token, jnp.asarray(st.stop_ids, jnp.int32))
    count = s.count + live
    logits, cache = model.extend(
        token[:, None], s.positions[:, None], live[:, None], s.cache, width + s.step, True
    )
    return DecodeState(
        step=s.step + 1,
        cache=cache,
        logits=logits[:, 0],
        positions=s.positions + 1,
        tokens=s.tokens.at[:, s.step].set(token),
        logprobs=s.logprobs.at[:, s.step].set(jnp.where(live, logprob, 0.0)),
        count=count,
        done=s.done | stop_now | (count >= limits),
        stopped=s.stopped | stop_now,
    )


def _generate(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: Int[Array, "B P"],
    valid: Bool[Array, "B P"],
    row_keys: Array,
    limits: Int[Array, " R"],
    temperature: Float[Array, ""],
    top_p: Float[Array, ""],
    st: _Static,
) -> DecodeState:
    model = nnx.merge(graphdef, params)
    width = tokens.shape[1]
    state = prefill(model, tokens, valid, st)

    def body(s: DecodeState) -> DecodeState:
        return decode_step(model, s, row_keys, limits, temperature, top_p, width, st)

    def more(s: DecodeState) -> Array:
        return (s.step < st.max_new) & ~jnp.all(s.done)

    return jax.lax.while_loop(more, body, state)


# Streaming drives these from Python one step at a time; module-level jits with static
# (graphdef, st, width) compile once per bucket, however many times stream() is called.
@functools.partial(jax.jit, static_argnames=("graphdef", "st"))
def _stream_start(params, tokens, valid, *, graphdef: nnx.GraphDef, st: _Static) -> DecodeState:
    return prefill(nnx.merge(graphdef, params), tokens, valid, st)


@functools.partial(jax.jit, static_argnames=("graphdef", "st", "width"), donate_argnames=("state",))
def _stream_step(
    params, state, keys, limits, temperature, top_p, *, graphdef, st: _Static, width: int
) -> DecodeState:
    model = nnx.merge(graphdef, params)
    return decode_step(model, state, keys, limits, temperature, top_p, width, st)


def left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int = 0) -> tuple[Any, Any]:
    """Right-align each row in `width` columns: (tokens [B, width], valid [B, width])."""
    tokens = np.full((len(rows), width), pad_id, np.int32)
    valid = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        if len(r):
            tokens[i, width - len(r) :] = r
            valid[i, width - len(r) :] = True
    return tokens, valid


class Sampler:
    """Generation for one model on one mesh; compiled functions are cached per bucket."""

    def __init__(
        self,
        model: Transformer,
        mesh: Mesh,
        *,
        stop_ids: Sequence[int] = (),
        pad_id: int = 0,
        max_total_len: int | None = None,
        prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
        batch_buckets: Sequence[int] = BATCH_BUCKETS,
    ):
        self.graphdef, self.params = nnx.split(model)
        self.config = model.config
        self.mesh = mesh
        self.stop_ids = tuple(int(i) for i in (stop_ids or model.config.eos_token_ids))
        self.pad_id = pad_id
        self.max_total_len = max_total_len or model.config.max_position_embeddings
        self.prompt_buckets = tuple(prompt_buckets)
        self.batch_buckets = tuple(batch_buckets)
        self._compiled: dict[tuple, Any] = {}

    @property
    def compilations(self) -> int:
        """How many XLA programs generation has built so far (the test for bounded recompiles)."""
        return sum(fn._cache_size() for fn in self._compiled.values())

    def _function(self, st: _Static, rows: int, batch: int) -> Any:
        key = (st, rows, batch)
        if key not in self._compiled:
            prompt_rows = batch_sharding(self.mesh, batch)
            sample_rows = batch_sharding(self.mesh, rows)
            vector = NamedSharding(self.mesh, PartitionSpec(sample_rows.spec[0]))
            scalar = NamedSharding(self.mesh, PartitionSpec())
            self._compiled[key] = jax.jit(
                functools.partial(_generate, self.graphdef, st=st),
                in_shardings=(
                    jax.tree.map(lambda a: a.sharding, self.params),
                    prompt_rows,
                    prompt_rows,
                    sample_rows,
                    vector,
                    scalar,
                    scalar,
                ),
            )
        return self._compiled[key]

    def _prepare(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        key_ids: Sequence[int] | None = None,
    ):
        if not prompts:
            raise TptError("generate() needs at least one prompt")
        lengths = [len(p) for p in prompts]
        for i, length in enumerate(lengths):
            if length == 0:
                raise TptError(f"prompt {i} is empty")
            if length >= self.max_total_len:
                raise TptError(
                    f"prompt {i} has {length} tokens, at or over the total-length cap "
                    f"{self.max_total_len}; shorten it or raise max_total_len"
                )
        width = bucket(max(lengths), self.prompt_buckets)
        batch = bucket(len(prompts), self.batch_buckets)
        padded = list(prompts) + [[self.pad_id]] * (batch - len(prompts))
        tokens, valid = left_pad(padded, width, self.pad_id)
        budget = [min(params.max_new_tokens, self.max_total_len - n) for n in lengths]
        budget += [1] * (batch - len(prompts))
        limits = np.repeat(np.asarray(budget, np.int32), params.n)
        base = jax.random.PRNGKey(params.seed)
        # Keys per (prompt key id, sample index): independent of batching and padding. Key ids
        # default to prompt indices; callers that split work into chunks pass global ids.
        if key_ids is None:
            key_ids = range(len(prompts))
        elif len(key_ids) != len(prompts):
            raise TptError(f"{len(key_ids)} key ids for {len(prompts)} prompts")
        prompt_ids = np.asarray(list(key_ids) + [0] * (batch - len(prompts)), np.uint32)
        row_prompt = np.repeat(prompt_ids, params.n)
        row_sample = np.tile(np.arange(params.n, dtype=np.uint32), batch)
        row_keys = jax.vmap(lambda p, i: jax.random.fold_in(jax.random.fold_in(base, p), i))(
            row_prompt, row_sample
        )
        st = _Static(params.n, params.max_new_tokens, params.top_k, self.stop_ids, self.pad_id)
        return st, batch, tokens, valid, row_keys, limits

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams = SamplingParams(),
        key_ids: Sequence[int] | None = None,
    ) -> list[list[Sample]]:
        """`params.n` samples for each prompt (token-id lists), in prompt order. Sample j of a
        prompt with key id p (default: its index) depends only on (seed, p, j)."""
        st, batch, tokens, valid, row_keys, limits = self._prepare(prompts, params, key_ids)
        fn = self._function(st, batch * params.n, batch)
        out = fn(
            self.params,
            tokens,
            valid,
            row_keys,
            limits,
            jnp.float32(params.temperature),
            jnp.float32(params.top_p),
        )
        toks, counts, stopped, logprobs = jax.device_get(
            (out.tokens, out.count, out.stopped, out.logprobs)
        )
        results = []
        for p in range(len(prompts)):
            samples = []
            for r in range(p * params.n, (p + 1) * params.n):
                n = int(counts[r])
                samples.append(
                    Sample(
                        tokens=toks[r, :n].tolist(),
                        finish_reason="stop" if stopped[r] else "length",
                        logprobs=logprobs[r, :n].tolist() if params.logprobs else None,
                    )
                )
            results.append(samples)
        return results

    def stream(
        self, prompt: Sequence[int], params: SamplingParams = SamplingParams()
    ) -> Iterator[int]:
        """Yield one prompt's tokens as they are produced (n must be 1): prefill and a one-step
        function compiled once, driven from Python, the carried state donated each step."""
        if params.n != 1:
            raise TptError("stream() makes one sample; use generate() for n > 1")
        st, batch, tokens, valid, row_keys, limits = self._prepare([prompt], params)
        width = tokens.shape[1]

        static = dict(graphdef=self.graphdef, st=st)
        state = _stream_start(self.params, tokens, valid, **static)
        temperature, top_p = jnp.float32(params.temperature), jnp.float32(params.top_p)
        while True:
            state = _stream_step(
                self.params, state, row_keys, limits, temperature, top_p, width=width, **static
            )
            row = int(state.step) - 1
            if not bool(state.done[0]) or int(state.count[0]) > row:
                yield int(state.tokens[0, row])
            if bool(state.done[0]) or int(state.step) >= st.max_new:
                return
