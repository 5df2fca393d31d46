"""The sampler: cached decoding against the full forward pass, greedy tokens against transformers
(tiny models of every family and the shipped SmolLM2), samples independent of mesh, batching and
padding, the sampling distributions themselves, bounded recompilation, errors and log-probs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import shipped
import torch
from flax import nnx
from hf_tiny import CONFIGS, make_hf_model
from scipy import stats

import tpt_jax.engine.sampling as sampler_module
from tpt_jax.engine import Engine, SamplingParams, sample_logits
from tpt_jax.errors import TptError
from tpt_jax.hf_io import load_hf_dir
from tpt_jax.models.transformer import KVCache, forward, left_pad
from tpt_jax.sharding import make_mesh

FAMILIES = sorted(CONFIGS)
VOCAB = 160  # every tiny config
NEVER = VOCAB  # a stop id no tiny model can produce
TOL = 1e-5  # relative to the largest logit


def one_device():
    return make_mesh((1, 1, 1), jax.devices()[:1])


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> (transformers model, its saved directory, our model on one device), built once.

    Gemma multiplies embeddings by sqrt(hidden) and ties them to the output, so with hf_tiny's
    random weights the last input token dominates and greedy decoding repeats it forever, which
    would make greedy comparisons blind to attention bugs. Dividing the embedding table by
    sqrt(hidden) gives varied greedy continuations (the model is as random as before).
    """
    built = {}

    def get(name):
        if name not in built:
            hf = make_hf_model(name)
            if name.startswith("gemma"):
                with torch.no_grad():
                    hf.model.embed_tokens.weight.mul_(hf.config.hidden_size**-0.5)
            src = tmp_path_factory.mktemp(f"sampler_{name}")
            hf.save_pretrained(src)
            built[name] = (hf, src, load_hf_dir(src, mesh=one_device()))
        return built[name]

    return get


def random_prompts(lengths, seed):
    rng = np.random.RandomState(seed)
    return [rng.randint(3, VOCAB, n).tolist() for n in lengths]


def full_logits(model, rows):
    """Full-forward logits [B, T, V] of left-padded rows, each row's in its last len(row) slots."""
    width = max(len(r) for r in rows)
    tokens, valid = left_pad(rows, width)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    return np.asarray(model(tokens, positions, valid))


# 1. The KV cache: prefill then one token at a time equals the full forward pass.


def compiled(model):
    """Jitted full forward and `extend` for one model (params as arguments, not constants)."""
    graphdef, state = nnx.split(model)
    full = jax.jit(lambda s, t, p, v: forward(graphdef, s, t, p, v))
    ext = jax.jit(
        lambda s, *args, last_only: nnx.merge(graphdef, s).extend(*args, last_only=last_only),
        static_argnames="last_only",
    )
    return functools.partial(full, state), functools.partial(ext, state)


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_decoding_equals_full_forward(tiny, name):
    """A left-padded batch of prompts of lengths 1, 4 and 7 is prefilled into an empty cache,
    then 9 tokens go in one at a time and a chunk of 3 at once: every step's logits equal the
    full forward pass over the whole sequence, to positions far past the sliding windows."""
    _, _, model = tiny(name)
    cfg = model.config
    full, extend = compiled(model)
    prompts = random_prompts([1, 4, 7], seed=1)
    width, steps, chunk = 7, 9, 3
    b = len(prompts)
    tokens, valid = left_pad(prompts, width)
    more = np.random.RandomState(2).randint(0, VOCAB, (b, steps + chunk)).astype(np.int32)
    all_tokens = np.concatenate([tokens, more], axis=1)
    all_valid = np.concatenate([valid, np.ones(more.shape, bool)], axis=1)
    positions = np.maximum(np.cumsum(all_valid, axis=1) - 1, 0).astype(np.int32)
    assert positions.max() > 2 * (cfg.sliding_window or 4)  # well past every window
    ref = np.asarray(full(all_tokens, positions, all_valid))
    scale = np.abs(ref).max()

    cache = KVCache.empty(cfg, b, all_tokens.shape[1] + 5)  # spare slots stay unused
    logits, cache = extend(
        tokens, positions[:, :width], valid, cache, jnp.int32(0), last_only=False
    )
    # Prefill: every real prompt position (padding positions' logits are meaningless).
    diff = np.abs(np.asarray(logits) - ref[:, :width])[valid]
    assert diff.max() / scale < TOL, f"prefill: {diff.max() / scale:.2e}"
    for step in range(steps):
        col = width + step
        one = slice(col, col + 1)
        logits, cache = extend(
            all_tokens[:, one],
            positions[:, one],
            all_valid[:, one],
            cache,
            jnp.int32(col),
            last_only=False,
        )
        err = rel_err(logits[:, 0], ref[:, col])
        assert err < TOL, f"decode step {step} (slot {col}): {err:.2e}"
    # A chunk of several tokens against the cache, unembedding only the last.
    col = width + steps
    span = slice(col, col + chunk)
    logits, _ = extend(
        all_tokens[:, span],
        positions[:, span],
        all_valid[:, span],
        cache,
        jnp.int32(col),
        last_only=True,
    )
    assert logits.shape == (b, 1, cfg.vocab_size)
    assert rel_err(logits[:, 0], ref[:, -1]) < TOL


