"""Checkpoints of Google's JAX `gemma` library in, through the Hugging Face name table.

Google releases Gemma for JAX (Kaggle, `gemma.gm.ckpts`) as Orbax trees named after the Flax
modules of google-deepmind/gemma: `transformer/layer_0/attn/q_einsum/w`, ... Each tensor is mapped
to the Hugging Face tensor(s) it holds, in HF layout, as transformers'
`convert_gemma3_weights_orbax_to_hf.py` maps them; `hf_io.build_model` then places those through
`tpt_jax.models.hf_names` like any HF checkpoint's, so our parameters keep one name table.

Trees read (the gemma library's `gm.ckpts` checkpoint types): FLAT, the released checkpoints
(`{"transformer/layer_0/attn/q_einsum": {"w": ...}}`); NESTED, what `gm.ckpts.save_params` writes
(`{"layer_0": {"attn": {"q_einsum": {"w": ...}}}}`); KAULDRON, a trainer state with NESTED params
under `params`. The text decoder only: vision-tower and multimodal-embedder entries are skipped.
Gemma 2 and 3; Gemma 1 (no post-norms) and STACKED trees (layers stacked by attention pattern)
are refused by name.

A released checkpoint holds no config: its shapes give the family and sizes, and the preset of
`tpt_jax.models.config.PRESETS` with those sizes gives what shapes cannot (windows, soft-caps,
RoPE); `config=` overrides that. The tokenizer is the SentencePiece model Google ships beside the
checkpoint (`tokenizer.model`, in the checkpoint directory or its parent).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Shaped

from tpt_jax import hf_io
from tpt_jax.errors import CheckpointError, UnsupportedModelError
from tpt_jax.models import config as model_config
from tpt_jax.models.config import ModelConfig
from tpt_jax.models.transformer import Transformer
from tpt_jax.sharding import SAMPLE_RULES, Rules
from tpt_jax.tokenizer import Tokenizer

# One of these is in every Orbax PyTree checkpoint directory (which, depends on Orbax's version).
_ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")
# What comes before the decoder's names: a trainer state, RL post-training, the released trees.
_PREFIXES = ("params/", "rlx_networks/policy_network/", "transformer/")
# Gemma 3's multimodal entries (vision tower, image embedder): not part of the text decoder.
_MULTIMODAL = re.compile(r"(SigLiPFromPatches_\d+|vision_encoder)/|embedder/mm_")

Transform = Callable[[np.ndarray], np.ndarray]  # gemma layout -> HF layout


# --- the gemma library's names and layouts -> Hugging Face's ------------------------------------
# Shapes as the gemma library's modules declare them (N query heads, K key/value heads, D model
# width, H head width, F MLP width), turned into HF's `[out, in]` matrices.


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _heads_in(w: Shaped[np.ndarray, "N D H"]) -> Shaped[np.ndarray, "NH D"]:
    """q / k / v: gemma `[heads, D, H]` -> HF `[heads * H, D]`."""
    return w.transpose(0, 2, 1).reshape(-1, w.shape[1])


def _heads_out(w: Shaped[np.ndarray, "N H D"]) -> Shaped[np.ndarray, "D NH"]:
    """attn_vec_einsum `[N, H, D]` -> HF o_proj `[D, N * H]`."""
    return w.transpose(2, 0, 1).reshape(w.shape[2], -1)


def _transposed(w: Shaped[np.ndarray, "F D"]) -> Shaped[np.ndarray, "D F"]:
    """mlp/linear `[F, D]` -> HF down_proj `[D, F]`."""
    return w.T


def _part(i: int, then: Transform) -> Transform:
    """Entry `i` of a stacked einsum (kv: k, v; qkv: q, k, v; gating: gate, up), then `then`."""
    return lambda w: then(w[i])


def _gating_rows(d: int, where: str) -> Transform:
    """One half of gating_einsum as HF's gate / up `[F, D]`. Gemma 2 9B / 27B and Gemma 3 store
    `[2, F, D]`; Gemma 2 2B (the library's `transpose_gating_einsum=False`) `[2, D, F]`."""

    def rows(w: Shaped[np.ndarray, "F D"] | Shaped[np.ndarray, "D F"]) -> Shaped[np.ndarray, "F D"]:
        if w.shape[0] == w.shape[1]:
            raise CheckpointError(f"{where}: gating_einsum [2, {d}, {d}] (F = D) is ambiguous")
        return w if w.shape[1] == d else w.T

    return rows


def _layer_table(d: int, where: str) -> dict[str, tuple[tuple[str, Transform], ...]]:
    """gemma name within `layer_{i}/` -> (HF name within `model.layers.{i}.`, layout) pairs."""
    gating = _gating_rows(d, where)
    return {
        "attn/q_einsum": (("self_attn.q_proj.weight", _heads_in),),
        "attn/kv_einsum": (
            ("self_attn.k_proj.weight", _part(0, _heads_in)),
            ("self_attn.v_proj.weight", _part(1, _heads_in)),
        ),
        # the library's layout when N == K (multi-head attention): q, k and v in one einsum
        "attn/qkv_einsum": tuple(
            (f"self_attn.{p}_proj.weight", _part(i, _heads_in)) for i, p in enumerate("qkv")
        ),
        "attn/attn_vec_einsum": (("self_attn.o_proj.weight", _heads_out),),
        "attn/_query_norm/scale": (("self_attn.q_norm.weight", _same),),
        "attn/_key_norm/scale": (("self_attn.k_norm.weight", _same),),
        "mlp/gating_einsum": (
            ("mlp.gate_proj.weight", _part(0, gating)),
            ("mlp.up_proj.weight", _part(1, gating)),
        ),
        "mlp/linear": (("mlp.down_proj.weight", _transposed),),
        # both scale by (1 + w), so norms carry over as they are
        "pre_attention_norm/scale": (("input_layernorm.weight", _same),),
        "post_attention_norm/scale": (("post_attention_layernorm.weight", _same),),
        "pre_ffw_norm/scale": (("pre_feedforward_layernorm.weight", _same),),
        "post_ffw_norm/scale": (("post_feedforward_layernorm.weight", _same),),
    }


_TOP = {
    "embedder/input_embedding": (("model.embed_tokens.weight", _same),),
    "final_norm/scale": (("model.norm.weight", _same),),
}


def hf_tensors(
    params: Mapping[str, np.ndarray], hidden_size: int, where: str = ""
) -> dict[str, tuple[str, Callable[[], np.ndarray]]]:
    """HF key -> (the gemma name it comes from, a thunk giving it in HF layout), for every entry
    of `params` (gemma names as `canonical_name` spells them); an unknown name is an error."""
    layer = _layer_table(hidden_size, where)
    out = {}
    for name, w in params.items():
        m = re.fullmatch(r"layer_(\d+)/(.+)", name)
        prefix, rows = (f"model.layers.{m[1]}.", layer.get(m[2])) if m else ("", _TOP.get(name))
        if rows is None:
            raise CheckpointError(
                f"{where}: unexpected tensor {name!r} (not a Gemma 2 / 3 decoder weight; "
                "stacked-layer trees are not supported)"
            )
        for hf_name, transform in rows:
            out[prefix + hf_name] = (name, functools.partial(transform, w))
    return out


def canonical_name(keys: tuple[str, ...]) -> str | None:
    """A tree leaf's key path as one gemma name (`layer_0/attn/q_einsum`, `final_norm/scale`),
    the same in every tree layout; None for multimodal entries."""
    name = "/".join(keys)
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    if _MULTIMODAL.search(name):
        return None
    return name.removesuffix("/w")  # einsum weights: `.../q_einsum` + `w`; NESTED mlp has no `w`


# --- the architecture ---------------------------------------------------------------------------


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], where: str = "") -> ModelConfig:
    """The architecture of a gemma tree (gemma name -> shape): family and sizes from the shapes,
    the rest from the preset with those sizes (the tree's own vocabulary size kept)."""
    try:
        vocab, d = shapes["embedder/input_embedding"]
        layers = 1 + max(int(m[1]) for n in shapes if (m := re.match(r"layer_(\d+)/", n)))
        f = shapes["layer_0/mlp/linear"][0]
        if "layer_0/attn/qkv_einsum" in shapes:
            _, n, _, h = shapes["layer_0/attn/qkv_einsum"]
            k = n
        else:
            n, _, h = shapes["layer_0/attn/q_einsum"]
            k = shapes["layer_0/attn/kv_einsum"][1]
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f"{where}: not a Gemma decoder tree ({type(e).__name__}: {e})"
        ) from None
    if "layer_0/attn/_query_norm/scale" in shapes:
        family = "gemma3"
    elif "layer_0/post_ffw_norm/scale" in shapes:
        family = "gemma2"
    else:
        raise UnsupportedModelError(f"{where}: Gemma 1 (no post-norms); only Gemma 2 and 3 load")
    sizes = dict(
        num_layers=layers,
        hidden_size=d,
        intermediate_size=f,
        num_heads=n,
        num_kv_heads=k,
        head_dim=h,
    )
    for preset in model_config.PRESETS.values():
        if preset.family == family and all(getattr(preset, a) == v for a, v in sizes.items()):
            return preset.replace(vocab_size=vocab)
    shown = ", ".join(f"{a}={v}" for a, v in sizes.items())
    raise UnsupportedModelError(
        f"{where}: no {family} preset has {shown}; give the architecture as config="
    )


