"""Google's JAX Gemma releases: checkpoints of the `gemma` library and SentencePiece tokenizers.

A tiny random transformers Gemma 2 / Gemma 3 is written in the gemma library's layouts (built
here from the shapes its modules declare, and checked against its einsums), saved with Orbax as
the releases and `gm.ckpts.save_params` save, imported by `tpt_jax.gemma_jax_io`, and must give
the logits of the same model loaded from its HF directory. A tiny SentencePiece model trained
here stands in for a release's `tokenizer.model`.
"""

import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentencepiece
import torch
import transformers
from hf_tiny import SEQ, hf_logits, make_hf_model

import tpt_jax
from tpt_jax import gemma_jax_io
from tpt_jax.api import detect_format
from tpt_jax.checkpoint import save_checkpoint
from tpt_jax.errors import CheckpointError, UnsupportedModelError
from tpt_jax.hf_io import load_hf_dir
from tpt_jax.models import config as model_config
from tpt_jax.sharding import make_mesh
from tpt_jax.tokenizer import GEMMA3_CHAT_TEMPLATE, Tokenizer

TOL = 1e-5  # relative to the largest logit, as tests/test_hf_parity.py


def rel_err(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


# --- the gemma library's layout, from a transformers model ------------------------------------


def gemma_items(hf: transformers.PreTrainedModel, gating: str) -> list[tuple[str, str, np.ndarray]]:
    """(module path, parameter, array) of the gemma library's Transformer holding `hf`'s
    weights. Shapes as its modules declare them: q_einsum [N, D, H], kv_einsum [2, K, D, H],
    attn_vec_einsum [N, H, D], gating_einsum [2, F, D] ("rows": Gemma 2 9B / 27B, Gemma 3) or
    [2, D, F] ("cols": Gemma 2 2B), linear [F, D]; norms `scale`."""
    c = hf.config
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    n, k, h, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size

    def heads(w, count):  # HF [count * H, D] -> [count, D, H]
        return w.reshape(count, h, d).transpose(0, 2, 1)

    items = [
        ("embedder", "input_embedding", sd["model.embed_tokens.weight"]),
        ("final_norm", "scale", sd["model.norm.weight"]),
    ]
    for i in range(c.num_hidden_layers):
        hf_layer, layer = f"model.layers.{i}", f"layer_{i}"
        attn = f"{hf_layer}.self_attn"
        gate, up = sd[f"{hf_layer}.mlp.gate_proj.weight"], sd[f"{hf_layer}.mlp.up_proj.weight"]
        items += [
            (f"{layer}/attn/q_einsum", "w", heads(sd[f"{attn}.q_proj.weight"], n)),
            (
                f"{layer}/attn/kv_einsum",
                "w",
                np.stack([heads(sd[f"{attn}.{p}_proj.weight"], k) for p in "kv"]),
            ),
            (
                f"{layer}/attn/attn_vec_einsum",
                "w",
                sd[f"{attn}.o_proj.weight"].reshape(d, n, h).transpose(1, 2, 0),
            ),
            (
                f"{layer}/mlp/gating_einsum",
                "w",
                np.stack([gate, up] if gating == "rows" else [gate.T, up.T]),
            ),
            (f"{layer}/mlp/linear", "w", sd[f"{hf_layer}.mlp.down_proj.weight"].T),
        ]
        norms = {
            "pre_attention_norm": "input_layernorm",
            "post_attention_norm": "post_attention_layernorm",
            "pre_ffw_norm": "pre_feedforward_layernorm",
            "post_ffw_norm": "post_feedforward_layernorm",
        }
        items += [(f"{layer}/{g}", "scale", sd[f"{hf_layer}.{n}.weight"]) for g, n in norms.items()]
        if f"{attn}.q_norm.weight" in sd:
            items += [
                (f"{layer}/attn/_query_norm", "scale", sd[f"{attn}.q_norm.weight"]),
                (f"{layer}/attn/_key_norm", "scale", sd[f"{attn}.k_norm.weight"]),
            ]
    return items


def flat_tree(items) -> dict:
    """The released checkpoints' tree: {"transformer/layer_0/attn/q_einsum": {"w": ...}}."""
    return {f"transformer/{module}": {leaf: w} for module, leaf, w in items}


def nested_tree(items) -> dict:
    """What `gm.ckpts.save_params` writes: the Flax params, with no `w` under mlp."""
    tree: dict = {}
    for module, leaf, w in items:
        *parents, last = module.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = w if parents[-1:] == ["mlp"] else {leaf: w}
    return tree


def save(tree: dict, path, standard: bool) -> None:
    if standard:  # gm.ckpts.save_params
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, tree)
        checkpointer.wait_until_finished()
    else:  # the releases (and transformers' converter reads them with this)
        ocp.PyTreeCheckpointer().save(path, tree)


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def tiny(request, tmp_path_factory):
    """(name, transformers model, our model from its HF directory)."""
    hf = make_hf_model(request.param)
    src = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(src)
    return request.param, hf, load_hf_dir(src)


