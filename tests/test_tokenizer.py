"""Tokenizers rebuilt from the shipped GGUF files against transformers' own GGUF tokenizers:
ids, chat templates, decoding, and a save_pretrained round trip through AutoTokenizer."""

import unicodedata
from datetime import datetime
from pathlib import Path

import pytest
import shipped
import tokenizers
import transformers  # noqa: E402
from tokenizers import Regex, pre_tokenizers

from tpt_jax.tokenizer import Tokenizer

TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?\n#### 10",
    "Betty has 1,080 dollars; she spends 37.5% (that's 405.00) and keeps -3 + 2^10 = 1021.",
    "The answer is ≈ π × 1000 — café naïve Zürich 日本語の文章 😀🚀 ∑x²=¼",
    "  leading spaces, trailing spaces   \n\n\tTabbed line\r\nWindows line\n\n\n",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nHi there<|im_end|>\n",
]
MESSAGES = [
    {"role": "system", "content": "You are a careful math tutor. Show your work."},
    {"role": "user", "content": "A farmer has 17 sheep and buys 3 more. How many sheep now?"},
]


def _hf_ids(out) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True), 4.x a list
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def smollm2():
    from tpt_jax.gguf_io import find_smollm2_gguf, read_gguf_tokenizer

    return read_gguf_tokenizer(find_smollm2_gguf()), shipped.reference_tokenizer("smollm2")


@pytest.fixture(scope="module")
def gemma3():
    from tpt_jax.gguf_io import find_gemma3_270m_gguf, read_gguf_tokenizer

    return read_gguf_tokenizer(find_gemma3_270m_gguf()), shipped.reference_tokenizer("gemma3-270m")


# --- SmolLM2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_encode_equals_transformers(smollm2, text: str) -> None:
    ours, ref = smollm2
    assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
    # The template-free BPE adds nothing around the text either way.
    assert ours.encode(text) == ref.encode(text)


def test_smollm2_isolates_digits_like_llama_cpp(smollm2) -> None:
    """The file's `tokenizer.ggml.pre` is "smollm": every number character is split off before
    the GPT-2 regex (SmolLM2's `Digits(individual_digits=True)`). transformers 5.24 ignores that
    pre-tokenizer name, so the two differ where whitespace before a number character would merge
    with it or with more whitespace ("  12", " ½"). SmolLM2's vocabulary holds no token that mixes
    a number character with anything else, so it was trained with the split."""
    ours, ref = smollm2
    backend = tokenizers.Tokenizer.from_str(ref.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    text = "a  12 and   345\n 6 x² costs ½ or ¾ of 2"
    ids = ours.encode(text, add_special_tokens=False)
    assert ids == backend.encode(text, add_special_tokens=False).ids
    assert ours.token_to_id("ĠĠ") in ids  # the two spaces before "12" merge, as in training
    assert ours.decode(ids) == text
    mixed = [
        piece
        for piece in map(ours.decode, ([i] for i in range(ours.vocab_size)))
        if len(piece) > 1 and any(unicodedata.category(c)[0] == "N" for c in piece)
    ]
    assert mixed == []


def test_smollm2_chat_template_equals_transformers(smollm2) -> None:
    ours, ref = smollm2
    ids = ours.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert ids == _hf_ids(ref.apply_chat_template(MESSAGES, add_generation_prompt=True))
    text = ours.apply_chat_template(MESSAGES, tokenize=False)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text == ref.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    # Without a system message the template inserts its default one.
    user_only = ours.apply_chat_template(MESSAGES[1:], add_generation_prompt=False, tokenize=False)
    assert "You are a helpful AI assistant named SmolLM" in user_only
    assert not user_only.endswith("assistant\n")
    assert ids[0] == ours.bos_token_id == 1


def test_smollm2_special_ids_and_decode(smollm2) -> None:
    ours, ref = smollm2
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 2)
    assert ours.stop_token_ids[0] == 2 and 2 in ours.stop_token_ids
    assert ours.vocab_size == len(ours) == 49_152
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == text
        assert ours.decode(ids) == ref.decode(ids)
    chat = ours.apply_chat_template(MESSAGES)
    plain = ours.decode(chat, skip_special_tokens=True)
    assert "<|im_start|>" not in plain and MESSAGES[1]["content"] in plain