# 2. Greedy decoding equals transformers' generate(do_sample=False) on every tiny family.

GREEDY_NEW = 24  # longer than every window
GREEDY_LENGTHS = (1, 4, 9)


def hf_greedy(hf, prompt, max_new, eos):
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def pick_stop(free_runs):
    """A token that one run emits mid-way (first at index 2..length-3) and another never does,
    so the batch has rows that stop early and rows that hit the length limit."""
    for run in free_runs:
        for i, t in enumerate(run):
            if 2 <= i < len(run) - 2 and t not in run[:i] and any(t not in r for r in free_runs):
                return t
    raise AssertionError(f"no usable stop id in {free_runs}")


@pytest.fixture(scope="module", params=FAMILIES)
def greedy_case(request, tiny):
    name = request.param
    hf, _, model = tiny(name)
    prompts = random_prompts(GREEDY_LENGTHS, seed=3)
    free = [hf_greedy(hf, p, GREEDY_NEW, eos=None) for p in prompts]
    assert all(len(set(run)) > 3 for run in free), free  # varied, not one repeated token
    stop = pick_stop(free)
    theirs = [hf_greedy(hf, p, GREEDY_NEW, eos=stop) for p in prompts]
    sampler = Engine(model, one_device(), stop_ids=[stop])
    ours = sampler.generate(prompts, SamplingParams(max_new_tokens=GREEDY_NEW, temperature=0))
    return name, model, prompts, stop, theirs, ours


def test_greedy_equals_transformers(greedy_case):
    name, _, _, stop, theirs, ours = greedy_case
    reasons = []
    for i, (ref, (sample,)) in enumerate(zip(theirs, ours, strict=True)):
        assert sample.tokens == ref, f"{name} prompt {i}"
        if ref[-1] == stop:
            assert sample.finish_reason == "stop"
            assert stop not in sample.tokens[:-1]
        else:
            assert sample.finish_reason == "length"
            assert len(sample.tokens) == GREEDY_NEW and stop not in sample.tokens
        reasons.append(sample.finish_reason)
    assert set(reasons) == {"stop", "length"}, reasons  # the batch mixes both


def test_greedy_batch_equals_prompts_alone(greedy_case):
    """Exact equality with each prompt generated on its own (no padding, batch of one), and with
    n=2 greedy samples (the fan-out of one prefill)."""
    _, model, prompts, stop, _, ours = greedy_case
    sampler = Engine(model, one_device(), stop_ids=[stop])
    params = SamplingParams(max_new_tokens=GREEDY_NEW, temperature=0, n=2)
    for prompt, (batched,) in zip(prompts, ours, strict=True):
        alone = sampler.generate([prompt], params)[0]
        for s in alone:
            assert (s.tokens, s.finish_reason) == (batched.tokens, batched.finish_reason)


# 3. The shipped SmolLM2-135M-Instruct: 64 greedy tokens of a chat prompt equal transformers.

SMOL_NEW = 64
CHATS = [  # a long answer (runs to the limit) and a short one (ends with <|im_end|>)
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name three primary colours and say why the sky is blue."},
    ],
    [{"role": "user", "content": "What is 2 + 2? Reply with the number only."}],
]


