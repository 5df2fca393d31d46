"""The generation engine: samples equal the uncached forward pass whatever the slot count,
chunking or cache growth; continuous batching keeps slots busy; memory is planned from a budget;
sampling weights in bf16; no nucleus or log-softmax work unless asked for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_tiny import make_hf_model

from tpt_jax import memory
from tpt_jax.engine import Engine, EngineOptions, SamplingParams, sample_logits
from tpt_jax.engine import slots as device
from tpt_jax.engine.sampling import sample_keys
from tpt_jax.errors import TptError
from tpt_jax.hf_io import load_hf_dir
from tpt_jax.models.transformer import SlotKV, forward
from tpt_jax.sharding import make_mesh

VOCAB = 160


def one_device():
    return make_mesh((1, 1, 1), jax.devices()[:1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            src = tmp_path_factory.mktemp(f"engine_{name}")
            make_hf_model(name).save_pretrained(src)
            built[name] = load_hf_dir(src, mesh=one_device())
        return built[name]

    return get


def random_prompts(lengths, seed):
    rng = np.random.RandomState(seed)
    return [rng.randint(3, VOCAB, n).tolist() for n in lengths]


def reference(model, prompts, params: SamplingParams, stop_ids, width=256):
    """Sample by running the whole sequence through the uncached forward pass for every token,
    with the engine's key rule: token t of sample j of prompt p uses fold(fold(fold(seed, p),
    j), t)."""
    graphdef, state = nnx.split(model)
    full = jax.jit(lambda s, t, p, v: forward(graphdef, s, t, p, v))
    choose = jax.jit(sample_logits, static_argnums=4)
    out = []
    for p, prompt in enumerate(prompts):
        keys = sample_keys(params.seed, np.full(params.n, p), np.arange(params.n))
        samples = []
        for j in range(params.n):
            tokens: list[int] = []
            for t in range(params.max_new_tokens):
                seq = prompt + tokens
                ids = np.zeros((1, width), np.int32)
                ids[0, : len(seq)] = seq
                pos = np.arange(width, dtype=np.int32)[None]
                valid = pos < len(seq)
                logits = full(state, ids, pos, valid)[:, len(seq) - 1]
                key = jax.random.fold_in(keys[j], t)[None]
                temp, top_p = jnp.float32(params.temperature), jnp.float32(params.top_p)
                token = int(choose(logits, key, temp, top_p, params.top_k)[0])
                tokens.append(token)
                if token in stop_ids:
                    break
            samples.append(tokens)
        out.append(samples)
    return out


def tokens_of(results):
    return [[s.tokens for s in samples] for samples in results]


@pytest.mark.parametrize("name", ["llama_tied", "gemma2", "gemma3"])
def test_samples_equal_the_uncached_forward_pass(models, name):
    """Several slot counts (fewer slots than samples: prompts split across refills, so one
    prefill's samples are placed in several calls), chunk sizes, and a stop token: every sample
    equals the reference token for token."""
    model = models(name)
    prompts = random_prompts([5, 1, 9, 3], seed=21)
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, n=3, seed=4)
    free = Engine(model, one_device(), stop_ids=[VOCAB]).generate(prompts, params)
    stop = free[0][0].tokens[3]  # a token some sample emits, so some samples stop early
    want = reference(model, prompts, params, [stop])
    assert any(len(s) < 10 for samples in want for s in samples)
    for slots, steps in [(None, 16), (2, 3), (5, 1)]:
        options = EngineOptions(slots=slots, decode_steps=steps)
        engine = Engine(model, one_device(), stop_ids=[stop], options=options)
        got = engine.generate(prompts, params)
        assert tokens_of(got) == want, (slots, steps)
        for samples, ref in zip(got, want, strict=True):
            for s, r in zip(samples, ref, strict=True):
                assert s.finish_reason == ("stop" if r[-1] == stop else "length")


def test_cache_grows_through_length_buckets(models):
    """A prompt of 100 tokens and 130 new ones crosses the 128- and 192-slot cache lengths; the
    samples still equal the uncached reference, and the cache really grew."""
    model = models("gemma3")  # sliding window 4: positions far past it
    prompts = random_prompts([100, 20], seed=22)
    params = SamplingParams(max_new_tokens=130, temperature=1.0, n=1, seed=5)
    engine = Engine(model, one_device(), stop_ids=[VOCAB], options=EngineOptions(decode_steps=8))
    got = engine.generate(prompts, params)
    assert engine.last_run["views"] == [128, 192, 256]
    assert tokens_of(got) == reference(model, prompts, params, [VOCAB])


def test_continuous_batching_keeps_slots_busy(models):
    """Samples of very different lengths through 4 slots: finished slots are refilled, so decode
    steps x slots stays close to the tokens made, where static batches of 4 rows run each batch
    as long as its longest row."""
    model = models("llama_untied_k1")
    prompts = random_prompts([4, 7, 2, 9, 5, 3, 8, 6] * 2, seed=23)
    params = SamplingParams(max_new_tokens=40, temperature=1.0, n=2, seed=6)
    free = Engine(model, one_device(), stop_ids=[VOCAB]).generate(prompts, params)
    runs = [x.tokens for samples in free for x in samples]

    def lengths_if(stop):  # each sample cut after its first `stop`
        return [r.index(stop) + 1 if stop in r else len(r) for r in runs]

    # the stop token that makes lengths most varied: some samples end early, some run to 40
    stop = max(range(VOCAB), key=lambda t: np.std(lengths_if(t)))
    engine = Engine(model, one_device(), stop_ids=[stop], options=EngineOptions(slots=4))
    results = engine.generate(prompts, params)
    lengths = [s.length for samples in results for s in samples]
    assert lengths == lengths_if(stop) and min(lengths) < 10 and max(lengths) == 40
    run = engine.last_run
    utilization = run["tokens"] / (run["steps"] * run["slots"])
    batches = [lengths[i : i + 4] for i in range(0, len(lengths), 4)]
    static = sum(lengths) / sum(4 * max(b) for b in batches)
    assert utilization > 0.8 and utilization > static + 0.15, (utilization, static, lengths)
    assert run["prefills"] < len(prompts)  # prompts are prefilled together, not one by one


def test_memory_budget_sets_the_slot_count(models):
    model = models("llama_tied")
    cfg = model.config
    length = 256  # 12 prompt tokens + 200 new, rounded up to the cache quantum
    per_slot = memory.engine_bytes_per_slot(cfg, length, jnp.float32)
    fixed = memory.engine_fixed_bytes(cfg, 8192, length, jnp.float32)
    budget = fixed + 5 * per_slot + per_slot // 2
    engine = Engine(model, one_device(), options=EngineOptions(memory_budget=budget))
    assert engine.plan_slots(rows=64, length=length) == 5
    assert engine.plan_slots(rows=3, length=length) == 4  # never more than the rows need
    prompts = random_prompts([12] * 16, seed=24)
    engine.generate(prompts, SamplingParams(max_new_tokens=200, temperature=0))
    assert engine.last_run["slots"] == 5
    small = Engine(model, one_device(), options=EngineOptions(memory_budget=fixed + per_slot // 2))
    with pytest.raises(TptError, match=r"holds no decode slot of 256 positions .* MiB each"):
        small.generate(prompts, SamplingParams(max_new_tokens=200))
    over = Engine(model, one_device(), options=EngineOptions(slots=9, memory_budget=budget))
    with pytest.raises(TptError, match=r"engine.slots: 9 slots .* at most 5 fit"):
        over.generate(prompts, SamplingParams(max_new_tokens=200))


def test_bf16_sampling_copy(models):
    """dtype bfloat16 samples from a bf16 copy of float32 weights (the masters stay float32) with
    a bf16 cache, and gives what a bf16-loaded model gives."""
    model = models("llama_tied")
    engine = Engine(model, one_device(), options=EngineOptions(dtype="bfloat16"))
    assert engine.dtype == jnp.bfloat16 and model.embed_tokens[...].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(engine.params)} == {jnp.dtype(jnp.bfloat16)}
    prompts = random_prompts([6, 3], seed=25)
    params = SamplingParams(max_new_tokens=12, temperature=0)
    got = engine.generate(prompts, params)
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), nnx.split(model)[1])
    native = Engine(nnx.merge(nnx.split(model)[0], bf16), one_device()).generate(prompts, params)
    assert tokens_of(got) == tokens_of(native)
    assert Engine(model, one_device()).dtype == jnp.float32  # auto on CPU: as loaded


def test_unfiltered_sampling_compiles_no_nucleus_or_logprob_work(models):
    """top_k 0 and top_p 1 compile no top-k/sort at all; log-probs compile a log-softmax only when
    asked for."""
    model = models("llama_tied")
    graphdef, params = nnx.split(model)
    slots, view = 4, 128
    shape = SlotKV.shape(model.config, slots, view)
    layers = model.config.num_layers
    cache = SlotKV(
        tuple(jnp.zeros(shape) for _ in range(layers)),
        tuple(jnp.zeros(shape) for _ in range(layers)),
    )
    state = device.SlotState.empty(slots)

    def hlo(**kw):
        st = device.Static.of(SamplingParams(**kw), (VOCAB,))
        args = (
            params,
            cache,
            state,
            jnp.float32(1),
            jnp.float32(kw.get("top_p", 1.0)),
            jnp.int32(9),
        )
        lowered = device.decode.lower(*args, graphdef=graphdef, steps=2, st=st)
        return lowered.as_text()

    def ops(text):  # the StableHLO ops that rank tokens, and the logs of a log-softmax
        return {op: text.count(op) for op in ("chlo.top_k", "stablehlo.sort", "stablehlo.log ")}

    plain = ops(hlo())
    assert plain["chlo.top_k"] == plain["stablehlo.sort"] == 0, plain
    assert ops(hlo(top_p=0.9))["chlo.top_k"] > 0
    assert ops(hlo(top_k=5))["chlo.top_k"] > 0
    assert ops(hlo(logprobs=True))["stablehlo.log "] > plain["stablehlo.log "]


@pytest.mark.parametrize(
    "prompts, match",
    [
        ([], "at least one prompt"),
        ([[5], []], "prompt 1 is empty"),
        ([[1] * 300], "total-length cap"),
    ],
)
def test_bad_requests(models, prompts, match):
    engine = Engine(models("llama_tied"), one_device())
    with pytest.raises(TptError, match=match):
        engine.generate(prompts, SamplingParams(max_new_tokens=4))


@pytest.mark.parametrize("window", [None, 3])
def test_fused_prefill_attention_matches_the_reference(window, monkeypatch):
    """The arguments handed to `jax.nn.dot_product_attention` (causal, per-row lengths, local
    window, grouped KV heads) give the reference attention at every real position. On CPU the
    call runs its XLA implementation; on a GPU the same call runs cuDNN."""
    from tpt_jax.models import attention
    from tpt_jax.models.attention import causal_attend, fused_implementation

    rng = np.random.default_rng(7)
    b, t, n, k, h = 3, 12, 4, 2, 16
    q, key, value = (jnp.asarray(rng.standard_normal((b, t, m, h)), jnp.float32) for m in (n, k, k))
    lengths = jnp.asarray([12, 5, 1], jnp.int32)
    ref = causal_attend(q, key, value, lengths, window, 0.25, None, implementation="reference")
    monkeypatch.setattr(attention, "attend", None)  # the fused call must not fall back
    fused = causal_attend(q, key, value, lengths, window, 0.25, None, implementation="xla")
    real = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(fused)[real], np.asarray(ref)[real], atol=1e-5)
    assert fused_implementation(jnp.bfloat16, None) is None  # CPU: no fused kernel
    assert fused_implementation(jnp.bfloat16, 50.0) is None  # soft-capped: never cuDNN
