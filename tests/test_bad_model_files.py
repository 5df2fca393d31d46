"""Malformed model files are user errors: well-formed bytes with the wrong shape or values in a
`config.json`, a safetensors header or a shard index stop `tpt_jax.load` (and `tpt convert`)
with one line naming the file and the key, never a traceback."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hf_tiny import CONFIGS, make_hf_model

import tpt_jax
from tpt_jax.cli import main
from tpt_jax.errors import TptError
from tpt_jax.safetensors_io import SafetensorsDir, write_safetensors

MODEL = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
NORM = "model.norm.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny LLaMA directory (llama3 rope_scaling, 4 query heads over 2 KV heads), one file."""
    path = tmp_path_factory.mktemp("tiny")
    make_hf_model("llama_tied").save_pretrained(path)
    return path


# --- corruptions: each edits a copy of the tiny directory in place and returns the file at
# --- fault (relative to the directory) and the key or word its error must also name

Corruption = Callable[[Path], tuple[str, str]]


def config_case(key: str, change: Callable[[dict], object]) -> Corruption:
    """Rewrite config.json as `change(config)`; the error must name `key`."""

    def corrupt(d: Path) -> tuple[str, str]:
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(change(cfg)))
        return "config.json", key

    return corrupt


def with_keys(**changes: object) -> Callable[[dict], dict]:
    return lambda cfg: {**cfg, **changes}


LLAMA3_ROPE = CONFIGS["llama_tied"]["rope_scaling"]


def with_rope(key: str, value: object) -> Callable[[dict], dict]:
    """RoPE under `key` alone (`rope_scaling`: transformers 4.x; `rope_parameters`: 5.x, with the
    theta inside), whichever layout the installed transformers wrote."""

    def change(cfg: dict) -> dict:
        cfg = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_parameters")}
        return {**cfg, "rope_theta": 10_000.0, key: value}

    return change


def tensors_of(d: Path) -> dict[str, np.ndarray]:
    src = SafetensorsDir(d)
    return {k: np.asarray(src.get(k)) for k in src.keys()}


def header_entry_not_an_object(d: Path) -> tuple[str, str]:
    raw = (d / MODEL).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[NORM] = [1, 2]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (d / MODEL).write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return MODEL, NORM


def tensor_shape_not_the_configs(d: Path) -> tuple[str, str]:
    tensors = tensors_of(d)
    tensors[NORM] = tensors[NORM][:-1]
    write_safetensors(d / MODEL, tensors)
    return MODEL, NORM


def truncated_safetensors(d: Path) -> tuple[str, str]:
    raw = (d / MODEL).read_bytes()
    (d / MODEL).write_bytes(raw[: len(raw) // 2])
    return MODEL, "truncated"


def junk_safetensors_header(d: Path) -> tuple[str, str]:
    raw = bytearray((d / MODEL).read_bytes())
    raw[8:40] = b"#" * 32
    (d / MODEL).write_bytes(bytes(raw))
    return MODEL, "header"


def sharded(d: Path) -> dict[str, str]:
    """Split the directory's weights over two shards with an index; returns the weight map."""
    tensors = tensors_of(d)
    names = sorted(tensors)
    weight_map = {k: SHARDS[i >= len(names) // 2] for i, k in enumerate(names)}
    for shard in SHARDS:
        write_safetensors(d / shard, {k: tensors[k] for k, f in weight_map.items() if f == shard})
    (d / MODEL).unlink()
    (d / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def missing_shard(d: Path) -> tuple[str, str]:
    sharded(d)
    (d / SHARDS[1]).unlink()
    return SHARDS[1], INDEX


def index_lists_a_tensor_the_shard_lacks(d: Path) -> tuple[str, str]:
    weight_map = sharded(d)
    wrong = SHARDS[0] if weight_map[NORM] == SHARDS[1] else SHARDS[1]
    (d / INDEX).write_text(json.dumps({"weight_map": {**weight_map, NORM: wrong}}))
    return wrong, NORM


def tensor_missing_from_index(d: Path) -> tuple[str, str]:
    weight_map = sharded(d)
    del weight_map[NORM]
    (d / INDEX).write_text(json.dumps({"weight_map": weight_map}))
    return INDEX, NORM


def weight_map_not_an_object(d: Path) -> tuple[str, str]:
    sharded(d)
    (d / INDEX).write_text(json.dumps({"weight_map": list(SHARDS)}))
    return INDEX, "weight_map"


CASES: dict[str, Corruption] = {
    "config_top_level_list": config_case("top level", lambda cfg: [cfg]),
    "rope_scaling_list": config_case("rope_scaling", with_rope("rope_scaling", [8.0])),
    "size_is_a_string": config_case("hidden_size", with_keys(hidden_size="big")),
    "zero_heads": config_case("num_attention_heads", with_keys(num_attention_heads=0)),
    "negative_layers": config_case("num_hidden_layers", with_keys(num_hidden_layers=-2)),
    "zero_vocab": config_case("vocab_size", with_keys(vocab_size=0)),
    "kv_heads_do_not_divide": config_case("num_key_value_heads", with_keys(num_key_value_heads=3)),
    "unknown_rope_type": config_case(
        "rope_scaling.rope_type", with_rope("rope_scaling", {**LLAMA3_ROPE, "rope_type": "yarn"})
    ),
    "rope_factor_missing": config_case(
        "rope_scaling.factor",
        with_rope("rope_scaling", {k: v for k, v in LLAMA3_ROPE.items() if k != "factor"}),
    ),
    "rope_factor_not_a_number": config_case(
        "rope_scaling.factor", with_rope("rope_scaling", {**LLAMA3_ROPE, "factor": "eight"})
    ),
    "rope_parameters_unknown_type": config_case(
        "rope_parameters.rope_type",
        with_rope("rope_parameters", {**LLAMA3_ROPE, "rope_theta": 1e4, "rope_type": "yarn"}),
    ),
    "tie_flag_not_a_bool": config_case("tie_word_embeddings", with_keys(tie_word_embeddings="no")),
    "header_entry_not_an_object": header_entry_not_an_object,
    "tensor_shape_not_the_configs": tensor_shape_not_the_configs,
    "truncated_safetensors": truncated_safetensors,
    "junk_safetensors_header": junk_safetensors_header,
    "missing_shard": missing_shard,
    "index_lists_a_tensor_the_shard_lacks": index_lists_a_tensor_the_shard_lacks,
    "tensor_missing_from_index": tensor_missing_from_index,
    "weight_map_not_an_object": weight_map_not_an_object,
}


def corrupted(tiny: Path, tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """A corrupted copy of the tiny directory, and the needles its error must hold."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    at_fault, key = CASES[case](bad)
    return bad, [str(bad / at_fault), key]


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_names_the_file_and_key_in_one_line(tiny, tmp_path, case):
    bad, needles = corrupted(tiny, tmp_path, case)
    with pytest.raises(TptError) as err:
        tpt_jax.load(bad)
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize(
    "case", ["size_is_a_string", "rope_scaling_list", "header_entry_not_an_object", "missing_shard"]
)
def test_convert_prints_one_error_line_and_no_traceback(tiny, tmp_path, capsys, case):
    bad, needles = corrupted(tiny, tmp_path, case)
    code = main(["convert", str(bad), str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpt: error: "), err
    assert all(needle in lines[0] for needle in needles), (needles, lines[0])
    assert not (tmp_path / "out").exists()