def test_smollm2_greedy_equals_transformers():
    """Both chats in one (left-padded) batch against transformers on each chat alone."""
    mesh = one_device()
    handle = shipped.handle("smollm2")
    prompts = [handle.tokenizer.apply_chat_template(m, add_generation_prompt=True) for m in CHATS]
    assert len({len(p) for p in prompts}) == 2
    stops = list(handle.tokenizer.stop_token_ids)
    sampler = Engine(handle.model, mesh, stop_ids=stops)
    ours = sampler.generate(prompts, SamplingParams(max_new_tokens=SMOL_NEW, temperature=0))

    ref = shipped.reference_model("smollm2")
    reasons = []
    for ids, (sample,) in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), max_new_tokens=SMOL_NEW, do_sample=False)
        theirs = out[0, len(ids) :].tolist()
        print(
            f"smollm2: {len(ids)} prompt tokens; ours {sample.length} ({sample.finish_reason}), "
            f"transformers {len(theirs)}: {handle.tokenizer.decode(sample.tokens)!r}"
        )
        if sample.finish_reason == "stop":
            assert sample.tokens[-1] in stops and not set(sample.tokens[:-1]) & set(stops)
        else:
            assert sample.length == SMOL_NEW
        shared = min(len(theirs), sample.length)  # up to where either stopped
        assert shared >= 2 and sample.tokens[:shared] == theirs[:shared]
        if len(theirs) < SMOL_NEW:  # transformers stopped at an end token: so must we, there
            assert sample.finish_reason == "stop" and sample.length == len(theirs)
        reasons.append(sample.finish_reason)
    assert reasons == ["length", "stop"]


# 4. Samples do not depend on the mesh.

MESH_PROMPTS = random_prompts([3, 1, 9, 5, 12, 2], seed=4)  # 6 prompts: a batch bucket of 8
MESH_PARAMS = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, n=3, seed=11)


def sample_tokens(results):
    return [[(s.tokens, s.finish_reason) for s in samples] for samples in results]


@pytest.fixture(scope="module")
def mesh_reference(tiny):
    """llama_tied: two KV heads, so the tensor axis splits K/V as well as queries and the MLP."""
    _, src, model = tiny("llama_tied")
    sampler = Engine(model, one_device(), stop_ids=[NEVER])
    return src, sampler, sample_tokens(sampler.generate(MESH_PROMPTS, MESH_PARAMS))


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2)])
def test_samples_identical_on_any_mesh(mesh_reference, shape):
    src, _, reference = mesh_reference
    mesh = make_mesh(shape, jax.devices()[:8])
    model = load_hf_dir(src, mesh=mesh)
    if shape[2] > 1:  # the weights really are split
        assert not model.layers[0].self_attn.k_proj[...].sharding.is_fully_replicated
    sampler = Engine(model, mesh, stop_ids=[NEVER])
    assert sample_tokens(sampler.generate(MESH_PROMPTS, MESH_PARAMS)) == reference


def test_samples_are_random_and_seeded(mesh_reference):
    _, sampler, reference = mesh_reference
    # The n samples of one prompt differ from each other, and another seed changes them.
    for samples in reference:
        assert len({tuple(t) for t, _ in samples}) > 1
    other = sampler.generate(MESH_PROMPTS, SamplingParams(**{**vars(MESH_PARAMS), "seed": 12}))
    other = sample_tokens(other)
    pairs = [
        (a, b) for ra, rb in zip(reference, other, strict=True) for a, b in zip(ra, rb, strict=True)
    ]
    differing = sum(a != b for a, b in pairs)
    assert differing >= 0.8 * len(MESH_PROMPTS) * MESH_PARAMS.n
    assert sample_tokens(sampler.generate(MESH_PROMPTS, MESH_PARAMS)) == reference


# 5. The sampling distributions: chi-square goodness of fit on a vocabulary of 8.
#
# Each case draws DRAWS tokens from fixed logits with distinct keys and tests the counts of the
# tokens that should be possible against their expected probabilities. ALPHA is the false-alarm
# rate of each test: with the keys fixed the draws are deterministic, so a pass stays a pass, and
# a correct sampler fails a given case for a fraction ALPHA of key choices. Tokens outside the
# expected support must never be drawn (count exactly 0), which catches off-by-one nucleus cuts
# that a chi-square test could miss.

