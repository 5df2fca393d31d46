"""The generation engine: requests in, samples out, through a fixed set of decode slots.

Every (prompt, sample) pair is a request. The engine owns `slots` decode slots (sized from a
memory budget, see `tpt_jax.memory`) and keeps them full: when samples finish, the host prefills
waiting prompts (one prefill per prompt, shared by its n samples) and inserts them into the
free slots, then runs the next chunk of decode steps on device (continuous batching). Wall time
follows the number of tokens generated, not rows x the longest sample.

Cost follows the filled length. Attention reads a cache of `view` positions per slot, the
smallest bucket that holds the longest live sample for the coming chunk; the cache is resized
(one layer at a time, so the peak is one extra layer) as samples grow and finish. This is the
chunked variant of ragged attention that plain XLA can run: a static shape per bucket, no
per-row kernel. Slices of a longer buffer would be cheaper to manage, but XLA:CPU runs a
batched dot over a strided slice 2-4x slower than over a contiguous array (measured), so the
buffer itself has the bucket's length.

Randomness is keyed by (seed, prompt key id, sample index, token index), never by slot, so the
same seed gives the same samples whatever the slot count, the order of completion, the chunk
size or the mesh.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from tpt_jax import memory
from tpt_jax.distributed import to_global, to_host
from tpt_jax.engine import slots as device
from tpt_jax.engine.sampling import Sample, SamplingParams, sample_keys
from tpt_jax.errors import TptError
from tpt_jax.models.transformer import SlotKV, Transformer
from tpt_jax.sharding import SAMPLE_RULES, batch_sharding, logical_to_spec, row_devices

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
VIEW_QUANTUM = 128  # cache lengths are this times a power of two (few compilations)
DEFAULT_PARAMS = SamplingParams()


def bucket(size: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if size <= b:
            return b
    return -(-size // buckets[-1]) * buckets[-1]  # beyond the table: multiples of the largest


def pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def sampling_dtype(name: str, mesh: Mesh, loaded: Any) -> Any:
    """The dtype of weights and KV while sampling: bf16 on accelerators unless told otherwise
    (decoding reads every weight per step, so half the bytes is nearly twice the speed); on CPU
    the loaded dtype (XLA:CPU has no fast bf16 matmuls)."""
    if name == "auto":
        return loaded if mesh.devices.flat[0].platform == "cpu" else jnp.bfloat16
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _cast(params: nnx.State, dtype: Any) -> nnx.State:
    shardings = jax.tree.map(lambda a: a.sharding, params)
    return jax.jit(lambda p: jax.tree.map(lambda a: a.astype(dtype), p), out_shardings=shardings)(
        params
    )


@dataclass(frozen=True)
class EngineOptions:
    """How the engine sizes itself. None means: from the memory budget and the device."""

    dtype: str = "auto"  # weights and KV while sampling: auto = bfloat16 on GPU/TPU, else as loaded
    slots: int | None = None  # decode slots; None: as many as the budget holds, up to max_slots
    max_slots: int | None = None  # cap when `slots` is None (None: 64 on CPU, 512 otherwise)
    memory_budget: int | None = None  # bytes for KV and workspace (None: memory.default_budget)
    decode_steps: int = 16  # decode steps per device call between host refills
    prefill_tokens: int = 8192  # prompt tokens (padded) per prefill call


@dataclass
class _Slot:
    prompt: int
    sample: int
    tokens: list[int]
    logprobs: list[float]


@dataclass
class _Prefilled:
    """Device arrays of one prefill call, alive while some of its samples wait for a slot."""

    prompts: list[int]  # prompt indices, one per row (padding rows repeat the first)
    arrays: tuple  # (logits, ks, vs)
    lengths: np.ndarray
    next_sample: list[int]  # per row: the first sample not yet placed


class Engine:
    """Generation for one model on one mesh; compiled functions are shared by every engine."""

    def __init__(
        self,
        model: Transformer,
        mesh: Mesh,
        *,
        stop_ids: Sequence[int] = (),
        pad_id: int = 0,
        max_total_len: int | None = None,
        options: EngineOptions = EngineOptions(),
        prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
    ):
        self.graphdef, self.params = nnx.split(model)
        self.dtype = sampling_dtype(options.dtype, mesh, model.embed_tokens[...].dtype)
        if self.dtype != model.embed_tokens[...].dtype:  # a sampling copy; masters untouched
            self.params = _cast(self.params, self.dtype)
        self.config = model.config
        self.mesh = mesh
        self.stop_ids = tuple(int(i) for i in (stop_ids or model.config.eos_token_ids))
        self.pad_id = pad_id
        self.max_total_len = max_total_len or model.config.max_position_embeddings
        self.options = options
        self.prompt_buckets = tuple(prompt_buckets)
        self.last_run: dict = {}  # slots, cache lengths and timings of the latest call

    @property
    def compilations(self) -> int:
        """XLA programs built so far by the engine's functions (all engines share them)."""
        fns = (device.prefill, device.insert, device.decode, device.resize, device.zeros)
        return sum(fn._cache_size() for fn in fns)

    # --- sizing --------------------------------------------------------------------------------

    def plan_slots(self, rows: int, length: int) -> int:
        """Decode slots for `rows` samples of up to `length` positions each: the configured
        count, or what the memory budget holds (capped), never more than the rows need. A
        budget that cannot hold one slot is an error naming the numbers."""
        opts = self.options
        cap = opts.slots or opts.max_slots or memory.default_max_slots(self.mesh)
        budget = opts.memory_budget
        if budget is None:
            budget = memory.default_budget(self.mesh, self.config)
        per_slot = memory.engine_bytes_per_slot(self.config, length, self.dtype)
        fixed = memory.engine_fixed_bytes(self.config, opts.prefill_tokens, length, self.dtype)
        fits = (budget - fixed) // per_slot
        if fits < 1:
            raise TptError(
                f"engine: a memory budget of {budget / 2**30:.2f} GiB holds no decode slot of "
                f"{length} positions ({per_slot / 2**20:.1f} MiB each, plus "
                f"{fixed / 2**20:.1f} MiB for prefill and logits); raise engine.memory_gb, "
                "shorten max_new_tokens, or sample in bf16"
            )
        if opts.slots and opts.slots > fits:
            raise TptError(
                f"engine.slots: {opts.slots} slots of {length} positions need "
                f"{(fixed + opts.slots * per_slot) / 2**30:.2f} GiB, over the memory budget of "
                f"{budget / 2**30:.2f} GiB; at most {int(fits)} fit"
            )
        ways = row_devices(self.mesh)
        if opts.slots and opts.slots % ways:
            raise TptError(
                f"engine.slots: {opts.slots} slots do not split over the mesh's data x fsdp = "
                f"{ways} devices; use a multiple of {ways}"
            )
        return memory.engine_slots(budget, fixed, per_slot, rows, cap, ways)

    def _view(self, needed: int, limit: int) -> int:
        """The smallest cache length of the form 128 * 2^i or 192 * 2^i that holds `needed`
        (at most a third is unused; about two compilations per doubling), capped at `limit`."""
        view = VIEW_QUANTUM
        while view < needed:
            view = view * 3 // 2 if view & (view - 1) == 0 else view * 4 // 3
        return min(view, limit)

    # --- requests ------------------------------------------------------------------------------

    def _check(self, prompts: Sequence[Sequence[int]], key_ids) -> list[int]:
        if not prompts:
            raise TptError("generate() needs at least one prompt")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise TptError(f"prompt {i} is empty")
            if len(p) >= self.max_total_len:
                raise TptError(
                    f"prompt {i} has {len(p)} tokens, at or over the total-length cap "
                    f"{self.max_total_len}; shorten it or raise max_total_len"
                )
        if key_ids is None:
            return list(range(len(prompts)))
        if len(key_ids) != len(prompts):
            raise TptError(f"{len(key_ids)} key ids for {len(prompts)} prompts")
        return [int(k) for k in key_ids]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams = DEFAULT_PARAMS,
        key_ids: Sequence[int] | None = None,
    ) -> list[list[Sample]]:
        """`params.n` samples for each prompt (token-id lists), in prompt order. Sample j of a
        prompt with key id p (default: its index) depends only on (seed, p, j)."""
        results: list[list[Sample | None]] = [[None] * params.n for _ in prompts]
        for chunk in self.run_chunks(prompts, params, key_ids):
            for i, j, sample in chunk:
                results[i][j] = sample
        return results  # type: ignore[return-value]

    def run_chunks(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams = DEFAULT_PARAMS,
        key_ids: Sequence[int] | None = None,
    ) -> Iterator[list[tuple[int, int, Sample]]]:
        """After every decode chunk, the samples that finished in it (often none), each as
        (prompt index, sample index, Sample): what a caller needs to save work as it goes."""
        yield from self._events(prompts, params, key_ids, self.options.decode_steps, False)

    def stream(
        self, prompt: Sequence[int], params: SamplingParams = DEFAULT_PARAMS
    ) -> Iterator[int]:
        """Yield one prompt's tokens as they are produced (n must be 1): one decode step per
        device call, so each token reaches the caller as soon as it exists."""
        if params.n != 1:
            raise TptError("stream() makes one sample; use generate() for n > 1")
        for chunk in self._events([prompt], params, None, steps=1, partial=True):
            for _, _, tokens in chunk:
                yield from tokens

    # --- the scheduler -------------------------------------------------------------------------

    def _events(self, prompts, params: SamplingParams, key_ids, steps: int, partial: bool):
        """The host loop; after every chunk it yields a list of (prompt, sample, X), where X is
        each live sample's new tokens with `partial`, else each finished sample's Sample."""
        keys_of = self._check(prompts, key_ids)
        n = params.n
        longest = max(len(p) for p in prompts)
        limit = min(self.max_total_len, longest + params.max_new_tokens)
        limit = max(-(-limit // VIEW_QUANTUM) * VIEW_QUANTUM, bucket(longest, self.prompt_buckets))
        slots = self.plan_slots(len(prompts) * n, limit)
        st = device.Static.of(params, self.stop_ids)
        sampling = (jnp.float32(params.temperature), jnp.float32(params.top_p))
        state = to_global(device.SlotState.empty(slots), self._row_sharding(slots))
        view = self._view(VIEW_QUANTUM, limit)
        cache = _Cache(self._empty_cache(slots, view), view)
        queue = deque(range(len(prompts)))  # prompts not yet prefilled
        staged: deque[_Prefilled] = deque()  # prefilled, with samples still to place
        active: dict[int, _Slot] = {}
        free = list(range(slots))
        waiting = len(prompts) * n  # samples not yet in a slot
        # What the run did: decode steps x slots against tokens made is slot utilization.
        self.last_run = {"slots": slots, "limit": limit, "views": [cache.view], "chunks": 0}
        self.last_run |= {"prefills": 0, "steps": 0, "tokens": 0}

        while True:
            # 1. Fill free slots: samples of staged prompts first, then newly prefilled ones.
            inserted = []
            while free and (staged or queue):
                if not staged:
                    staged.append(self._prefill(prompts, queue, len(free), n))
                    self.last_run["prefills"] += 1
                batch = staged[0]
                dst = np.full((len(batch.prompts), n), slots, np.int32)
                for r, i in enumerate(batch.prompts):
                    while batch.next_sample[r] < n and free:
                        j = batch.next_sample[r]
                        dst[r, j] = b = free.pop(0)
                        active[b] = _Slot(i, j, [], [])
                        batch.next_sample[r] += 1
                        waiting -= 1
                if min(batch.next_sample) >= n:
                    staged.popleft()
                logits, ks, vs = batch.arrays
                self._fit(cache, ks[0].shape[2], limit)
                cache.kv, state, first, first_lp = device.insert(
                    cache.kv, state, logits, ks, vs, batch.lengths, dst,
                    self._keys(params.seed, [keys_of[i] for i in batch.prompts], n),
                    self._limits(prompts, batch.prompts, params), *sampling, st=st,
                )  # fmt: skip
                inserted.append((dst, first, first_lp))
            if not active:
                return
            # 2. Grow the cache for the coming chunk, then decode on device.
            longest_live = max(len(prompts[s.prompt]) + len(s.tokens) for s in active.values())
            self._fit(cache, longest_live + steps + 1, limit)
            min_free = min(waiting, max(n, slots // 8)) if waiting else slots + 1
            cache.kv, state, out, out_lp, ran = device.decode(
                self.params, cache.kv, state, *sampling, jnp.int32(min_free),
                graphdef=self.graphdef, steps=steps, st=st,
            )  # fmt: skip
            self.last_run["chunks"] += 1
            # 3. One transfer: first tokens of new samples, this chunk's tokens, who is live.
            firsts, (out, out_lp, live, ran) = to_host(
                ([(f, lp) for _, f, lp in inserted], (out, out_lp, state.live, ran))
            )
            self.last_run["steps"] += int(ran)
            self.last_run["tokens"] += int((out >= 0).sum())
            new: dict[int, list[int]] = {b: [] for b in active}
            events: list = []
            for (dst, _, _), (first, first_lp) in zip(inserted, firsts, strict=True):
                for r, j in zip(*np.nonzero(dst < slots), strict=True):
                    b = int(dst[r, j])
                    new[b].append(int(first[r, j]))
                    active[b].logprobs.append(float(first_lp[r, j]))
            for b in list(active):
                slot, made = active[b], out[b] >= 0
                new[b] += out[b][made].tolist()
                slot.tokens += new[b]
                slot.logprobs += out_lp[b][made].tolist()
                if partial and new[b]:
                    events.append((slot.prompt, slot.sample, new[b]))
                if not live[b]:
                    del active[b]
                    free.append(b)
                    if not partial:
                        events.append((slot.prompt, slot.sample, self._sample(slot, params)))
            yield events
            free.sort()
            # 4. Shrink the cache when every live sample fits a bucket half the size or less.
            if active:
                longest_live = max(len(prompts[s.prompt]) + len(s.tokens) for s in active.values())
                self._fit(cache, longest_live + steps + 1, limit, shrink=True)

    def _keys(self, seed: int, key_ids: list[int], n: int) -> jax.Array:
        ids = np.repeat(np.asarray(key_ids, np.uint32), n)
        samples = np.tile(np.arange(n, dtype=np.uint32), len(key_ids))
        return sample_keys(seed, ids, samples).reshape(len(key_ids), n, 2)

    def _limits(self, prompts, rows: list[int], params: SamplingParams) -> np.ndarray:
        """Tokens each prompt's samples may emit: max_new_tokens, within the total-length cap."""
        room = [self.max_total_len - len(prompts[i]) for i in rows]
        return np.minimum(np.asarray(room, np.int32), params.max_new_tokens)

    def _sample(self, slot: _Slot, params: SamplingParams) -> Sample:
        reason = "stop" if slot.tokens and slot.tokens[-1] in self.stop_ids else "length"
        return Sample(
            tokens=slot.tokens,
            finish_reason=reason,
            logprobs=slot.logprobs if params.logprobs else None,
        )

    def _prefill(self, prompts, queue: deque, free: int, n: int) -> _Prefilled:
        """Prefill the next waiting prompts: enough to fill `free` slots, within the prefill
        token budget, in padded-shape buckets."""
        take = [queue.popleft()]
        width = bucket(len(prompts[take[0]]), self.prompt_buckets)
        while queue and len(take) * n < free:
            w = bucket(max(width, len(prompts[queue[0]])), self.prompt_buckets)
            if pow2_at_least(len(take) + 1) * w > max(self.options.prefill_tokens, w):
                break
            take.append(queue.popleft())
            width = w
        rows = pow2_at_least(len(take))
        tokens = np.full((rows, width), self.pad_id, np.int32)
        lengths = np.ones((rows,), np.int32)
        for r, i in enumerate(take):
            tokens[r, : len(prompts[i])] = prompts[i]
            lengths[r] = len(prompts[i])
        arrays = device.prefill(self.params, tokens, lengths, graphdef=self.graphdef)
        next_sample = [0] * len(take) + [n] * (rows - len(take))  # padding rows: nothing to place
        return _Prefilled(take + [take[0]] * (rows - len(take)), arrays, lengths, next_sample)

    # --- the cache -----------------------------------------------------------------------------

    def _row_sharding(self, slots: int) -> NamedSharding:
        return batch_sharding(self.mesh, slots, 1)

    def _cache_sharding(self, shape) -> NamedSharding:
        axes = ("batch", "kv_heads", None, None)
        return NamedSharding(self.mesh, logical_to_spec(axes, shape, self.mesh, SAMPLE_RULES))

    def _empty_cache(self, slots: int, view: int) -> SlotKV:
        shape = SlotKV.shape(self.config, slots, view)
        sharding = self._cache_sharding(shape)
        layers = self.config.num_layers
        make = lambda: device.zeros(shape, self.dtype, sharding)  # noqa: E731
        return SlotKV(tuple(make() for _ in range(layers)), tuple(make() for _ in range(layers)))

    def _fit(self, cache: _Cache, needed: int, limit: int, shrink: bool = False) -> None:
        """Resize the cache to the bucket that holds `needed` positions: always when it is too
        short; with `shrink`, also when the bucket is half its length or less (a resize is a
        copy, so not for every small gain)."""
        target = self._view(needed, limit)
        if target > cache.view or (shrink and target * 2 <= cache.view):
            self.last_run["views"].append(target)
            ks, vs = list(cache.kv.k), list(cache.kv.v)
            cache.kv = None  # now each old layer dies as soon as its copy exists: the peak is
            for i in range(len(ks)):  # one extra layer, not a second cache
                ks[i] = device.resize(ks[i], length=target)
                vs[i] = device.resize(vs[i], length=target)
            cache.kv, cache.view = SlotKV(tuple(ks), tuple(vs)), target


class _Cache:
    """The run's cache, referenced from this one place so that a resize can release each old
    layer as it goes."""

    def __init__(self, kv: SlotKV, view: int):
        self.kv: SlotKV | None = kv
        self.view = view
