"""One frozen config for every supported decoder, its presets, and the HF `config.json` bridge.

LLaMA 3.x / SmolLM2, Gemma 2 and Gemma 3 differ only in flags read by one `Block`
(see `transformer.py`), so a new family is a new preset, not a new model file.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tpt_jax.errors import CheckpointError, UnsupportedModelError

Family = Literal["llama", "gemma2", "gemma3"]
LayerType = Literal["full_attention", "sliding_attention"]

HF_MODEL_TYPE = {"llama": "llama", "gemma2": "gemma2", "gemma3": "gemma3_text"}
HF_ARCHITECTURE = {
    "llama": "LlamaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: Llama-3's piecewise `llama3` rule or plain `linear` division."""

    rope_type: Literal["llama3", "linear"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def to_hf(self) -> dict[str, Any]:
        if self.rope_type == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        return {
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }

    @staticmethod
    def from_hf(d: dict[str, Any] | None, key: str = "rope_scaling") -> RopeScaling | None:
        """Parse HF's `rope_scaling` (or a `rope_parameters` entry, named by `key` in errors)."""
        if not d:
            return None
        keys = _Keys(d, key)
        kind_key = "rope_type" if "rope_type" in d else "type"
        kind = keys.text(kind_key, "default")
        if kind == "default":
            return None
        if kind == "linear":
            return RopeScaling("linear", float(keys.number("factor")))
        if kind == "llama3":
            return RopeScaling(
                "llama3",
                float(keys.number("factor")),
                float(keys.number("low_freq_factor")),
                float(keys.number("high_freq_factor")),
                keys.size("original_max_position_embeddings"),
            )
        raise UnsupportedModelError(
            f"{keys.name(kind_key)}: unsupported {kind!r} (supported: default, linear, llama3)"
        )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer; letters follow the scaling book."""

    family: Family
    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None  # applies to full-attention layers only
    rope_local_theta: float | None = None  # Gemma 3 sliding layers; None = rope_theta
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_position_embeddings: int = 8192
    # Gemma extras (all off for LLaMA)
    norm_plus_one: bool = False  # RMSNorm scales by (1 + w)
    scale_embeddings: bool = False  # multiply embeddings by sqrt(D)
    post_norms: bool = False  # norms after attention and MLP as well as before
    activation: Literal["silu", "gelu_tanh"] = "silu"
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (else H ** -0.5)
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[LayerType, ...] = ()  # empty = every layer full attention
    qk_norm: bool = False
    # token ids the tokenizer-free parts of the stack need (engine stop tokens, padding)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
            )
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding_attention layers need a sliding_window")

    def layer_type(self, i: int) -> LayerType:
        return self.layer_types[i] if self.layer_types else "full_attention"

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    # --- Hugging Face config.json -------------------------------------------------------------

    def to_hf_config(self) -> dict[str, Any]:
        """A `config.json` dict that transformers 4.4x and 5.x both read as this architecture."""
        d: dict[str, Any] = {
            "architectures": [HF_ARCHITECTURE[self.family]],
            "model_type": HF_MODEL_TYPE[self.family],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.to_hf() if self.rope_scaling else None,
            "attention_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": _one_or_list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
        }
        if self.family == "llama":
            d.update(hidden_act="silu", mlp_bias=False)
            return d
        d.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            attn_logit_softcapping=self.attn_logit_softcap,
            final_logit_softcapping=self.final_logit_softcap,
            sliding_window=self.sliding_window,
            layer_types=list(self.layer_types),
        )
        if self.family == "gemma3":
            d["rope_local_base_freq"] = self.rope_local_theta
        return d

    @staticmethod
    def from_hf_config(d: dict[str, Any]) -> ModelConfig:
        """Parse a Hugging Face `config.json` dict (transformers 4.x or 5.x layout).

        A key of the wrong JSON type or out of range (a string for a size, zero heads, heads
        that do not divide, junk `rope_scaling`) is a `TptError` naming the key.
        """
        keys = _Keys(d)
        model_type = d.get("model_type")
        if model_type == "gemma3":  # multimodal wrapper: the decoder lives in text_config
            text = keys.object("text_config")
            keys = _Keys({**(text.d if text else {}), "model_type": "gemma3_text"}, "text_config")
            d, model_type = keys.d, "gemma3_text"
        by_type = {v: k for k, v in HF_MODEL_TYPE.items()}
        if not isinstance(model_type, str) or model_type not in by_type:
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not supported "
                f"(supported: {', '.join(sorted(by_type))})"
            )
        family: Family = by_type[model_type]  # type: ignore[assignment]
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise UnsupportedModelError("attention or MLP biases are not supported")
        heads = keys.size("num_attention_heads")
        kv_heads = keys.size("num_key_value_heads", heads)
        if heads % kv_heads:
            raise CheckpointError(
                f"{keys.name('num_key_value_heads')} ({kv_heads}) does not divide "
                f"{keys.name('num_attention_heads')} ({heads})"
            )
        hidden = keys.size("hidden_size")
        theta, scaling, local_theta = _hf_rope(keys, family)
        common = dict(
            family=family,
            vocab_size=keys.size("vocab_size"),
            hidden_size=hidden,
            intermediate_size=keys.size("intermediate_size"),
            num_layers=keys.size("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=keys.size("head_dim", max(hidden // heads, 1)),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(keys.number("rms_norm_eps", 1e-6 if family != "llama" else 1e-5)),
            tie_embeddings=keys.flag("tie_word_embeddings", family != "llama"),
            max_position_embeddings=keys.size("max_position_embeddings", 8192),
            bos_token_id=keys.token("bos_token_id"),
            eos_token_ids=_as_tuple(keys.token("eos_token_id", many=True)),
            pad_token_id=keys.token("pad_token_id"),
        )
        if family == "llama":
            act = keys.text("hidden_act", "silu")
            if act != "silu":
                raise UnsupportedModelError(f"llama hidden_act {act!r} is not supported")
            return ModelConfig(**common)
        n_layers = common["num_layers"]
        layer_types = keys.layer_types(n_layers) or _default_layer_types(family, n_layers, keys)
        sliding_window = keys.size("sliding_window", None)
        if "sliding_attention" in layer_types and sliding_window is None:
            raise CheckpointError(
                f"{keys.name('sliding_window')}: missing, but there are sliding_attention layers"
            )
        return ModelConfig(
            **common,
            rope_local_theta=local_theta,
            norm_plus_one=True,
            scale_embeddings=True,
            post_norms=True,
            activation="gelu_tanh",
            query_pre_attn_scalar=keys.number("query_pre_attn_scalar", None),
            attn_logit_softcap=keys.number("attn_logit_softcapping", None),
            final_logit_softcap=keys.number("final_logit_softcapping", None),
            sliding_window=sliding_window,
            layer_types=tuple(layer_types),
            qk_norm=family == "gemma3",
        )


_REQUIRED: Any = object()  # default of a key that must be present


def _show(value: Any) -> str:
    """A value for a one-line message: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_size(v: Any) -> bool:
    """A positive integer; an integral float (2048.0) counts, a bool or a string does not."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    return v > 0 and float(v).is_integer()


def _is_positive(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) and v > 0


def _is_token(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_tokens(v: Any) -> bool:
    """One token id, or a list of them (HF writes several stop tokens as a list)."""
    return _is_token(v) or (isinstance(v, list) and all(map(_is_token, v)))


class _Keys:
    """Typed reads from one JSON object of a `config.json`. A value of the wrong type or range is
    a one-line `CheckpointError` naming its key (`rope_scaling.factor`), where `int("big")` or a
    zero division further on would be a traceback. A null value counts as an absent key."""

    def __init__(self, d: Any, where: str = "") -> None:
        if not isinstance(d, dict):
            at = f"{where}: expected" if where else "expected"
            raise CheckpointError(
                f"{at} a JSON object{'' if where else ' at the top level'}, got {_show(d)}"
            )
        self.d, self.where = d, where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, default: Any, valid: Any, expected: str) -> Any:
        value = self.d.get(key)
        if value is None:
            if default is _REQUIRED:
                raise CheckpointError(f"missing key {self.name(key)!r}")
            return default
        if not valid(value):
            raise CheckpointError(f"{self.name(key)}: expected {expected}, got {_show(value)}")
        return value

    def size(self, key: str, default: Any = _REQUIRED) -> Any:
        """A positive integer (or `default`, which may be None, when the key is absent)."""
        value = self._get(key, default, _is_size, "a positive integer")
        return None if value is None else int(value)

    def number(self, key: str, default: Any = _REQUIRED) -> Any:
        """A positive finite number, as written (int or float)."""
        return self._get(key, default, _is_positive, "a positive number")

    def flag(self, key: str, default: bool) -> bool:
        return self._get(key, default, lambda v: isinstance(v, bool), "true or false")

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        return self._get(key, default, lambda v: isinstance(v, str), "a string")

    def token(self, key: str, *, many: bool = False) -> Any:
        """A token id (or, with `many`, a list of them), None when absent."""
        if many:
            return self._get(key, None, _is_tokens, "a token id or a list of them")
        return self._get(key, None, _is_token, "a token id")

    def object(self, key: str) -> _Keys | None:
        value = self.d.get(key)
        return None if value is None else _Keys(value, self.name(key))

    def layer_types(self, n_layers: int) -> list[LayerType] | None:
        """`layer_types`: one known attention kind per layer, or None when absent."""
        known = get_args(LayerType)
        value = self._get(
            "layer_types",
            None,
            lambda v: isinstance(v, list) and all(t in known for t in v),
            f"a list of {' / '.join(known)}",
        )
        if value and len(value) != n_layers:
            raise CheckpointError(
                f"{self.name('layer_types')}: {len(value)} entries for {n_layers} layers"
            )
        return value or None


def _one_or_list(ids: tuple[int, ...]) -> int | list[int] | None:
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else list(ids)


def _as_tuple(x: int | list[int] | None) -> tuple[int, ...]:
    if x is None:
        return ()
    return (int(x),) if isinstance(x, int) else tuple(int(i) for i in x)


def _default_layer_types(family: Family, n: int, keys: _Keys | None = None) -> list[LayerType]:
    # Gemma 2 alternates starting with a sliding layer; Gemma 3 puts one global layer per pattern.
    pattern = keys.size("sliding_window_pattern", 6) if keys else 6
    period = 2 if family == "gemma2" else pattern
    return [
        "sliding_attention" if (i + 1) % period else "full_attention"  # type: ignore[misc]
        for i in range(n)
    ]


def _hf_rope(keys: _Keys, family: Family) -> tuple[float, RopeScaling | None, float | None]:
    """(global theta, global scaling, local theta) from either HF rope layout."""
    params = keys.object("rope_parameters")
    if params and family == "gemma3" and "full_attention" in params.d:
        full = params.object("full_attention") or _Keys({}, params.name("full_attention"))
        local = params.object("sliding_attention") or _Keys({}, params.name("sliding_attention"))
        return (
            float(full.number("rope_theta", 1e6)),
            RopeScaling.from_hf(full.d, full.where),
            float(local.number("rope_theta", 1e4)),
        )
    if params and "rope_theta" in params.d:
        local = keys.number("rope_local_base_freq", 1e4) if family == "gemma3" else None
        return (
            float(params.number("rope_theta")),
            RopeScaling.from_hf(params.d, params.where),
            local,
        )
    default_theta = 1e6 if family == "gemma3" else 10_000.0
    theta = float(keys.number("rope_theta", default_theta))
    local = float(keys.number("rope_local_base_freq", 1e4)) if family == "gemma3" else None
    scaling = keys.object("rope_scaling")
    return theta, RopeScaling.from_hf(scaling.d, scaling.where) if scaling else None, local


# --- presets ------------------------------------------------------------------------------------


def _llama(**kw: Any) -> ModelConfig:
    base = dict(family="llama", head_dim=64, rms_norm_eps=1e-5)
    return ModelConfig(**{**base, **kw})


def _llama3(factor: float, **kw: Any) -> ModelConfig:
    return _llama(
        vocab_size=128_256,
        rope_theta=500_000.0,
        rope_scaling=RopeScaling("llama3", factor, 1.0, 4.0, 8192),
        max_position_embeddings=131_072,
        bos_token_id=128_000,
        eos_token_ids=(128_001, 128_008, 128_009),
        **kw,
    )


def _smollm2(**kw: Any) -> ModelConfig:
    return _llama(
        vocab_size=49_152,
        max_position_embeddings=8192,
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_ids=(2,),
        pad_token_id=2,
        **kw,
    )


def _gemma2(n_layers: int, **kw: Any) -> ModelConfig:
    return ModelConfig(
        family="gemma2",
        vocab_size=256_000,
        num_layers=n_layers,
        rope_theta=10_000.0,
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        max_position_embeddings=8192,
        norm_plus_one=True,
        scale_embeddings=True,
        post_norms=True,
        activation="gelu_tanh",
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=4096,
        layer_types=tuple(_default_layer_types("gemma2", n_layers)),
        bos_token_id=2,
        eos_token_ids=(1, 107),
        pad_token_id=0,
        **kw,
    )


def _gemma3(n_layers: int, **kw: Any) -> ModelConfig:
    base = dict(
        family="gemma3",
        vocab_size=262_208,
        num_layers=n_layers,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        rope_scaling=RopeScaling("linear", 8.0),
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        max_position_embeddings=131_072,
        norm_plus_one=True,
        scale_embeddings=True,
        post_norms=True,
        activation="gelu_tanh",
        sliding_window=1024,
        layer_types=tuple(_default_layer_types("gemma3", n_layers)),
        qk_norm=True,
        head_dim=256,
        query_pre_attn_scalar=256,
        bos_token_id=2,
        eos_token_ids=(1, 106),
        pad_token_id=0,
    )
    return ModelConfig(**{**base, **kw})


_SMALL_GEMMA3 = dict(
    vocab_size=262_144, rope_scaling=None, sliding_window=512, max_position_embeddings=32_768
)

PRESETS: dict[str, ModelConfig] = {
    "llama3.2-1b": _llama3(
        32.0,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        tie_embeddings=True,
    ),
    "llama3.2-3b": _llama3(
        32.0,
        hidden_size=3072,
        intermediate_size=8192,
        num_layers=28,
        num_heads=24,
        num_kv_heads=8,
        head_dim=128,
        tie_embeddings=True,
    ),
    "llama3.1-8b": _llama3(
        8.0,
        hidden_size=4096,
        intermediate_size=14_336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        tie_embeddings=False,
    ),
    "llama3.1-70b": _llama3(
        8.0,
        hidden_size=8192,
        intermediate_size=28_672,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        head_dim=128,
        tie_embeddings=False,
    ),
    "smollm2-135m": _smollm2(
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        rope_theta=100_000.0,
    ),
    # SmolLM2's vocabulary and tokenizer on a 2-layer, 64-wide body: random weights for smoke
    # runs and tests of the whole loop on a CPU in seconds.
    "smollm2-tiny": _smollm2(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=100_000.0,
    ),
    "smollm2-360m": _smollm2(
        hidden_size=960,
        intermediate_size=2560,
        num_layers=32,
        num_heads=15,
        num_kv_heads=5,
        rope_theta=100_000.0,
    ),
    "smollm2-1.7b": _smollm2(
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=24,
        num_heads=32,
        num_kv_heads=32,
        rope_theta=130_000.0,
    ),
    "gemma2-2b": _gemma2(
        26,
        hidden_size=2304,
        intermediate_size=9216,
        num_heads=8,
        num_kv_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
    ),
    "gemma2-9b": _gemma2(
        42,
        hidden_size=3584,
        intermediate_size=14_336,
        num_heads=16,
        num_kv_heads=8,
        head_dim=256,
        query_pre_attn_scalar=256,
    ),
    "gemma2-27b": _gemma2(
        46,
        hidden_size=4608,
        intermediate_size=36_864,
        num_heads=32,
        num_kv_heads=16,
        head_dim=128,
        query_pre_attn_scalar=144,
    ),
    "gemma3-270m": _gemma3(
        18, hidden_size=640, intermediate_size=2048, num_heads=4, num_kv_heads=1, **_SMALL_GEMMA3
    ),
    "gemma3-1b": _gemma3(
        26, hidden_size=1152, intermediate_size=6912, num_heads=4, num_kv_heads=1, **_SMALL_GEMMA3
    ),
    "gemma3-4b": _gemma3(
        34, hidden_size=2560, intermediate_size=10_240, num_heads=8, num_kv_heads=4
    ),
    "gemma3-12b": _gemma3(
        48, hidden_size=3840, intermediate_size=15_360, num_heads=16, num_kv_heads=8
    ),
    "gemma3-27b": _gemma3(
        62,
        hidden_size=5376,
        intermediate_size=21_504,
        num_heads=32,
        num_kv_heads=16,
        head_dim=128,
        query_pre_attn_scalar=168,
    ),
}


def preset(name: str) -> ModelConfig:
    """The named architecture preset; raises `KeyError` listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "preset", "UnsupportedModelError"]