def test_smollm2_save_pretrained_round_trip(smollm2, tmp_path: Path) -> None:
    ours, _ = smollm2
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False) == ours.encode(
            text, add_special_tokens=False
        )
    assert hf.chat_template == ours.chat_template
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 2)
    expected = ours.apply_chat_template(MESSAGES)
    assert _hf_ids(hf.apply_chat_template(MESSAGES, add_generation_prompt=True)) == expected
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.special_tokens == ours.special_tokens
    assert again.chat_template == ours.chat_template
    assert again.apply_chat_template(MESSAGES) == expected


def test_from_pretrained_reads_transformers_layout(smollm2, tmp_path: Path) -> None:
    """What transformers itself writes (template in chat_template.jinja) loads the same."""
    ours, ref = smollm2
    ref.save_pretrained(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == ours.chat_template
    assert loaded.special_tokens == ours.special_tokens
    assert loaded.apply_chat_template(MESSAGES) == ours.apply_chat_template(MESSAGES)


def test_special_tokens_outside_vocab(smollm2) -> None:
    ours, _ = smollm2
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(ours.backend, eos_token="</s>")
    tok = Tokenizer(ours.backend, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>")
    assert tok.special_tokens == {"eos_token": "<|im_end|>"} and tok.pad_token_id is None


def test_no_chat_template_raises_one_line(smollm2) -> None:
    ours, _ = smollm2
    bare = Tokenizer(ours.backend, eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="no chat template") as info:
        bare.apply_chat_template(MESSAGES)
    assert "\n" not in str(info.value)


def test_template_globals_like_transformers(smollm2) -> None:
    ours, _ = smollm2
    template = (
        "{% if messages|length == 0 %}{{ raise_exception('empty chat') }}{% endif %}"
        "{{ bos_token }}{% for m in messages %}{{ m | tojson }}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{% if tools is not none %}TOOLS{% endif %}"
    )
    tok = Tokenizer(ours.backend, bos_token="<|im_start|>", chat_template=template)
    text = tok.apply_chat_template([{"role": "user", "content": "é"}], tokenize=False)
    assert text == '<|im_start|>{"role": "user", "content": "é"}4'
    tools = [{"name": "calc"}]
    assert tok.apply_chat_template([{"role": "user"}], tokenize=False, tools=tools).endswith(
        "TOOLS"
    )
    with pytest.raises(Exception, match="empty chat"):
        tok.apply_chat_template([])


def test_template_time_fixes_the_date_a_template_prints(smollm2) -> None:
    """Llama 3.x prints `strftime_now("%d %b %Y")` into its system turn: a run fixes that clock,
    so its prompts do not change at midnight."""
    ours, _ = smollm2
    template = "{{ strftime_now('%d %b %Y') }}|{% for m in messages %}{{ m.content }}{% endfor %}"
    tok = Tokenizer(ours.backend, chat_template=template)
    today = datetime.now().strftime("%d %b %Y")
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False) in (
        f"{today}|q",
        f"{datetime.now().strftime('%d %b %Y')}|q",  # midnight passed while rendering
    )
    tok.template_time = datetime(2024, 7, 26, 23, 59)
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False) == (
        "26 Jul 2024|q"
    )


# --- Gemma 3 270M -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_gemma3_encode_equals_transformers(gemma3, text: str) -> None:
    ours, ref = gemma3
    assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
    assert ours.encode(text) == ref.encode(text)  # <bos> first
    assert ours.decode(ours.encode(text, add_special_tokens=False)) == text


def test_gemma3_specials_and_no_template(gemma3, tmp_path: Path) -> None:
    ours, _ = gemma3
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (2, 1, 0)
    assert ours.stop_token_ids == (1, ours.token_to_id("<end_of_turn>")) == (1, 106)
    assert ours.vocab_size == 262_144
    assert ours.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template(MESSAGES)
    ours.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS[:4]:
        assert hf.encode(text) == ours.encode(text, add_special_tokens=True)
