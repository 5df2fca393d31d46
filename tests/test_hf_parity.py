"""Logit parity with transformers (float32) and bit-exact HF → tpt_jax → HF round trips."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import transformers
from hf_tiny import CONFIGS, SEQ, hf_logits, make_hf_model

from tpt_jax.hf_io import load_hf_dir, save_hf_dir
from tpt_jax.models.transformer import Transformer
from tpt_jax.safetensors_io import SafetensorsDir

TOL = 1e-5  # relative to the largest logit


def rel_err(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    hf = make_hf_model(request.param)
    src = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(src)
    return request.param, hf, src, load_hf_dir(src)


def tokens(batch=3, seq=SEQ, seed=0):
    return np.random.RandomState(seed).randint(0, 160, (batch, seq))


def test_logits_match_transformers(pair):
    _, hf, _, ours = pair
    toks = tokens()
    assert rel_err(ours(toks), hf_logits(hf, toks)) < TOL


def with_config(model: Transformer, **changes) -> Transformer:
    """The same weights under a modified config (to prove a feature changes the output)."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    other = nnx.eval_shape(lambda: Transformer(model.config.replace(**changes), rngs=nnx.Rngs(0)))
    other_def, _ = nnx.split(other)
    return nnx.merge(other_def, state)


FEATURES = {  # each tiny config exercises these; switching one off must move the logits
    "llama_tied": [{"rope_scaling": None}],
    "llama_untied_k1": [{"rope_theta": 10_000.0}],
    "gemma2": [{"attn_logit_softcap": None}, {"final_logit_softcap": None}, {"layer_types": ()}],
    "gemma3": [{"layer_types": ()}, {"rope_scaling": None}, {"rope_local_theta": None}],
}


def test_tiny_configs_exercise_their_features(pair):
    name, hf, _, ours = pair
    toks = tokens()
    ref = hf_logits(hf, toks)
    for change in FEATURES[name]:
        changes = dict(change)
        if changes.get("layer_types") == ():
            changes["sliding_window"] = None
        assert rel_err(with_config(ours, **changes)(toks), ref) > 1e3 * TOL, change


def test_config_facts(pair):
    name, _, _, ours = pair
    cfg = ours.config
    assert cfg.num_kv_heads < cfg.num_heads
    if cfg.sliding_window:
        assert cfg.sliding_window < SEQ
        assert "full_attention" in cfg.layer_types and "sliding_attention" in cfg.layer_types


def test_roundtrip_is_bit_identical_and_reloads_in_transformers(pair, tmp_path):
    _, hf, src, ours = pair
    save_hf_dir(ours, tmp_path)
    before, after = SafetensorsDir(src), SafetensorsDir(tmp_path)
    assert set(after.keys()) == set(before.keys())
    for key in before.keys():
        a, b = np.asarray(before.get(key)), np.asarray(after.get(key))
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), key
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    toks = tokens(seed=1)
    np.testing.assert_array_equal(hf_logits(reloaded, toks), hf_logits(hf, toks))
    assert rel_err(ours(toks), hf_logits(reloaded, toks)) < TOL


def test_export_in_bfloat16_loads_in_transformers(pair, tmp_path):
    _, hf, _, ours = pair
    save_hf_dir(ours, tmp_path, dtype="bfloat16")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert next(reloaded.parameters()).dtype.__repr__() == "torch.bfloat16"


def test_sharded_export_writes_an_index_transformers_reads(pair, tmp_path):
    _, hf, _, ours = pair
    save_hf_dir(ours, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    )
    toks = tokens(seed=2)
    assert rel_err(load_hf_dir(tmp_path)(toks), hf_logits(reloaded, toks)) < TOL


def test_left_padding_matches_unpadded(pair):
    """Padding masks and per-row positions: a left-padded row gives the unpadded row's logits."""
    _, _, _, ours = pair
    toks = tokens(batch=1)
    pad = 5
    padded = np.concatenate([np.zeros((1, pad), int), toks], axis=1)
    valid = np.arange(padded.shape[1])[None] >= pad
    out = np.asarray(ours(padded, valid=valid))[:, pad:]
    assert rel_err(out, np.asarray(ours(toks))) < TOL


def test_dataclass_is_frozen(pair):
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair[3].config.vocab_size = 1


def test_bfloat16_load_stays_close_to_float32(pair):
    import jax.numpy as jnp
    from flax import nnx

    _, hf, src, _ = pair
    model = load_hf_dir(src, dtype=jnp.bfloat16)
    import jax

    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.bfloat16)
    }
    toks = tokens()
    ref = hf_logits(hf, toks)
    ours_err = rel_err(model(toks), ref)
    hf_err = rel_err(hf_logits(copy.deepcopy(hf).to(torch.bfloat16), toks), ref)
    # bf16 rounding shows, and by no more than it does in transformers' own bf16 model
    assert TOL < ours_err < 2 * hf_err + 1e-3, (ours_err, hf_err)