def tokens(batch=2, seq=SEQ, seed=0):
    return np.random.RandomState(seed).randint(0, 160, (batch, seq))


def test_layouts_are_the_gemma_librarys_einsums(tiny) -> None:
    """The tree built above computes what the HF modules compute, with the gemma library's own
    einsums (gemma/modules.py), so the layouts are not merely the inverse of our import."""
    _, hf, _ = tiny
    named = {f"{m}/{leaf}": w for m, leaf, w in gemma_items(hf, "cols")}
    layer = hf.model.layers[0]
    x = np.random.RandomState(1).randn(5, hf.config.hidden_size).astype(np.float32)
    with torch.no_grad():
        tx = torch.from_numpy(x)
        q = np.einsum("TD,NDH->TNH", x, named["layer_0/attn/q_einsum/w"])
        k, v = np.einsum("TD,CKDH->CTKH", x, named["layer_0/attn/kv_einsum/w"])
        np.testing.assert_allclose(q.reshape(5, -1), layer.self_attn.q_proj(tx), atol=1e-5)
        np.testing.assert_allclose(k.reshape(5, -1), layer.self_attn.k_proj(tx), atol=1e-5)
        np.testing.assert_allclose(v.reshape(5, -1), layer.self_attn.v_proj(tx), atol=1e-5)
        out = np.einsum("TNH,NHD->TD", q, named["layer_0/attn/attn_vec_einsum/w"])
        np.testing.assert_allclose(
            out, layer.self_attn.o_proj(torch.from_numpy(q.reshape(5, -1))), atol=1e-5
        )
        w = named["layer_0/mlp/gating_einsum/w"]  # [2, D, F]: FeedForward's `x @ w[i]`
        gate = torch.nn.functional.gelu(torch.from_numpy(x @ w[0]), approximate="tanh").numpy()
        mlp = (gate * (x @ w[1])) @ named["layer_0/mlp/linear/w"]
        np.testing.assert_allclose(mlp, layer.mlp(tx), atol=1e-5)


@pytest.mark.parametrize(
    "layout,gating",
    [("flat", "rows"), ("flat", "cols"), ("nested", "rows"), ("kauldron", "cols")],
)
def test_import_gives_the_hf_models_logits(tiny, tmp_path, layout, gating) -> None:
    name, hf, via_hf = tiny
    items = gemma_items(hf, gating)
    if layout == "flat":  # a released Gemma 3 also holds its vision tower: skipped
        tree = flat_tree(items) | {
            "transformer/embedder/mm_input_projection": {"w": np.ones((4, 64), np.float32)},
            "SigLiPFromPatches_0/siglip_encoder/embedding": {"kernel": np.ones(3, np.float32)},
        }
    elif layout == "nested":
        tree = nested_tree(items)
    else:  # a Kauldron trainer state: params beside the step and optimizer state
        tree = {"params": nested_tree(items), "step": np.int64(7), "opt_state": {"mu": np.ones(2)}}
    save(tree, tmp_path / "ckpt", standard=layout != "flat")
    assert gemma_jax_io.is_gemma_checkpoint(tmp_path / "ckpt")
    ours = gemma_jax_io.load_gemma_checkpoint(tmp_path / "ckpt", config=via_hf.config)
    toks = tokens()
    np.testing.assert_array_equal(np.asarray(ours(toks)), np.asarray(via_hf(toks)))
    assert rel_err(ours(toks), hf_logits(hf, toks)) < TOL