# --- Orbax ----------------------------------------------------------------------------------------


def _metadata(path: Path) -> tuple[Any, Any]:
    """(a PyTreeCheckpointer, the tree of Orbax metadata: shapes and dtypes, no array read)."""
    import orbax.checkpoint as ocp  # only when a gemma tree is read

    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(path)
    tree = getattr(meta, "item_metadata", meta)  # a StepMetadata since Orbax 0.11
    return checkpointer, getattr(tree, "tree", tree)


def _by_name(tree: Any) -> dict[str, Any]:
    """gemma name -> leaf, for each leaf of the text decoder."""
    leaves = [
        (tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys), leaf)
        for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    if any(keys[0] == "params" for keys, _ in leaves):  # a trainer state: its params only
        leaves = [(keys, leaf) for keys, leaf in leaves if keys[0] == "params"]
    named = ((canonical_name(keys), leaf) for keys, leaf in leaves)
    return {name: leaf for name, leaf in named if name is not None}


def _restore(path: Path) -> dict[str, np.ndarray]:
    """gemma name -> host array (in the stored dtype) of each decoder leaf."""
    import orbax.checkpoint as ocp

    checkpointer, tree = _metadata(path)
    # Host NumPy, not jax.Arrays: the release's sharding metadata names devices this machine
    # may not have; each parameter is then placed shard by shard by `hf_io.build_model`.
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return _by_name(checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args)))


