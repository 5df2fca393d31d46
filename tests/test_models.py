"""Presets: parameter counts against the published models, and the HF config.json round trip."""

import pytest
import torch
import transformers

from tpt_jax.models.config import PRESETS, ModelConfig, preset
from tpt_jax.models.transformer import param_count

PUBLISHED = {  # parameter counts on the models' Hugging Face pages
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
    "llama3.1-8b": 8_030_261_248,
    "llama3.1-70b": 70_553_706_496,
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "smollm2-1.7b": 1_711_376_384,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "gemma3-270m": 268_098_176,
    "gemma3-1b": 999_885_952,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_param_count_matches_published(name):
    assert param_count(PRESETS[name]) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_count_matches_transformers(name):
    """HF builds the same architecture from our config.json (on the meta device: no memory)."""
    hf_cfg = PRESETS[name].to_hf_config()
    config = transformers.AutoConfig.for_model(**hf_cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    hf_count = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert param_count(PRESETS[name]) == hf_count


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_roundtrips_through_hf_config(name):
    cfg = PRESETS[name]
    assert ModelConfig.from_hf_config(cfg.to_hf_config()) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_transformers_reads_our_config_as_the_same_architecture(name):
    """What HF parses from our config.json (layer types, rope) is what our model computes."""
    cfg = PRESETS[name]
    hf = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    back = ModelConfig.from_hf_config(hf.to_dict())
    assert back.replace(eos_token_ids=cfg.eos_token_ids) == cfg


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KeyError, match="llama3.1-8b"):
        preset("llama-9000")


def test_unsupported_architecture_is_named():
    from tpt_jax.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="mistral"):
        ModelConfig.from_hf_config({"model_type": "mistral"})
