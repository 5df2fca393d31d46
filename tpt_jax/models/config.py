"""One frozen config for every supported decoder, its presets, and the HF `config.json` bridge.

LLaMA 3.x / SmolLM2, Gemma 2 and Gemma 3 differ only in flags read by one `Block`
(see `transformer.py`), so a new family is a new preset, not a new model file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from tpt_jax.errors import UnsupportedModelError

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
    def from_hf(d: dict[str, Any] | None) -> RopeScaling | None:
        if not d:
            return None
        kind = d.get("rope_type", d.get("type", "default"))
        if kind == "default":
            return None
        if kind == "linear":
            return RopeScaling("linear", float(d["factor"]))
        if kind == "llama3":
            return RopeScaling(
                "llama3",
                float(d["factor"]),
                float(d["low_freq_factor"]),
                float(d["high_freq_factor"]),
                int(d["original_max_position_embeddings"]),
            )
        raise UnsupportedModelError(f"unsupported rope_scaling type {kind!r}")


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
        """Parse a Hugging Face `config.json` dict (transformers 4.x or 5.x layout)."""
        model_type = d.get("model_type")
        if model_type == "gemma3":  # multimodal wrapper: the decoder lives in text_config
            d = {**d.get("text_config", {}), "model_type": "gemma3_text"}
            model_type = "gemma3_text"
        by_type = {v: k for k, v in HF_MODEL_TYPE.items()}
        if model_type not in by_type:
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not supported "
                f"(supported: {', '.join(sorted(by_type))})"
            )
        family: Family = by_type[model_type]  # type: ignore[assignment]
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise UnsupportedModelError("attention or MLP biases are not supported")
        heads = int(d["num_attention_heads"])
        theta, scaling, local_theta = _hf_rope(d, family)
        common = dict(
            family=family,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6 if family != "llama" else 1e-5)),
            tie_embeddings=bool(d.get("tie_word_embeddings", family != "llama")),
            max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=_as_tuple(d.get("eos_token_id")),
            pad_token_id=d.get("pad_token_id"),
        )
        if family == "llama":
            act = d.get("hidden_act", "silu")
            if act != "silu":
                raise UnsupportedModelError(f"llama hidden_act {act!r} is not supported")
            return ModelConfig(**common)
        n_layers = common["num_layers"]
        layer_types = d.get("layer_types") or _default_layer_types(family, n_layers, d)
        return ModelConfig(
            **common,
            rope_local_theta=local_theta,
            norm_plus_one=True,
            scale_embeddings=True,
            post_norms=True,
            activation="gelu_tanh",
            query_pre_attn_scalar=d.get("query_pre_attn_scalar"),
            attn_logit_softcap=d.get("attn_logit_softcapping"),
            final_logit_softcap=d.get("final_logit_softcapping"),
            sliding_window=d.get("sliding_window"),
            layer_types=tuple(layer_types),
            qk_norm=family == "gemma3",
        )


def _one_or_list(ids: tuple[int, ...]) -> int | list[int] | None:
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else list(ids)


def _as_tuple(x: int | list[int] | None) -> tuple[int, ...]:
    if x is None:
        return ()
    return (int(x),) if isinstance(x, int) else tuple(int(i) for i in x)


def _default_layer_types(family: Family, n: int, d: dict[str, Any]) -> list[LayerType]:
    # Gemma 2 alternates starting with a sliding layer; Gemma 3 puts one global layer per pattern.
    period = 2 if family == "gemma2" else int(d.get("sliding_window_pattern", 6))
    return [
        "sliding_attention" if (i + 1) % period else "full_attention"  # type: ignore[misc]
        for i in range(n)
    ]


def _hf_rope(d: dict[str, Any], family: Family) -> tuple[float, RopeScaling | None, float | None]:
    """(global theta, global scaling, local theta) from either HF rope layout."""
    params = d.get("rope_parameters")
    if params and family == "gemma3" and "full_attention" in params:
        full, local = params["full_attention"], params.get("sliding_attention", {})
        return (
            float(full.get("rope_theta", 1e6)),
            RopeScaling.from_hf(full),
            float(local.get("rope_theta", 1e4)),
        )
    if params and "rope_theta" in params:
        local = d.get("rope_local_base_freq", 1e4) if family == "gemma3" else None
        return float(params["rope_theta"]), RopeScaling.from_hf(params), local
    default_theta = 1e6 if family == "gemma3" else 10_000.0
    theta = float(d.get("rope_theta", default_theta))
    local = float(d.get("rope_local_base_freq", 1e4)) if family == "gemma3" else None
    return theta, RopeScaling.from_hf(d.get("rope_scaling")), local


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
        layer_types=tuple(_default_layer_types("gemma2", n_layers, {})),
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
        layer_types=tuple(_default_layer_types("gemma3", n_layers, {})),
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
