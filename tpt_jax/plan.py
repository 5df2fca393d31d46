"""Memory, planned before anything is allocated: what generation and training need per device.

Pure arithmetic over a `ModelConfig` and a run config, so `tpt plan` answers for a 70B model on
a laptop; the engine sizes its decode slots with the same functions, so plan and run agree.
THINK and EVAL hold the sampling weights (SAMPLE_RULES, engine.dtype) and the KV cache and
workspace at the engine's slot count; TRAIN the master weights, gradient accumulator and Adam's
moments (TRAIN_RULES), and in a micro-step the compute-dtype weights, activations and logits
(coefficients fitted to XLA's `memory_analysis()` on CPU; tests/test_plan.py checks them). A
stage fits when it leaves free 10% of what its weights leave (the engine's own margin).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from tpt_jax import checkpoint
from tpt_jax.config import RunConfig
from tpt_jax.errors import TptError
from tpt_jax.losses import default_chunk
from tpt_jax.memory import (
    HEADROOM,
    GiB,
    cache_shards,
    engine_budget,
    engine_bytes_per_slot,
    engine_fixed_bytes,
    engine_slots,
    kv_bytes_per_token,
    max_slots_for,
    param_count,
    split_size,
    total_memory_bytes,
    weight_bytes,
)
from tpt_jax.models.config import PRESETS, ModelConfig
from tpt_jax.sharding import MESH_AXES, SAMPLE_RULES, TRAIN_RULES, row_devices

# Per-chip memory as JAX reports it usable (bytes_limit); cpu: this machine's RAM / devices.
DEVICE_MEMORY = {"h100": 80, "h200": 139.8, "v5e": 16, "v5p": 95, "v6e": 32}
DEVICE_MEMORY = {kind: int(gib * GiB) for kind, gib in DEVICE_MEMORY.items()}
DEVICE_KINDS = ("cpu", *DEVICE_MEMORY)
MAX_DEVICES = 1024  # the largest device count a suggestion proposes

# Training coefficients, fitted to XLA's buffer assignment of the micro- and apply-steps on CPU:
# 63 small shapes (llama, gemma, tied or not, f32 or bf16, 1-8 devices on every axis) within
# -13%/+14%; full-size Gemma-2-2B on 1 device and Llama-3.1-70B on 16 within 2%.
ACT_D, ACT_F = 6, 5  # [tokens, D] and [tokens, F] arrays kept per layer for the backward pass
# float32 [rows, N, T, T] attention scores kept per layer: scores, masked scores and
# probabilities on one device; a partitioned program fuses the mask away (both measured).
SCORE_COPIES = {False: 3, True: 2}  # by: is the step partitioned over several devices
TRAIN_LOGIT_COPIES = 2  # float32 [tokens, V] logits in the loss and its gradient
GATHER_COPIES = 1.75  # compute-dtype weights gathered over fsdp (kept for backward) + grads
UPDATE_COPIES = 3.5  # master-dtype temporaries of the AdamW update (updates, new moments)

# Without the tokenizer a plan cannot count prompt tokens: a GSM8K question in a chat template
# is 100-250 tokens, and each worked example (task.few_shot) adds a question and its solution.
PROMPT_TOKENS = 256
SPLIT_SIZES = {"train": 7473, "test": 1319}  # GSM8K; also the default for other sources


# --- devices and meshes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Devices:
    """Devices to plan for; also a stand-in for a `jax.sharding.Mesh` where only the axis sizes
    matter (`.shape`, what `logical_to_spec` and `cache_shards` read)."""

    kind: str  # one of DEVICE_KINDS, or the local accelerator's name
    count: int  # in all, over every host
    memory: int  # bytes per device
    mesh: tuple[int, int, int]  # (data, fsdp, tensor), product = count
    hosts: int = 1  # processes (TPU VM workers, GPU nodes), each with count / hosts devices

    @property
    def platform(self) -> str:
        return "cpu" if self.kind == "cpu" else "accelerator"

    @property
    def shape(self) -> dict[str, int]:
        return dict(zip(MESH_AXES, self.mesh, strict=True))

    def with_mesh(self, mesh: Sequence[int]) -> Devices:
        """The same kind of devices on `mesh`: one host's devices share its RAM (cpu); several
        hosts keep their devices per host, so more devices means more hosts."""
        count, per_host = math.prod(mesh), self.count // self.hosts
        if self.hosts > 1 and count % per_host == 0:
            hosts, memory = count // per_host, self.memory
        else:
            hosts = 1
            memory = self.memory * self.count // count if self.kind == "cpu" else self.memory
        return dataclasses.replace(self, count=count, memory=memory, mesh=tuple(mesh), hosts=hosts)

    def describe(self) -> str:
        where = f"{self.count} x {self.kind} ({self.memory / GiB:.1f} GiB)"
        if self.hosts > 1:
            where = f"{self.hosts} hosts x {self.count // self.hosts} = {where}"
        return f"{where}, mesh {list(self.mesh)}"


def devices_of(kind: str, count: int, mesh: Sequence[int] | None = None, hosts: int = 1) -> Devices:
    """`count` devices of a kind in DEVICE_KINDS over `hosts` hosts (cpu: each host's RAM, this
    machine's, shared between its devices), on `mesh` (default: all of them on fsdp)."""
    if kind not in DEVICE_KINDS:
        raise TptError(f"unknown device kind {kind!r}; choose one of: {', '.join(DEVICE_KINDS)}")
    if count < 1:
        raise TptError(f"--devices must be >= 1, got {count}")
    if hosts < 1 or count % hosts:
        raise TptError(f"--hosts {hosts} does not divide --devices {count} (devices in all)")
    memory = total_memory_bytes() * hosts // count if kind == "cpu" else DEVICE_MEMORY[kind]
    mesh = tuple(mesh) if mesh is not None else (1, count, 1)
    if math.prod(mesh) != count:
        raise TptError(f"mesh {list(mesh)} needs {math.prod(mesh)} devices, not {count}")
    return Devices(kind, count, memory, mesh, hosts)  # type: ignore[arg-type]


def local_devices(mesh: Sequence[int] | None = None) -> Devices | None:
    """This process's devices as JAX sees them, with their real memory limit (None: an
    accelerator that reports no memory and is not one of DEVICE_KINDS)."""
    first, count = jax.devices()[0], jax.device_count()
    if first.platform == "cpu":
        return devices_of("cpu", count, mesh, jax.process_count())
    name = first.device_kind.lower().replace(" ", "").replace("lite", "e")  # TPU v5 lite: v5e
    kind = next((k for k in DEVICE_MEMORY if k in name), name)
    limit = (first.memory_stats() or {}).get("bytes_limit") or DEVICE_MEMORY.get(kind)
    mesh = tuple(mesh) if mesh is not None else (1, count, 1)
    hosts = jax.process_count()
    return Devices(kind, count, int(limit), mesh, hosts) if limit else None  # type: ignore[arg-type]


# --- the model, without its weights ------------------------------------------------------------

SHIPPED_PRESETS = {"smollm2": "smollm2-135m", "gemma3-270m": "gemma3-270m"}


@dataclass(frozen=True)
class ModelInfo:
    config: ModelConfig
    name: str  # the preset or the path read
    assumed: str | None = None  # how the architecture was inferred, when it was


def resolve_model(path: str, preset_name: str | None = None) -> ModelInfo:
    """The architecture of `model.path` without reading weights: `preset:NAME`, a shipped name,
    a tpt_jax checkpoint, a directory with a config.json, or else the preset that the path's
    name spells (checkpoints/gemma-2-2b-it: gemma2-2b). `preset_name` overrides all of them."""
    if preset_name is not None:
        return ModelInfo(_preset(preset_name, "--preset"), preset_name, f"--preset {preset_name}")
    if path.startswith("preset:"):
        name = path.removeprefix("preset:")
        return ModelInfo(_preset(name, "model.path"), name)
    local = Path(path)
    if path in SHIPPED_PRESETS and not local.exists():
        return ModelInfo(PRESETS[SHIPPED_PRESETS[path]], SHIPPED_PRESETS[path])
    if local.is_dir() and checkpoint.is_checkpoint(local):
        try:
            return ModelInfo(ModelConfig.from_hf_config(checkpoint.checkpoint_config(local)), path)
        except (ValueError, KeyError) as e:  # CheckpointError is a TptError, a ValueError
            raise TptError(f"model.path: {e}") from None
    if (local / "config.json").is_file():
        try:
            raw = json.loads((local / "config.json").read_text(encoding="utf-8"))
            return ModelInfo(ModelConfig.from_hf_config(raw), path)
        except (ValueError, KeyError) as e:  # TptError is a ValueError
            raise TptError(f"model.path: {local / 'config.json'}: {e}") from None
    name = preset_for_name(local.name)
    if name is None:
        raise TptError(
            f"model.path: {path}: no config.json there and its name matches no preset; pass "
            f"--preset NAME (one of: {', '.join(PRESETS)})"
        )
    why = "not found" if not local.exists() else "no config.json"
    return ModelInfo(PRESETS[name], name, f"preset {name} assumed from the name {path} ({why})")


def preset_for_name(name: str) -> str | None:
    """The preset whose name, letters and digits only, appears in `name` not followed by a
    digit (Llama-3.1-70B-Instruct: llama3.1-70b; gemma-2-27b is not gemma2-2b)."""
    squash = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())  # noqa: E731
    text = squash(name)
    hits = [p for p in PRESETS if re.search(squash(p) + r"(?![0-9])", text)]
    return max(hits, key=len, default=None)


