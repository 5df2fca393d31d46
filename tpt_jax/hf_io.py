"""Hugging Face checkpoint directories in and out, tensor by tensor, straight onto the mesh.

Loading builds the abstract model, then fills each parameter with
`jax.make_array_from_callback`: every device shard reads only its own block of the safetensors
file (`safe_open(...).get_slice`) and is cast on its own, so no host ever holds a whole
checkpoint (or a whole sharded tensor). Export writes what `transformers` and its tokenizer load
as they are.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from tpt_jax.distributed import is_primary, to_host
from tpt_jax.errors import CheckpointError, TptError
from tpt_jax.models import hf_names
from tpt_jax.models.config import ModelConfig
from tpt_jax.models.transformer import Transformer, abstract_model
from tpt_jax.safetensors_io import SafetensorsDir, write_safetensors
from tpt_jax.sharding import SAMPLE_RULES, Rules, make_mesh, state_shardings

# HF key -> HF-layout tensor: an array, or a lazy `TensorSlice` that reads the block indexed
TensorSource = Callable[[str], Any]


def read_hf_config(directory: str | Path) -> ModelConfig:
    """The architecture in `directory/config.json`: any fault in that file (unreadable, not JSON,
    a key of the wrong type or value) is a one-line error naming the file and the key."""
    path = Path(directory) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (is {directory} a HF model directory?)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
    try:
        return ModelConfig.from_hf_config(raw)
    except TptError as e:  # the message names the key; the file is named here
        raise type(e)(f"{path}: {e}") from None


def build_model(
    cfg: ModelConfig,
    source: TensorSource,
    available: set[str],
    *,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    rules: Rules = SAMPLE_RULES,
    where: Callable[[str], str] = lambda key: key,
) -> Transformer:
    """Fill the abstract model of `cfg` from HF-named tensors, each placed with its sharding.

    `available` is the checkpoint's key set: a missing parameter or an unexpected tensor is an
    error naming it (`where(key)` says which file it is in), so no weight is silently skipped.
    """
    mesh = mesh or make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, abstract = nnx.split(abstract_model(cfg, dtype))
    shardings = nnx.to_flat_state(state_shardings(abstract, mesh, rules))
    rows = {row.path: row for row in hf_names.table(cfg)}
    wanted = {row.hf_key for row in rows.values()}
    unexpected = sorted(k for k in available - wanted if not hf_names.is_ignored(k, cfg))
    if unexpected:
        raise CheckpointError(f"{where(unexpected[0])}: unexpected tensor {unexpected[0]!r}")
    leaves = []
    for (path, var), (_, sharding) in zip(nnx.to_flat_state(abstract), shardings, strict=True):
        row = rows[path]
        if row.hf_key not in available:
            raise CheckpointError(f"{where('')}: missing tensor {row.hf_key!r}")
        array = _place(row, source(row.hf_key), var.shape, var.dtype, sharding, where)
        leaves.append((path, var.replace(array)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _place(
    row: hf_names.Row,
    hf_array: np.ndarray,
    shape: tuple[int, ...],
    dtype: Any,
    sharding: NamedSharding,
    where: Callable[[str], str],
) -> jax.Array:
    if tuple(hf_array.shape) != hf_names.hf_shape(row, shape):
        raise CheckpointError(
            f"{where(row.hf_key)}: tensor {row.hf_key!r} has shape {tuple(hf_array.shape)}, "
            f"the config implies {hf_names.hf_shape(row, shape)}"
        )
    target = np.dtype(dtype)
    return jax.make_array_from_callback(
        shape,
        sharding,
        lambda index: _read_block(row, hf_array, index, shape).astype(target, copy=False),
    )


def _read_block(
    row: hf_names.Row, hf_array: Any, index: tuple[slice, ...], shape: tuple[int, ...]
) -> np.ndarray:
    """Our-layout block `index` of the tensor, indexing `hf_array` (HF layout) only for the rows
    and columns that block covers, so a lazy `TensorSlice` reads no more from disk than that."""
    if row.layout == "same":
        return np.asarray(hf_array[index])
    if row.layout == "linear":  # ours [in, out] is HF [out, in] transposed
        return np.asarray(hf_array[index[1], index[0]]).T
    # heads_in: ours [D, N, H] from HF [N*H, D]; heads_out: ours [N, H, D] from HF [D, N*H].
    # Read the whole heads the block touches along N*H, then take its part of H.
    heads_in = row.layout == "heads_in"
    d, n, h = index if heads_in else (index[2], index[0], index[1])
    head_dim = shape[2] if heads_in else shape[1]
    first, last, _ = n.indices(row.heads)
    heads = slice(first * head_dim, last * head_dim)
    block = np.asarray(hf_array[heads, d] if heads_in else hf_array[d, heads])
    ours = hf_names.to_ours(dataclasses.replace(row, heads=last - first), block)
    return ours[:, :, h] if heads_in else ours[:, h, :]


def load_hf_dir(
    directory: str | Path,
    *,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    rules: Rules = SAMPLE_RULES,
) -> Transformer:
    """A model from a HF checkpoint directory (config.json + one or sharded safetensors)."""
    cfg = read_hf_config(directory)
    tensors = SafetensorsDir(directory)
    return build_model(
        cfg,
        tensors.get_slice,
        set(tensors.keys()),
        dtype=dtype,
        mesh=mesh,
        rules=rules,
        where=lambda k: str(tensors.file_of(k) if k in tensors else tensors.listing),
    )


def hf_state_dict(
    model: Transformer, dtype: Any = None, *, keep: bool = True
) -> dict[str, np.ndarray]:
    """HF-named, HF-layout host arrays, gathered one tensor at a time (from every process when
    the model spans several: each takes part in every gather). `keep=False`: take part in the
    gathers but return nothing (a process that does not write them)."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out = {}
    for row in hf_names.table(model.config):
        value = np.asarray(to_host(flat[row.path][...]))
        if not keep:
            continue
        if dtype is not None:
            value = value.astype(np.dtype(dtype))
        out[row.hf_key] = hf_names.to_hf(row, value)
    return out


def save_hf_dir(
    model: Transformer,
    directory: str | Path,
    *,
    tokenizer: Any = None,
    dtype: Any = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write config.json, generation_config.json, safetensors (+ index when sharded), tokenizer.
    Several processes: all gather the tensors, process 0 writes them."""
    directory = Path(directory)
    cfg = model.config
    tensors = hf_state_dict(model, dtype, keep=is_primary())
    if not is_primary():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    first = next(iter(tensors.values()))
    hf_cfg = cfg.to_hf_config() | {"torch_dtype": _torch_dtype_name(first.dtype)}
    hf_cfg["dtype"] = hf_cfg["torch_dtype"]
    (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    generation = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id}
    stops = tuple(tokenizer.stop_token_ids) if tokenizer is not None else cfg.eos_token_ids
    generation["eos_token_id"] = list(stops) if len(stops) != 1 else stops[0]
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    _write_shards(directory, tensors, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _write_shards(directory: Path, tensors: dict[str, np.ndarray], max_bytes: int) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += t.nbytes
    if len(shards) == 1:
        write_safetensors(directory / "model.safetensors", shards[0])
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _torch_dtype_name(dtype: np.dtype) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[
        np.dtype(dtype).name
    ]
