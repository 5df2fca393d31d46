"""The `tpt` command: conversions between formats, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from hf_tiny import make_hf_model

from tpt_jax.cli import main
from tpt_jax.safetensors_io import SafetensorsDir


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3")
    make_hf_model("gemma3").save_pretrained(path)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpt: error: "), err
    for needle in needles:
        assert str(needle) in lines[0]


def test_hf_to_orbax_to_hf_is_bit_identical(hf_dir, tmp_path, capsys):
    code, out, _ = run(["convert", hf_dir, tmp_path / "ckpt", "--to", "orbax"], capsys)
    assert code == 0 and "wrote orbax" in out
    code, out, _ = run(["convert", tmp_path / "ckpt", tmp_path / "hf"], capsys)
    assert code == 0
    a, b = SafetensorsDir(hf_dir), SafetensorsDir(tmp_path / "hf")
    assert set(a.keys()) == set(b.keys())
    assert all(np.array_equal(a.get(k), b.get(k)) for k in a.keys())


def test_convert_to_bfloat16(hf_dir, tmp_path, capsys):
    assert run(["convert", hf_dir, tmp_path / "bf", "--dtype", "bfloat16"], capsys)[0] == 0
    cfg = json.loads((tmp_path / "bf" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    ref = SafetensorsDir(hf_dir).get("model.norm.weight")
    got = SafetensorsDir(tmp_path / "bf").get("model.norm.weight")
    assert got.dtype.name == "bfloat16"
    np.testing.assert_array_equal(got, np.asarray(ref).astype(got.dtype))


def test_missing_path(tmp_path, capsys):
    code, _, err = run(["convert", tmp_path / "nope", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, tmp_path / "nope", "no such file")


def test_truncated_safetensors(hf_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    data = (hf_dir / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = run(["convert", bad, tmp_path / "out"], capsys)
    assert_one_line_error(code, err, bad / "model.safetensors", "truncated")
    assert not (tmp_path / "out").exists()


def test_corrupt_safetensors_header(hf_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    data = bytearray((hf_dir / "model.safetensors").read_bytes())
    data[8:40] = b"#" * 32
    (bad / "model.safetensors").write_bytes(bytes(data))
    code, _, err = run(["convert", bad, tmp_path / "out"], capsys)
    assert_one_line_error(code, err, bad / "model.safetensors")


def test_missing_tensor_is_named(hf_dir, tmp_path, capsys):
    from tpt_jax.safetensors_io import write_safetensors

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    src = SafetensorsDir(hf_dir)
    keep = {k: np.asarray(src.get(k)) for k in src.keys() if k != "model.norm.weight"}
    write_safetensors(bad / "model.safetensors", keep)
    code, _, err = run(["convert", bad, tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "model.norm.weight", "missing")


def test_unsupported_architecture(hf_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((hf_dir / "config.json").read_text()) | {"model_type": "mixtral"}
    (bad / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(["convert", bad, tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "mixtral", "not supported")


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00junk", b"hello world, not a model"])
def test_junk_gguf(tmp_path, capsys, content):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    code, _, err = run(["convert", bad, tmp_path / "out"], capsys)
    assert_one_line_error(code, err, bad)


def test_text_prompt_needs_a_tokenizer(hf_dir, capsys):
    code, _, err = run(["top", hf_dir, "hello"], capsys)
    assert_one_line_error(code, err, "tokenizer")


def test_info_counts_a_preset_without_weights(capsys):
    code, out, _ = run(["info", "llama3.1-70b"], capsys)
    assert code == 0 and json.loads(out)["params"] == 70_553_706_496


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tpt_jax.cli", "convert", str(tmp_path / "x"), str(tmp_path / "y")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_shipped_smollm2_exports_what_transformers_loads(tmp_path, capsys):
    """GGUF → HF directory: model, tokenizer, chat template and stop tokens load in transformers."""
    code, out, _ = run(["convert", "smollm2", tmp_path], capsys)
    assert code == 0, out
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "What is 12 times 7?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<|im_start|>", "system", "Ċ"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert 2 in np.atleast_1d(model.generation_config.eos_token_id)
    code, out, _ = run(["top", tmp_path, "What is 12 times 7?", "-k", "1"], capsys)
    assert code == 0
    with torch.no_grad():
        best = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    assert f"  {best:>7d}  " in out