DRAWS = 20_000
ALPHA = 1e-4
# No ties and not sorted, so the cuts depend on ranking. At temperature 1 the sorted probabilities
# are about .370 .224 .136 .111 .083 .050 .018 .007 (cumulative .370 .595 .731 .842 .925 ...);
# no cumulative sum used below is within 0.02 of its top-p, so no cut depends on rounding.
LOGITS = np.array([1.0, 2.0, 0.5, 1.5, 0.0, 0.8, -1.0, -2.0], np.float32)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def expected(logits, temperature=1.0, top_k=0, top_p=1.0):
    """transformers' order: temperature, top-k, then top-p on the renormalised top-k."""
    z = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = order[:top_k] if top_k else order
    p = softmax(z[keep])
    before = np.cumsum(p) - p
    keep = keep[before < top_p]
    out = np.zeros(len(z))
    out[keep] = softmax(z[keep])
    return out


def draw(logits, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    """DRAWS tokens, one per row, from rows of `logits` ([V] broadcast, or [DRAWS, V])."""
    logits = np.broadcast_to(np.asarray(logits, np.float32), (DRAWS, len(LOGITS)))
    keys = jax.random.split(jax.random.PRNGKey(seed), DRAWS)
    fn = jax.jit(lambda lg, k, t, p: sample_logits(lg, k, t, p, top_k))  # fresh: re-reads globals
    return np.asarray(fn(logits, keys, jnp.float32(temperature), jnp.float32(top_p)))


def assert_distribution(tokens, probs, what):
    counts = np.bincount(tokens, minlength=len(probs))
    support = probs > 0
    assert counts[~support].sum() == 0, f"{what}: drew excluded tokens {counts}"
    result = stats.chisquare(counts[support], probs[support] * len(tokens))
    assert result.pvalue > ALPHA, f"{what}: counts {counts}, expected {probs * len(tokens)}"


def test_expected_distributions_are_what_the_cases_claim():
    """The reference itself: the cuts keep the intended tokens (including the crossing one)."""
    p = softmax(LOGITS.astype(np.float64))
    assert np.count_nonzero(expected(LOGITS, top_k=3)) == 3
    nucleus = expected(LOGITS, top_p=0.8)
    kept = np.sort(p)[::-1][: np.count_nonzero(nucleus)]
    assert kept[:-1].sum() < 0.8 <= kept.sum()  # the token crossing top_p is in
    assert np.count_nonzero(nucleus) == 4
    # top-p applies to the top-k renormalised: .439 .267 .162 .132 keeps 3 of 4 at 0.75, where the
    # unrenormalised distribution would keep 4.
    assert np.count_nonzero(expected(LOGITS, top_k=4, top_p=0.75)) == 3
    assert np.count_nonzero(expected(LOGITS, top_p=0.75)) == 4
    assert np.count_nonzero(expected(LOGITS, temperature=0.7, top_p=0.8)) == 3


@pytest.mark.parametrize(
    "case",
    [
        dict(temperature=0.7),
        dict(temperature=1.0),
        dict(temperature=1.5, top_k=3),
        dict(top_p=0.8),
        dict(temperature=0.7, top_p=0.8),
        dict(top_k=4, top_p=0.75),
    ],
    ids=str,
)
def test_sample_distribution(case):
    assert_distribution(draw(LOGITS, **case), expected(LOGITS, **case), case)


def test_nucleus_beyond_candidates_falls_back_to_whole_vocabulary(monkeypatch):
    """With 2 candidates a flat row's nucleus needs the whole vocabulary, while a peaked row's
    fits in the candidates: rows of both kinds in one batch each get their exact distribution."""
    monkeypatch.setattr(sampler_module, "NUCLEUS_CANDIDATES", 2)
    peaked = np.array([0.0, 5.0, 1.0, 4.0, 0.0, -1.0, 0.0, 0.5], np.float32)
    rows = np.where((np.arange(DRAWS) % 2 == 0)[:, None], LOGITS, peaked)
    for top_p in (0.8, 0.9):
        assert (
            np.sort(softmax(LOGITS))[::-1][:2].sum() < top_p < np.sort(softmax(peaked))[-2:].sum()
        )
        tokens = draw(rows, top_p=top_p, seed=5)
        assert_distribution(tokens[0::2], expected(LOGITS, top_p=top_p), ("flat", top_p))
        assert_distribution(tokens[1::2], expected(peaked, top_p=top_p), ("peaked", top_p))


def test_statistical_test_has_power():
    """The same test rejects a near miss: top_p=0.8 draws judged against top_p=0.7's support
    and against plain temperature-1 draws (the nucleus not renormalised)."""
    tokens = draw(LOGITS, top_p=0.8)
    with pytest.raises(AssertionError):
        assert_distribution(tokens, expected(LOGITS, top_p=0.7), "wrong cut")
    with pytest.raises(AssertionError):
        assert_distribution(draw(LOGITS, temperature=0.9), expected(LOGITS), "wrong temperature")


def test_greedy_is_argmax():
    logits = np.random.RandomState(6).randn(64, 1000).astype(np.float32) * 3
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    for top_k, top_p in [(0, 1.0), (5, 0.5), (0, 0.3)]:
        tokens = sample_logits(jnp.asarray(logits), keys, jnp.float32(0), jnp.float32(top_p), top_k)
        np.testing.assert_array_equal(np.asarray(tokens), logits.argmax(-1))


def test_unfiltered_draws_are_stable_under_rounding_noise():
    """With top_p=1 and top_k=0 nothing is filtered, so logits that differ by rounding (as the
    same prompt's do in batches of another size) must give the same draw for the same key. The
    draw once switched between a sorted-candidate draw and a whole-vocabulary draw on whether the
    candidates' probabilities summed to >= 1.0 in float32, which changed about a third of draws
    under 1e-6 noise."""
    rng = np.random.RandomState(7)
    rows, vocab = 2000, VOCAB
    logits = rng.randn(rows, vocab).astype(np.float32)
    nudged = logits + 1e-6 * rng.randn(rows, vocab).astype(np.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), rows)
    one = jnp.float32(1.0)
    a, b = (np.asarray(sample_logits(jnp.asarray(x), keys, one, one, 0)) for x in (logits, nudged))
    assert (a != b).mean() < 0.005


