"""Tiny random transformers models of each family, shaped to exercise every feature we claim.

K < N (and K = 1), soft-caps small enough to change outputs, windows shorter than the test
sequence, Llama-3 rope scaling, tied and untied embeddings, and norm weights moved off their
initial values.
"""

from __future__ import annotations

import torch
import transformers

SEQ = 12  # longer than every sliding window below

CONFIGS = {
    "llama_tied": dict(
        model_type="llama",
        vocab_size=160,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        max_position_embeddings=256,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "llama_untied_k1": dict(
        model_type="llama",
        vocab_size=160,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=16,
        rope_theta=500.0,
        tie_word_embeddings=False,
        max_position_embeddings=256,
    ),
    "gemma2": dict(
        model_type="gemma2",
        vocab_size=160,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=4,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        max_position_embeddings=256,
    ),
    "gemma3": dict(
        model_type="gemma3_text",
        vocab_size=160,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=3,
        sliding_window_pattern=2,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 4.0},
        max_position_embeddings=256,
    ),
}


def make_hf_model(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    kw = dict(CONFIGS[name])
    model_type = kw.pop("model_type")
    cfg = transformers.AutoConfig.for_model(model_type, **kw)
    kwargs = {"attn_implementation": "eager"}  # HF's eager path is the one that soft-caps
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, **kwargs).float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:  # off the init (ones for LLaMA, zeros for Gemma)
                p.copy_(p + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def hf_logits(model: transformers.PreTrainedModel, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()
