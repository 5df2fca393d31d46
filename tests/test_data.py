"""SFT data: example encoding (real SmolLM2 and tiny chat tokenizers, the prefix rule and its
fallback, plain text, the authors' quirk), hand-checked packed rows, dropping long examples, and
the deterministic per-epoch steps of fixed shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tpt_jax.config import TrainConfig
from tpt_jax.data import (
    SFTExample,
    drop_long,
    encode_example,
    epoch_steps,
    eval_batches,
    pack_rows,
    pack_step,
    steps_per_epoch,
)
from tpt_jax.errors import TptError
from tpt_jax.tokenizer import Tokenizer, add_vocab_tokens, build_byte_level_bpe, byte_alphabet

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
ANSWER = "2 + 2 = 4.\n#### 4"


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    from tpt_jax.gguf_io import find_smollm2_gguf, read_gguf_tokenizer

    return read_gguf_tokenizer(find_smollm2_gguf())


def tiny_tokenizer(specials: list[str], eos: str, template: str) -> Tokenizer:
    """Byte-level BPE whose one merge ("\\n\\n") can cross the prompt/completion boundary."""
    backend = build_byte_level_bpe([*byte_alphabet().values(), "ĊĊ"], [("Ċ", "Ċ")], None)
    add_vocab_tokens(backend, specials, [])
    return Tokenizer(backend, eos_token=eos, chat_template=template)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma's shape: the turn ends with <end_of_turn>, which is not the EOS token.
GEMMA_LIKE = (
    "<bos>{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
    "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


# --- encoding ---------------------------------------------------------------------------------


def test_smollm2_chat_example_learns_the_end_of_turn(smollm2: Tokenizer) -> None:
    ex = encode_example(smollm2, QUESTION, ANSWER)
    assert list(ex.prompt) == smollm2.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert smollm2.decode(ex.completion) == ANSWER + "<|im_end|>\n"
    assert smollm2.eos_token_id in ex.completion  # <|im_end|> is SmolLM2's EOS
    full = QUESTION + [{"role": "assistant", "content": ANSWER}]
    rendered = smollm2.apply_chat_template(full, add_generation_prompt=False)
    assert list(ex.prompt + ex.completion) == rendered


@pytest.mark.parametrize("answer", [" 4", "\n\nFirst, 2+2 = 4.\n#### 4"])
def test_smollm2_fallback_when_bpe_merges_across_the_boundary(
    smollm2: Tokenizer, answer: str
) -> None:
    """A completion starting with whitespace merges with the template's newline ("ĊĠ", "ĊĊ"):
    the generation prompt is then no prefix of the full rendering."""
    full = smollm2.apply_chat_template(
        QUESTION + [{"role": "assistant", "content": answer}], add_generation_prompt=False
    )
    head = smollm2.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert full[: len(head)] != head
    ex = encode_example(smollm2, QUESTION, answer)
    assert list(ex.prompt) == head
    assert list(ex.completion) == smollm2.encode(answer, add_special_tokens=False) + [2]
    assert smollm2.decode(ex.completion) == answer + "<|im_end|>"


def test_tiny_chatml_prefix_and_fallback() -> None:
    tok = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], "<|im_end|>", CHATML)
    end = tok.token_to_id("<|im_end|>")
    ex = encode_example(tok, QUESTION, "x")
    assert tok.decode(ex.prompt).endswith("<|im_start|>assistant\n")
    assert list(ex.completion) == tok.encode("x", False) + [end] + tok.encode("\n", False)
    ex = encode_example(tok, QUESTION, "\n\nx")  # the template's "\n" merges: fallback
    assert list(ex.completion) == tok.encode("\n\nx", False) + [end]


def test_fallback_ends_with_the_templates_end_of_turn_not_eos() -> None:
    tok = tiny_tokenizer(
        ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", GEMMA_LIKE
    )
    turn_end = tok.token_to_id("<end_of_turn>")
    assert tok.stop_token_ids[0] == tok.token_to_id("<eos>")
    ex = encode_example(tok, QUESTION, "4")
    assert tok.decode(ex.completion) == "4<end_of_turn>\n"
    assert tok.decode(ex.prompt).startswith("<bos><start_of_turn>user\n")
    ex = encode_example(tok, QUESTION, "\n\n4")
    assert list(ex.completion) == tok.encode("\n\n4", False) + [turn_end]


def test_plain_text_prompt_and_the_authors_quirk(smollm2: Tokenizer) -> None:
    question = "Question: what is 2+2?\nAnswer:"
    ex = encode_example(smollm2, question, " 4")
    assert list(ex.prompt) == smollm2.encode(question)
    assert ex.completion[-1] == smollm2.eos_token_id
    assert smollm2.decode(ex.prompt + ex.completion) == question + " 4<|im_end|>"
    # The quirk: "question\n\ncompletion", no template, no end token; messages give their text.
    quirk = encode_example(smollm2, QUESTION, ANSWER, chat_format=False)
    assert smollm2.decode(quirk.prompt) == "What is 2+2?\n\n"
    assert smollm2.decode(quirk.prompt + quirk.completion) == "What is 2+2?\n\n" + ANSWER
    assert not set(quirk.completion) & set(smollm2.stop_token_ids)
    with pytest.raises(TptError, match="empty completion"):
        encode_example(smollm2, "q", "", chat_format=False)


# --- packing ----------------------------------------------------------------------------------

A = SFTExample((1, 2, 3), (4, 5))
B = SFTExample((6,), (7, 8, 9))
C = SFTExample((10, 11), (12,))


def test_packed_rows_by_hand() -> None:
    """First fit in order: A (5) opens row 0, B (4) does not fit the 3 left and opens row 1,
    C (3) fills row 0. The loss mask is on exactly the slots whose target is a completion token."""
    rows = pack_rows([A, B, C], 8)
    np.testing.assert_array_equal(
        rows.tokens, [[1, 2, 3, 4, 5, 10, 11, 12], [6, 7, 8, 9, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        rows.targets, [[2, 3, 4, 5, 0, 11, 12, 0], [7, 8, 9, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        rows.loss_mask, [[0, 0, 1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        rows.positions, [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        rows.segments, [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(rows.valid, rows.segments > 0)
    assert sorted(rows.targets[rows.loss_mask]) == sorted(
        A.completion + B.completion + C.completion
    )


def test_unpacked_rows_and_padding_rows() -> None:
    rows = pack_rows([A, B, C], 8, pack=False).pad_to_multiple(2)
    assert len(rows) == 4
    np.testing.assert_array_equal(rows.segments.max(axis=1), [1, 1, 1, 0])
    assert not rows.loss_mask[3].any() and not rows.valid[3].any()
    assert [len(c) for c in rows.chunks(2)] == [2, 2]
    assert rows.loss_mask.sum() == 6


def test_long_examples_are_dropped_and_counted_never_truncated() -> None:
    long = SFTExample(tuple(range(1, 8)), (9, 9))  # 9 tokens
    kept, dropped = drop_long([A, long, B, long], 8)
    assert kept == [A, B] and dropped == 2
    assert drop_long([long], 9) == ([long], 0)  # exactly max_len fits
    with pytest.raises(TptError, match="max_len=8"):
        pack_rows([long], 8)
    with pytest.raises(TptError):
        SFTExample((), (1,))


def test_epoch_steps_recipe_counts_bucketed_shapes_and_determinism() -> None:
    cfg = TrainConfig(global_batch=8, micro_batch=4, max_len=32, length_step=8)
    rng = np.random.default_rng(0)
    # Prompt id i + 1 tags each example so its placement can be traced.
    examples = [
        SFTExample((i + 1,), tuple(rng.integers(1, 50, rng.integers(1, 12)).tolist()))
        for i in range(2000)
    ]
    assert steps_per_epoch(2000, 8) == 250 and steps_per_epoch(2001, 8) == 251
    steps = list(epoch_steps(examples, cfg, seed=3, epoch=0))
    assert len(steps) == 250
    seen, shapes = [], set()
    for step in steps:
        assert step.examples == 8
        for micro in step.micro:
            rows, length = micro.tokens.shape
            shapes.add((rows, length))
            assert length in (8, 16, 24, 32) and rows * length <= 4 * 32  # the token budget
            assert rows in (1, 2, 4, 8, 16) or rows == 4 * 32 // length
        starts = np.concatenate([m.tokens[(m.positions == 0) & m.valid] for m in step.micro])
        seen.extend(starts.tolist())
        assert step.loss_tokens == sum(int(m.loss_mask.sum()) for m in step.micro)
        assert step.tokens == sum(int(m.valid.sum()) for m in step.micro)
        assert step.computed == sum(m.tokens.size for m in step.micro) >= step.tokens
    assert sorted(seen) == list(range(1, 2001))  # each example exactly once per epoch
    assert len(shapes) <= 12  # bucketed: a few compiled shapes, not one per step
    # ~56 tokens per step: the old fixed [4, 32] rows computed 128 slots (>50% padding).
    pad = 1 - sum(s.tokens for s in steps) / sum(s.computed for s in steps)
    assert pad < 0.2
    again = list(epoch_steps(examples, cfg, seed=3, epoch=0, start=247))
    assert len(again) == 3
    for a, b in zip(again, steps[247:], strict=True):
        for ma, mb in zip(a.micro, b.micro, strict=True):
            np.testing.assert_array_equal(ma.tokens, mb.tokens)
    first = lambda s: s[0].micro[0].tokens  # noqa: E731
    other_epoch = list(epoch_steps(examples, cfg, seed=3, epoch=1, start=0))
    assert not np.array_equal(first(other_epoch), first(steps))
    last = list(epoch_steps(examples[: 2001 - 8], cfg, seed=0, epoch=0))[-1]
    assert last.examples == 1993 % 8


def test_rows_shard_evenly_over_the_data_parallel_size() -> None:
    cfg = TrainConfig(global_batch=8, micro_batch=2, max_len=32, length_step=8)
    examples = [SFTExample((1, 2), (3,) * n) for n in (3, 20, 7, 29, 1, 5, 11, 2)]
    for multiple in (1, 2, 4):
        micro = pack_step(examples, cfg, rows_multiple=multiple)
        assert all(len(m) % multiple == 0 for m in micro)
        assert sum(int(m.loss_mask.sum()) for m in micro) == sum(
            len(e.completion) for e in examples
        )


def test_train_arrays_gather_exactly_the_completion_slots() -> None:
    rows = pack_rows([A, B, C], 8)
    arrays = rows.train_arrays()
    index, targets, valid = arrays["loss_index"], arrays["loss_targets"], arrays["loss_valid"]
    assert index.shape == targets.shape == valid.shape == (len(rows), 4)  # 4 = 3 rounded to T/4=2
    for r in range(len(rows)):
        slots = np.flatnonzero(rows.loss_mask[r])
        np.testing.assert_array_equal(index[r, : len(slots)], slots)
        np.testing.assert_array_equal(targets[r, : len(slots)], rows.targets[r, slots])
        assert valid[r].sum() == len(slots) and not valid[r, len(slots) :].any()
    assert "targets" not in arrays and "loss_mask" not in arrays


def test_gsm8k_length_steps_at_the_recipe_settings_pad_under_ten_percent(smollm2) -> None:
    """The recipe (global_batch 8, micro_batch 8, max_len 1600) on GSM8K reference solutions:
    fixed [8, 1600] microbatches were ~86% padding; bucketed token-budget steps stay <= 10%."""
    path = Path("/work/shared/data/gsm8k/train.jsonl")
    if not path.is_file():
        pytest.skip("GSM8K train.jsonl not available")
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines()[:800]]
    examples = [
        encode_example(smollm2, [{"role": "user", "content": r["question"]}], r["answer"])
        for r in records
    ]
    steps = list(epoch_steps(examples, TrainConfig(), seed=0, epoch=0))
    real = sum(s.tokens for s in steps)
    assert 1 - real / (len(steps) * 8 * 1600) > 0.8  # what the fixed shape computed
    assert 1 - real / sum(s.computed for s in steps) <= 0.10
    shapes = {m.tokens.shape for s in steps for m in s.micro}
    assert len(shapes) <= 12


def test_eval_batches_cover_the_validation_set_once() -> None:
    cfg = TrainConfig(micro_batch=2, max_len=8, pack=True)
    batches = eval_batches([A, B, C, B], cfg)
    assert all(b.tokens.shape[0] * b.tokens.shape[1] <= 2 * 8 for b in batches)
    assert sum(int(b.loss_mask.sum()) for b in batches) == 2 + 3 + 1 + 3
    assert eval_batches([], cfg) == []