# 6. A prompt's samples do not depend on the batch around it or on the padding.


def test_sampled_batch_is_independent_of_padding_and_batch_size(tiny):
    """Keys are per (prompt index, sample index): the prompts at indices 0..2 give identical
    samples when batched with a long prompt (a wider prompt bucket and more padding) or with
    nothing after them (a smaller batch bucket), and prompt 0 gives the same alone."""
    _, _, model = tiny("gemma3")
    sampler = Engine(model, one_device(), stop_ids=[NEVER])
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=2, seed=3)
    base = random_prompts([2, 7, 4], seed=7)
    long_prompt = random_prompts([20], seed=8)  # bucket 32, not 16
    ref = sample_tokens(sampler.generate(base, params))
    assert sample_tokens(sampler.generate(base + long_prompt, params))[:3] == ref
    assert sample_tokens(sampler.generate(base[:2], params)) == ref[:2]
    assert sample_tokens(sampler.generate(base[:1], params)) == ref[:1]
    moved = sample_tokens(sampler.generate([base[1], base[0]], params))
    assert moved[1] != ref[0]  # the key follows the index, not the content


# 7. Compilations: shapes (slots, cache length, prompt bucket, n), top_k, log-probs and whether
# top-p is below 1 are all a compiled program depends on; prompt contents, seeds, temperatures
# and the top-p value are not.


def test_no_recompilation_within_a_bucket(tiny):
    _, _, model = tiny("llama_untied_k1")
    engine = Engine(model, one_device(), stop_ids=[NEVER])
    base = SamplingParams(max_new_tokens=6, temperature=1.0, seed=0)

    def run(lengths, data_seed, **change):
        prompts = random_prompts(lengths, data_seed)
        engine.generate(prompts, SamplingParams(**{**vars(base), **change}))
        return engine.compilations

    first = run([3, 10], 9)
    # New contents and lengths within prompt bucket 16, two prompts; new seeds and temperatures
    # (greedy included): nothing new to compile.
    assert run([16, 1], 10, seed=5) == first
    assert run([2, 2], 12, temperature=0.0) == first
    # The first top-p below 1 compiles the nucleus code once; other top-p values reuse it.
    nucleus = run([7, 8], 11, temperature=0.3, top_p=0.7)
    assert nucleus > first
    assert run([5, 9], 13, temperature=0.6, top_p=0.9) == nucleus
    first = nucleus
    assert run([17, 4], 14) > first  # a new prompt bucket (32)
    again = run([30, 20], 15, seed=1)
    assert run([31, 2], 16, seed=2, temperature=0.5) == again  # still bucket 32
    assert run([3, 4], 18, top_k=5) > again  # a new top_k
    again = engine.compilations
    assert run([3, 4], 19, top_k=5, top_p=0.5, temperature=2.0) == again