def _preset(name: str, key: str) -> ModelConfig:
    if name not in PRESETS:
        raise TptError(f"{key}: unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


# --- stages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    parts: dict[str, int]  # bytes per device by what holds them; they sum to the total
    weights: int  # of the parts, the weights: the headroom is a share of what they leave
    memory: int  # bytes per device
    details: dict[str, Any] = field(default_factory=dict)  # slots, dtypes, tokens...
    problem: str | None = None  # why the stage cannot run at all (no decode slot fits)

    @property
    def bytes_per_device(self) -> int:
        return sum(self.parts.values())

    @property
    def usable(self) -> int:
        return self.memory - int(HEADROOM * max(self.memory - self.weights, 0))

    @property
    def fits(self) -> bool:
        return self.problem is None and self.bytes_per_device <= self.usable

    def to_json(self) -> dict[str, Any]:
        sizes = {"bytes_per_device": self.bytes_per_device, "usable_bytes_per_device": self.usable}
        verdict = {"fits": self.fits, "parts": self.parts, "problem": self.problem}
        return {**sizes, **verdict, **self.details}


def sampling_dtype(run: RunConfig, devices: Devices) -> str:
    """engine.dtype, auto: bfloat16 on accelerators, the master dtype on CPU (as the engine)."""
    auto = run.model.dtype if devices.platform == "cpu" else "bfloat16"
    return auto if run.engine.dtype == "auto" else run.engine.dtype


def prompt_tokens(run: RunConfig) -> int:
    """The longest prompt assumed: think.max_prompt_tokens, else PROMPT_TOKENS per question."""
    return run.think.max_prompt_tokens or PROMPT_TOKENS * (1 + run.task.few_shot)


def problems(run: RunConfig, split: str) -> int:
    task = run.task
    size = task.train_size if split == "train" else task.test_size
    count = size or (500 if task.name == "arithmetic" else SPLIT_SIZES[split])
    if split == "train":
        count = min(count - task.few_shot, run.think.problems or count)
    return max(count, 1)


def sampling_stage(
    name: str, cfg: ModelConfig, run: RunConfig, devices: Devices, rows: int, new_tokens: int
) -> Stage:
    """THINK or EVAL: the sampling weights, and the engine's KV and workspace at the slot
    count it would choose (engine.slots, else what its budget holds), per device."""
    dtype, eng = sampling_dtype(run, devices), run.engine
    weights = weight_bytes(cfg, devices, SAMPLE_RULES, dtype)
    prompt = min(prompt_tokens(run), cfg.max_position_embeddings - 1)
    length = -(-min(cfg.max_position_embeddings, prompt + new_tokens) // 128) * 128
    per_slot = engine_bytes_per_slot(cfg, length, dtype)
    fixed = engine_fixed_bytes(cfg, eng.prefill_tokens, length, dtype)
    shards = cache_shards(devices, cfg)
    budget = engine_budget(devices.platform, devices.memory - weights, shards)
    budget = budget if eng.memory_gb is None else int(eng.memory_gb * GiB)
    cap = eng.slots or eng.max_slots or max_slots_for(devices.platform)
    ways = row_devices(devices)
    slots = engine_slots(budget, fixed, per_slot, rows, cap, ways)
    fit = (budget - fixed) // per_slot
    problem = None  # the engine's own refusals: not one slot, or not the slots asked for
    if fit < (eng.slots or ways):
        problem = (
            f"the engine's budget of {budget / shards / GiB:.2f} GiB per device holds "
            f"{max(fit, 0)} decode slots of {length} positions, not {eng.slots or ways}"
        )
    elif eng.slots and eng.slots % ways:
        problem = f"engine.slots {eng.slots} does not split over data x fsdp = {ways} devices"
    slots = max(slots, ways)
    kv = slots * length * kv_bytes_per_token(cfg, dtype)
    work = (fixed + slots * per_slot - kv) // shards
    parts = {"weights": weights, "kv_cache": kv // shards, "engine_workspace": work}
    details = {"dtype": dtype, "slots": slots, "cache_length": length, "rows": rows}
    return Stage(name, parts, weights, devices.memory, details, problem)


def train_stage(cfg: ModelConfig, run: RunConfig, devices: Devices) -> Stage:
    """TRAIN's peak on one device: the larger of a micro-step (weights, accumulator, moments,
    compute-dtype weights, activations, logits) and the apply-step (the AdamW update)."""
    # Master weights and Adam moments are float32 whatever model.dtype says (train.py).
    t, master, compute = run.train, jnp.dtype(jnp.float32), jnp.dtype(run.train.compute_dtype)
    weights = weight_bytes(cfg, devices, TRAIN_RULES, master)
    state = {"weights": weights, "gradients": weights, "optimizer": 2 * weights}  # mu and nu
    # The trainer's rows of max_len per microbatch: micro_batch rounded down to a multiple of
    # the data x fsdp devices, at least one row each (data.pack_step), split evenly over them.
    ways = row_devices(devices)
    batch = max(ways, t.micro_batch // ways * ways)
    rows = batch // ways
    tokens = rows * t.max_len
    micro = {**state, "compute_weights": _compute_weights(cfg, devices, master, compute)}
    # XLA:CPU runs bf16 arithmetic in float32 and keeps float32 activations (measured); GPUs
    # and TPUs keep them in the compute dtype. Scores and logits are float32 everywhere.
    act = 4 if devices.platform == "cpu" else compute.itemsize
    layer = (
        tokens * act * _activation_values_per_token(cfg, devices)
        + (SCORE_COPIES[math.prod(devices.mesh) > 1] + bool(cfg.attn_logit_softcap))
        * rows * split_size(cfg.num_heads, devices, "q_heads") * t.max_len**2 * 4
    )  # fmt: skip
    # With remat "full" each layer keeps only its input and one layer's activations are
    # rebuilt at a time; XLA honours that inside a scanned layer body (measured on XLA:CPU:
    # 855 -> 335 MiB of temporaries), not across unrolled layers (755 -> 707 MiB), so only
    # scan_layers + full is planned smaller. "minimal" keeps the matmul outputs: planned as none.
    if t.remat == "full" and t.scan_layers:
        micro["activations"] = cfg.num_layers * tokens * act * cfg.hidden_size + layer
    else:
        micro["activations"] = cfg.num_layers * layer
    micro["logits"] = _logit_bytes(cfg, devices, batch, t.max_len, t.loss_chunk)
    apply = {**state, "update_workspace": int(UPDATE_COPIES * weights)}
    parts = max(micro, apply, key=lambda p: sum(p.values()))
    details = {"compute_dtype": t.compute_dtype, "master_dtype": "float32"}
    details |= {"micro_batch": t.micro_batch, "max_len": t.max_len, "tokens_per_device": tokens}
    return Stage("train", parts, weights, devices.memory, details)


def _compute_weights(cfg: ModelConfig, devices: Devices, master: Any, compute: Any) -> int:
    """The weights as the forward pass sees them. Without rematerialization XLA keeps each
    layer's weights gathered over (data, fsdp) from the forward pass for the backward pass, and
    their gradients arrive whole before the reduce-scatter: GATHER_COPIES of the block weights
    split over tensor only, and the unembedding table. Unsharded: a compute-dtype copy when it
    is a cast (or bf16: the bf16 gradients before they are accumulated)."""
    data, fsdp, tensor = devices.mesh
    whole = weight_bytes(
        cfg, dataclasses.replace(devices, mesh=(1, 1, tensor)), TRAIN_RULES, compute
    )
    if data * fsdp == 1:
        return whole if compute != master or compute.itemsize == 2 else 0
    table = _table(cfg, devices) * compute.itemsize
    blocks = whole - (1 if cfg.tie_embeddings else 2) * table
    return int(GATHER_COPIES * blocks) + table


def _table(cfg: ModelConfig, devices: Devices) -> int:
    """Values of the unembedding table on one device once gathered over fsdp (an embedding
    lookup reads its own shards; the unembedding gathers the table)."""
    return split_size(cfg.vocab_size, devices, "vocab") * cfg.hidden_size


def _logit_bytes(
    cfg: ModelConfig, devices: Devices, batch: int, length: int, chunk: int | None
) -> int:
    """The loss's float32 logits, one chunk of `chunk` positions at a time (the chunked
    cross-entropy never holds more), in the loss and its gradient, and the float32 gradient of
    the unembedding table. With the table split over fsdp, GSPMD unembeds the whole batch of a
    data shard: a chunk's logits sit on every device."""
    data, fsdp, tensor = devices.mesh
    unembed = dataclasses.replace(devices, mesh=(data, 1, tensor)) if fsdp > 1 else devices
    chunk = chunk or default_chunk(cfg.vocab_size)
    positions = min(chunk, split_size(batch, unembed, "batch") * length)
    values = positions * split_size(cfg.vocab_size, devices, "vocab")
    copies = TRAIN_LOGIT_COPIES + bool(cfg.final_logit_softcap)
    return copies * values * 4 + _table(cfg, devices) * 4


def _activation_values_per_token(cfg: ModelConfig, mesh: Any) -> int:
    """Values one token keeps per layer for the backward pass: residual-stream arrays (never
    split over tensor; Gemma's post-norms add two) and MLP and head arrays (split)."""
    d = (ACT_D + 2 * cfg.post_norms) * cfg.hidden_size
    heads = 2 * (
        split_size(cfg.num_heads, mesh, "q_heads") + split_size(cfg.num_kv_heads, mesh, "kv_heads")
    )
    return d + ACT_F * split_size(cfg.intermediate_size, mesh, "mlp") + heads * cfg.head_dim


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    change: str  # what to change, in words
    overrides: dict[str, Any]  # --set keys, when the change is to the config
    devices: Devices  # the devices the changed plan fits on

    def to_json(self) -> dict[str, Any]:
        where = {"devices": self.devices.count, "mesh": list(self.devices.mesh)}
        return {"change": self.change, "set": self.overrides, **where}


@dataclass(frozen=True)
class Plan:
    model: ModelInfo
    devices: Devices
    stages: dict[str, Stage]
    prompt_tokens: int
    suggestion: Suggestion | None = None
    notes: tuple[str, ...] = ()  # what was assumed (the mesh, when the config's does not apply)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages.values())

    def to_json(self) -> dict[str, Any]:
        d, m = self.devices, self.model
        model = {"name": m.name, "assumed": m.assumed, "params": param_count(m.config)}
        devices = {"device_kind": d.kind, "devices": d.count, "hosts": d.hosts}
        devices["mesh"] = list(d.mesh)
        return {
            "fits": self.fits, "model": model, **devices, "memory_per_device": d.memory,
            "headroom": HEADROOM, "assumed_prompt_tokens": self.prompt_tokens,
            "stages": {name: s.to_json() for name, s in self.stages.items()},
            "suggestion": self.suggestion.to_json() if self.suggestion else None,
            "notes": list(self.notes),
        }  # fmt: skip


def run_stages(run: RunConfig) -> tuple[str, ...]:
    """What `run` executes: EVAL; with rounds, TRAIN and THINK (unless it copies traces)."""
    think = run.rounds > 0 and not run.think.traces_from
    return ("think",) * think + ("eval",) + ("train",) * (run.rounds > 0)


def estimate(run: RunConfig, cfg: ModelConfig, devices: Devices) -> dict[str, Stage]:
    """Every stage's bytes per device for `run` on `devices` (THINK and EVAL on engine.mesh
    when it is set and covers the same devices)."""
    think, test = problems(run, "train") * run.think.n, problems(run, "test") * run.eval.n
    sample = devices
    if run.engine.mesh and math.prod(run.engine.mesh) == devices.count:
        sample = dataclasses.replace(devices, mesh=tuple(run.engine.mesh))
    return {
        "think": sampling_stage("think", cfg, run, sample, think, run.think.max_new_tokens),
        "eval": sampling_stage("eval", cfg, run, sample, test, run.eval.max_new_tokens),
        "train": train_stage(cfg, run, devices),
    }


def make_plan(
    run: RunConfig,
    model: ModelInfo,
    devices: Devices,
    stages: Sequence[str] | None = None,
    notes: Sequence[str] = (),
) -> Plan:
    """The estimate of `stages` (default: those the run executes) and, when one does not fit,
    the first change that makes them all fit, confirmed by estimating again with it."""
    found = estimate(run, model.config, devices)
    wanted = {k: found[k] for k in stages or run_stages(run)}
    plan = Plan(model, devices, wanted, prompt_tokens(run), None, tuple(notes))
    if plan.fits:
        return plan
    for change, overrides, new_run, new_devices in _changes(run, devices, wanted):
        trial = estimate(new_run, model.config, new_devices)
        if all(trial[k].fits for k in wanted):
            return dataclasses.replace(plan, suggestion=Suggestion(change, overrides, new_devices))
    return plan


def _changes(
    run: RunConfig, devices: Devices, stages: Mapping[str, Stage]
) -> Iterator[tuple[str, dict[str, Any], RunConfig, Devices]]:
    """Candidate changes, smallest first: fewer engine slots, bf16 sampling, smaller train
    micro-batches, more devices on fsdp, a tensor split of the mesh (same devices, then more)."""
    sampling = [s for name, s in stages.items() if name != "train" and not s.fits]
    slots = min((s.details["slots"] for s in sampling), default=1) // 2
    while slots >= 1:
        yield _set(run, devices, f"engine.slots: {slots}", "engine", slots=slots)
        slots //= 2
    if sampling and sampling_dtype(run, devices) == "float32":
        yield _set(run, devices, "engine.dtype: bfloat16", "engine", dtype="bfloat16")
    micro = run.train.micro_batch // 2
    while "train" in stages and not stages["train"].fits and micro >= 1:
        yield _set(run, devices, f"train.micro_batch: {micro}", "train", micro_batch=micro)
        micro //= 2
    # Meshes: fsdp doubled, or the devices (as many or doubled) split further over tensor;
    # fewest devices first, then the least tensor splitting (its all-reduces cost most).
    data, fsdp, tensor = devices.mesh
    meshes = {(data, fsdp * scale, tensor) for scale in _doublings(devices.count)}
    for scale in (1, *_doublings(devices.count)):
        count = devices.count * scale
        for split in _doublings(1, limit=count // data):
            if split > tensor and (count // data) % split == 0:
                meshes.add((data, count // data // split, split))
    for mesh in sorted(meshes, key=lambda m: (math.prod(m), m[2])):
        yield _mesh_change(run, devices, mesh)


def _doublings(start: int, limit: int = MAX_DEVICES) -> list[int]:
    return [2**i for i in range(1, 32) if start * 2**i <= limit]  # factors 2, 4, ... of start


def _set(run: RunConfig, devices: Devices, change: str, section: str, **values: Any):
    new = dataclasses.replace(getattr(run, section), **values)
    overrides = {f"{section}.{k}": v for k, v in values.items()}
    return change, overrides, dataclasses.replace(run, **{section: new}), devices


def _mesh_change(run: RunConfig, devices: Devices, mesh: tuple[int, int, int]):
    new, spec = devices.with_mesh(mesh), dataclasses.replace(run.model, mesh=mesh)
    more = f"{new.count} devices" if new.count != devices.count else "the same devices"
    change, key = f"{more} with model.mesh {list(mesh)}", {"model.mesh": list(mesh)}
    return change, key, dataclasses.replace(run, model=spec), new


def shortfall(stage: Stage) -> str:
    """Why a stage does not fit: its bytes against what is usable, and the engine's refusal."""
    need = f"needs {stage.bytes_per_device / GiB:.1f} GiB per device, {stage.usable / GiB:.1f}"
    need += f" GiB usable of {stage.memory / GiB:.1f} GiB"
    return f"{need} ({stage.problem})" if stage.problem else need


def refusal(plan: Plan) -> str | None:
    """One line naming the first stage that does not fit, its bytes and the way out."""
    stage = next((s for s in plan.stages.values() if not s.fits), None)
    if stage is None:
        return None
    fix = plan.suggestion and f"it would fit with {plan.suggestion.change}"
    return (
        f"{stage.name} on {plan.devices.describe()}: {shortfall(stage)}; "
        f"{fix or 'no single change makes it fit'} (tpt plan CONFIG shows the breakdown)"
    )


def check_local(run: RunConfig, stages: Sequence[str]) -> None:
    """A TptError if `tpt plan` says these stages cannot fit this process's devices (silent when
    only the weights could tell the architecture: loading them reports that model's problems)."""
    try:
        model = resolve_model(run.model.path)
    except TptError:
        return
    devices = local_devices(run.model.mesh)
    message = stages and devices and refusal(make_plan(run, model, devices, stages))
    if message:
        raise TptError(message)
