"""Generation: the slot engine (continuous batching over a KV cache sized from a memory
budget) and the sampling rules it applies."""

from tpt_jax.engine.engine import Engine, EngineOptions, bucket
from tpt_jax.engine.sampling import Sample, SamplingParams, sample_logits

__all__ = ["Engine", "EngineOptions", "Sample", "SamplingParams", "bucket", "sample_logits"]