# 8. Errors and the total-length cap.


@pytest.mark.parametrize(
    "bad",
    [
        dict(n=0),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(temperature=-0.1),
        dict(max_new_tokens=0),
        dict(top_k=-1),
    ],
    ids=str,
)
def test_invalid_sampling_params(bad):
    with pytest.raises(TptError):
        SamplingParams(**bad)


def test_bad_prompts_and_length_cap(tiny):
    _, _, model = tiny("llama_tied")
    cap = 20
    sampler = Engine(model, one_device(), stop_ids=[NEVER], max_total_len=cap)
    params = SamplingParams(max_new_tokens=24, temperature=0)
    with pytest.raises(TptError):
        sampler.generate([], params)
    with pytest.raises(TptError, match="prompt 1 is empty"):
        sampler.generate([[5, 6], []], params)
    for length in (cap, cap + 5):
        with pytest.raises(TptError, match="total-length cap"):
            sampler.generate(random_prompts([3, length], seed=15), params)
    with pytest.raises(TptError):
        list(sampler.stream([5, 6], SamplingParams(n=2)))
    results = sampler.generate(random_prompts([15, 3, cap - 1], seed=16), params)
    for (sample,), length in zip(results, (15, 3, cap - 1), strict=True):
        assert sample.finish_reason == "length"
        assert sample.length == cap - length
    (short,) = sampler.generate(random_prompts([3], seed=16), SamplingParams(max_new_tokens=4))[0]
    assert short.finish_reason == "length" and short.length == 4  # max_new_tokens below the cap


# 9. Log-probs are the model's own (unscaled) log-probabilities of the chosen tokens.


def test_logprobs_match_full_forward(tiny):
    _, _, model = tiny("gemma2")
    sampler = Engine(model, one_device(), stop_ids=[NEVER])
    prompts = random_prompts([1, 6, 3], seed=17)
    params = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=20, n=2, logprobs=True)
    results = sampler.generate(prompts, params)
    rows, chosen = [], []
    for prompt, samples in zip(prompts, results, strict=True):
        for s in samples:
            assert len(s.logprobs) == s.length == 10
            rows.append(prompt + s.tokens)
            chosen.append((len(prompt), s.tokens, s.logprobs))
    logits = full_logits(model, rows)
    width = logits.shape[1]
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    for r, (plen, tokens, got) in enumerate(chosen):
        start = width - len(rows[r]) + plen - 1  # the logits that predict the first new token
        want = [logp[r, start + i, t] for i, t in enumerate(tokens)]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert sampler.generate(prompts, SamplingParams(max_new_tokens=2))[0][0].logprobs is None


# Streaming gives the tokens generate() gives.


def test_stream_equals_generate(tiny):
    """stream() yields generate()'s tokens, the stop token included, greedy and sampled; and a
    stop id cuts the stop-free greedy completion right after its first occurrence."""
    _, _, model = tiny("gemma3")
    prompt = random_prompts([5], seed=18)[0]
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    free = Engine(model, one_device(), stop_ids=[NEVER]).generate([prompt], greedy)[0][0].tokens
    stop = free[4]
    sampler = Engine(model, one_device(), stop_ids=[stop])
    (stopped,) = sampler.generate([prompt], greedy)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.tokens == free[: free.index(stop) + 1]
    for params in (greedy, SamplingParams(max_new_tokens=12, temperature=1.0, seed=4)):
        (sample,) = sampler.generate([prompt], params)[0]
        assert list(sampler.stream(prompt, params)) == sample.tokens


def test_repeated_streams_do_not_recompile(tiny):
    _, _, model = tiny("llama_tied")
    engine = Engine(model, one_device(), stop_ids=[NEVER])
    params = SamplingParams(max_new_tokens=6, temperature=0)
    list(engine.stream(random_prompts([5], seed=1)[0], params))
    before = engine.compilations
    for seed, length in ((2, 3), (3, 9), (4, 14)):  # same 16-token bucket, new contents
        list(engine.stream(random_prompts([length], seed=seed)[0], params))
    assert engine.compilations == before