def test_load_infers_the_preset_and_finds_the_tokenizer(tiny, tmp_path, spm_file, monkeypatch):
    """`tpt_jax.load` on a release's layout (checkpoint directory, tokenizer.model beside it):
    the architecture from the preset with the tree's sizes, the family's chat template."""
    name, hf, via_hf = tiny
    monkeypatch.setitem(model_config.PRESETS, f"tiny-{name}", via_hf.config.replace(vocab_size=1))
    ckpt = tmp_path / f"{name}-it"
    save(flat_tree(gemma_items(hf, "rows")), ckpt, standard=False)
    (tmp_path / "tokenizer.model").write_bytes(spm_file.read_bytes())
    assert detect_format(ckpt) == "gemma"
    handle = tpt_jax.load(ckpt, mesh=make_mesh((1, 1, 1), jax.devices()[:1]))
    assert handle.config == via_hf.config  # the vocabulary size is the tree's
    toks = tokens()
    assert rel_err(handle.logits(toks), hf_logits(hf, toks)) < TOL
    chat = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    if name == "gemma3":  # the system turn opens the first user turn
        assert handle.tokenizer.chat_template == GEMMA3_CHAT_TEMPLATE
        text = handle.tokenizer.apply_chat_template(chat, tokenize=False)
        assert text == "<bos><start_of_turn>user\nsys\n\nq<end_of_turn>\n<start_of_turn>model\n"
    else:  # Gemma 2's template refuses a system turn
        with pytest.raises(Exception, match="System role not supported"):
            handle.tokenizer.apply_chat_template(chat)


def test_refusals_are_one_line(tiny, tmp_path) -> None:
    name, hf, via_hf = tiny
    items = gemma_items(hf, "rows")
    save(flat_tree(items), tmp_path / "no_preset", standard=False)
    with pytest.raises(UnsupportedModelError, match=f"no {name} preset has num_layers=") as info:
        gemma_jax_io.load_gemma_checkpoint(tmp_path / "no_preset")
    assert "config=" in str(info.value) and "\n" not in str(info.value)
    extra = flat_tree(items) | {"transformer/layer_0/attn/rotary": {"w": np.ones(2, np.float32)}}
    save(extra, tmp_path / "extra", standard=False)
    with pytest.raises(CheckpointError, match="unexpected tensor 'layer_0/attn/rotary'"):
        gemma_jax_io.load_gemma_checkpoint(tmp_path / "extra", config=via_hf.config)
    gemma1 = [item for item in items if not any(n in item[0] for n in ("post_", "_query", "_key"))]
    save(flat_tree(gemma1), tmp_path / "gemma1", standard=False)
    with pytest.raises(UnsupportedModelError, match="Gemma 1"):
        gemma_jax_io.load_gemma_checkpoint(tmp_path / "gemma1")
    missing = [item for item in items if item[0] != "layer_1/mlp/linear"]
    save(flat_tree(missing), tmp_path / "missing", standard=False)
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.down_proj"):
        gemma_jax_io.load_gemma_checkpoint(tmp_path / "missing", config=via_hf.config)


def test_multi_head_and_ambiguous_layouts() -> None:
    """With N == K the library keeps q, k and v in one qkv_einsum [3, N, D, H]: it maps as
    q_einsum and kv_einsum would. A gating_einsum with F == D cannot say which layout it is."""
    w = np.random.RandomState(0).randn(3, 4, 8, 2).astype(np.float32)  # [3, N, D, H]
    fused = gemma_jax_io.hf_tensors({"layer_0/attn/qkv_einsum": w}, 8)
    split = gemma_jax_io.hf_tensors(
        {"layer_0/attn/q_einsum": w[0], "layer_0/attn/kv_einsum": w[1:]}, 8
    )
    assert set(fused) == set(split) and len(fused) == 3
    for key, (_, tensor) in fused.items():
        np.testing.assert_array_equal(tensor(), split[key][1]())
    square = gemma_jax_io.hf_tensors({"layer_0/mlp/gating_einsum": np.ones((2, 8, 8))}, 8, "ckpt")
    with pytest.raises(CheckpointError, match="ckpt: gating_einsum .* ambiguous"):
        square["model.layers.0.mlp.gate_proj.weight"][1]()


def test_other_directories_are_not_gemma_checkpoints(tiny, tmp_path) -> None:
    _, hf, via_hf = tiny
    hf.save_pretrained(tmp_path / "hf")
    save_checkpoint(via_hf, tmp_path / "ours")
    save({"some": {"tree": np.ones(3, np.float32)}}, tmp_path / "other", standard=False)
    assert detect_format(tmp_path / "hf") == "hf"
    assert detect_format(tmp_path / "ours") == "orbax"
    for d in ("hf", "ours", "other", "nowhere"):
        assert not gemma_jax_io.is_gemma_checkpoint(tmp_path / d)


# --- SentencePiece tokenizers ---------------------------------------------------------------

TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "  leading spaces, trailing spaces   \n\n\tTabbed line\r\nWindows line\n\n\n",
    "The answer is ≈ π × 1000 — café naïve Zürich 日本語の文章 😀🚀 ∑x²=¼",
    "Betty has 1,080 dollars; she spends 37.5% (that's 405.00) and keeps -3 + 2^10 = 1021.",
    "def f(x):\n    return x ** 2  # square\n",
]


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    """A tiny SentencePiece model trained as Gemma's: BPE, byte fallback, digits split, no
    normalization, no dummy prefix, Gemma's special ids and turn markers."""
    out = tmp_path_factory.mktemp("spm")
    rng = np.random.RandomState(0)
    words = " ".join(TEXTS[::2]).split() + ["the", "a", "and", "sheep", "farmer", "dogs"]
    lines = [" ".join(rng.choice(words, rng.randint(3, 14))) for _ in range(600)]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        minloglevel=2,
    )
    return out / "tokenizer.model"


@pytest.fixture(scope="module")
def spm(spm_file):
    """(ours, SentencePiece itself, transformers' Gemma tokenizer converted from the file)."""
    config = '{"tokenizer_class": "GemmaTokenizer", "add_bos_token": true}'  # as Gemma's
    (spm_file.parent / "tokenizer_config.json").write_text(config)
    return (
        Tokenizer.from_sentencepiece(spm_file, family="gemma3"),
        sentencepiece.SentencePieceProcessor(model_file=str(spm_file)),
        transformers.AutoTokenizer.from_pretrained(spm_file.parent),
    )


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_encodes_as_sentencepiece_and_transformers(spm, text) -> None:
    ours, sp, ref = spm
    ids = ours.encode(text, add_special_tokens=False)
    assert ids == sp.encode(text)
    assert ours.decode(ids) == text == sp.decode(ids)
    assert ours.encode(text) == [ours.bos_token_id, *ids] == ref.encode(text)  # BOS, as Gemma


def test_sentencepiece_tokenizer_api(spm, spm_file, tmp_path) -> None:
    ours, sp, _ = spm
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (2, 1, 0)
    assert ours.stop_token_ids == (1, ours.token_to_id("<end_of_turn>"))
    assert ours.vocab_size == len(ours) == sp.get_piece_size() == 400
    assert ours.id_to_token(4) == "<start_of_turn>" and ours.token_to_id("<unk>") == 3
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "A farmer has 17 sheep."},
        {"role": "assistant", "content": "17"},
        {"role": "user", "content": "And 3 more?"},
    ]
    text = ours.apply_chat_template(chat, tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nA farmer has 17 sheep.<end_of_turn>\n"
        "<start_of_turn>model\n17<end_of_turn>\n<start_of_turn>user\nAnd 3 more?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    ids = ours.apply_chat_template(chat)
    assert ids[:2] == [2, 4]  # <bos> <start_of_turn>: the turn markers are single tokens
    assert ids.count(4) == 4 and ids.count(ours.token_to_id("<end_of_turn>")) == 3
    assert ours.decode(ids) == text
    assert ours.decode(ids, skip_special_tokens=True).startswith("<start_of_turn>user\nBe brief.")
    ours.save_pretrained(tmp_path)  # a HF directory: tokenizer.json, as checkpoints save it
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.apply_chat_template(chat) == ids and again.special_tokens == ours.special_tokens
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert list(hf.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)) == ids
    gemma2 = Tokenizer.from_sentencepiece(spm_file, family="gemma2")
    with pytest.raises(Exception, match="System role not supported"):
        gemma2.apply_chat_template(chat)
    assert gemma2.apply_chat_template(chat[1:], tokenize=False).startswith(
        "<bos><start_of_turn>user"
    )
    assert Tokenizer.from_sentencepiece(spm_file).chat_template is None  # no family: none


def test_sentencepiece_refusals_are_one_line(spm_file, tmp_path, monkeypatch) -> None:
    for kind in ("unigram", "bpe"):  # SentencePiece's defaults: NFKC, a dummy prefix
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(TEXTS * 20),
            model_prefix=str(tmp_path / kind),
            model_type=kind,
            vocab_size=100,
            minloglevel=2,
        )
    with pytest.raises(ValueError, match="only BPE SentencePiece models load"):
        Tokenizer.from_sentencepiece(tmp_path / "unigram.model")
    with pytest.raises(ValueError, match="normalized as Gemma's .* dummy prefix True") as info:
        Tokenizer.from_sentencepiece(tmp_path / "bpe.model")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.model").write_bytes(b"\xff not a proto")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.from_sentencepiece(tmp_path / "junk.model")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match="needs the sentencepiece package") as info:
        Tokenizer.from_sentencepiece(spm_file)
    assert "\n" not in str(info.value)
