"""`ModelHandle.generate` and `tpt generate` on the shipped SmolLM2-135M-Instruct."""

import pytest
import shipped

from tpt_jax.cli import main
from tpt_jax.errors import TptError

QUESTION = "What is 12 times 7?"


@pytest.fixture(scope="module")
def handle():
    return shipped.handle("smollm2")


def test_prompts_as_chat_ids_and_text_agree(handle):
    chat = [{"role": "user", "content": QUESTION}]
    ids = handle.tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    out = handle.generate([chat, ids], max_new_tokens=12, temperature=0)
    first, second = out[0][0], out[1][0]
    assert first.tokens == second.tokens and len(first.tokens) > 0
    body = first.tokens[:-1] if first.finish_reason == "stop" else first.tokens
    assert first.text == handle.tokenizer.decode(body) and first.text.strip()


def test_n_samples_stop_tokens_and_text(handle):
    chat = [{"role": "user", "content": QUESTION}]
    (samples,) = handle.generate([chat], max_new_tokens=40, temperature=1.0, n=4, seed=3)
    assert len(samples) == 4
    assert len({tuple(s.tokens) for s in samples}) > 1  # sampling, not four copies
    stops = set(handle.engine.stop_ids)
    for s in samples:
        assert s.finish_reason in ("stop", "length")
        if s.finish_reason == "stop":
            assert s.tokens[-1] in stops and not set(s.tokens[:-1]) & stops
            assert s.text == handle.tokenizer.decode(s.tokens[:-1])
        else:
            assert len(s.tokens) == 40 and not set(s.tokens) & stops
    again = handle.generate([chat], max_new_tokens=40, temperature=1.0, n=4, seed=3)[0]
    assert [s.tokens for s in again] == [s.tokens for s in samples]


def test_bad_sampling_values_are_errors(handle):
    with pytest.raises(TptError, match="top_p"):
        handle.generate([[1, 2]], top_p=0.0)
    with pytest.raises(TptError, match="n must"):
        handle.generate([[1, 2]], n=0)


def test_cli_generate_streams_the_greedy_answer(handle, capsys, monkeypatch):
    """`tpt generate` streams what `generate` returns. The command's own load is served the
    handle already loaded (on one device: the tests' 8 fake devices would make it reload and
    recompile sharded, for half a minute, what is tested elsewhere)."""
    import tpt_jax.api

    loads = []
    monkeypatch.setattr(tpt_jax.api, "load", lambda name, dtype: loads.append(name) or handle)
    chat = [{"role": "user", "content": QUESTION}]
    expected = handle.generate([chat], max_new_tokens=16, temperature=0)[0][0]
    assert main(["generate", "smollm2", QUESTION, "--max-new-tokens", "16"]) == 0
    assert loads == ["smollm2"]
    out, err = capsys.readouterr()
    assert out.strip() == expected.text.strip()
    cut = int(expected.finish_reason == "length")
    assert "tok/s" in err and f"{cut} of 1 answers cut at --max-new-tokens 16" in err


def test_key_ids_make_chunked_sampling_equal_one_call(handle):
    """THINK samples in chunks: sample j of prompt p must not depend on the chunk it is in."""
    from tpt_jax.engine import SamplingParams

    prompts = [handle.encode_prompt([{"role": "user", "content": f"{a} + {a}?"}]) for a in range(5)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=11)
    whole = handle.generate_ids(prompts, params)
    parts = handle.generate_ids(prompts[:2], params) + handle.generate_ids(
        prompts[2:], params, key_ids=[2, 3, 4]
    )
    assert [[s.tokens for s in p] for p in whole] == [[s.tokens for s in p] for p in parts]
    shifted = handle.generate_ids(prompts[2:], params)  # default ids 0..2: other streams
    assert [[s.tokens for s in p] for p in shifted] != [[s.tokens for s in p] for p in whole[2:]]
    with pytest.raises(TptError, match="2 key ids for 5 prompts"):
        handle.generate_ids(prompts, params, key_ids=[0, 1])