def is_gemma_checkpoint(path: str | Path) -> bool:
    """Whether `path` is an Orbax tree of the gemma library (it has an embedder's
    `input_embedding`); reads only the tree's metadata."""
    path = Path(path)
    if not path.is_dir() or not any((path / f).exists() for f in _ORBAX_FILES):
        return False
    try:
        return "embedder/input_embedding" in _by_name(_metadata(path)[1])
    except Exception:  # not an Orbax tree Orbax can read: some other kind of directory
        return False


def load_gemma_checkpoint(
    path: str | Path,
    *,
    config: ModelConfig | None = None,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    rules: Rules = SAMPLE_RULES,
) -> Transformer:
    """The text decoder of a gemma-library checkpoint, each parameter cast to `dtype` and placed
    with its sharding on `mesh` (default: one device). `config` (default: `config_from_shapes`)
    must match the tree: a missing, surplus or misshapen tensor is an error naming it.

    The tree is restored into host memory once (Orbax cannot map it lazily as safetensors are).
    """
    path = Path(path)
    if config is None:
        shapes = {name: tuple(leaf.shape) for name, leaf in _by_name(_metadata(path)[1]).items()}
        config = config_from_shapes(shapes, str(path))
    tensors = hf_tensors(_restore(path), config.hidden_size, str(path))
    return hf_io.build_model(
        config,
        lambda key: tensors[key][1](),
        set(tensors),
        dtype=dtype,
        mesh=mesh,
        rules=rules,
        where=lambda key: f"{path}: {tensors[key][0]}" if key in tensors else str(path),
    )


# --- the tokenizer --------------------------------------------------------------------------------


def find_tokenizer(path: str | Path) -> Path | None:
    """The SentencePiece model shipped with a checkpoint: `tokenizer.model` in the checkpoint
    directory or its parent (Kaggle's layout), else the one `*.model` file there."""
    dirs = (Path(path), Path(path).parent)
    for d in dirs:
        if (d / "tokenizer.model").is_file():
            return d / "tokenizer.model"
    found = [f for d in dirs for f in sorted(d.glob("*.model")) if f.is_file()]
    return found[0] if len(found) == 1 else None


def load_gemma_tokenizer(path: str | Path, family: str) -> Tokenizer | None:
    """The checkpoint's tokenizer with `family`'s chat template, or None when none is found."""
    found = find_tokenizer(path)
    return None if found is None else Tokenizer.from_sentencepiece(found, family=family)


__all__ = [
    "canonical_name",
    "config_from_shapes",
    "find_tokenizer",
    "hf_tensors",
    "is_gemma_checkpoint",
    "load_gemma_checkpoint",
    "load_gemma_tokenizer",
]
