"""Run configs: frozen dataclasses loaded strictly from short YAML files.

Every key has a default (the recipe in RECIPE.md), so a config names only what it changes.
Loading is strict: an unknown key is an error that suggests the nearest valid one, a value of
the wrong type or out of range is an error naming its key, and `--set train.lr=1e-5` overrides
any key from the command line. Pure Python (layer 0).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpt_jax.errors import TptError

__all__ = [
    "EngineConfig",
    "EvalConfig",
    "ModelSpec",
    "PruneConfig",
    "RunConfig",
    "TaskConfig",
    "ThinkConfig",
    "TrainConfig",
    "config_hash",
    "from_dict",
    "load_config",
    "to_dict",
]


class ConfigError(TptError):
    """A bad run config: the message names the file and key."""


_ENGINE = "the engine keeps engine.slots decode slots full, sized from the memory budget; delete it"
REMOVED = {"think.batch_size": _ENGINE, "eval.batch_size": _ENGINE}  # key: what to do instead


@dataclass(frozen=True)
class ModelSpec:
    # A shipped name (smollm2, gemma3-270m), a HF directory, a .gguf file, a tpt_jax checkpoint,
    # a Hugging Face Hub id `org/name` (pinned: `org/name@REVISION`, a branch, tag or commit;
    # from the HF cache, else downloaded unless HF_HUB_OFFLINE=1; a local path of the same
    # spelling wins), or `preset:NAME` for a randomly initialised preset (tests and smoke runs).
    path: str = "smollm2"
    dtype: str = "float32"  # master weights; train.compute_dtype is the matmul dtype
    mesh: tuple[int, ...] | None = None  # (data, fsdp, tensor); None: all devices on fsdp
    # Multi-slice TPU or multi-node: how many slices (else processes) each mesh axis spans, e.g.
    # [2, 1, 1] puts data across 2 slices over DCN and fsdp, tensor inside each (None: one).
    dcn_mesh: tuple[int, ...] | None = None
    tokenizer: str | None = None  # tokenizer directory for `preset:` models

    def check(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        _check_mesh("model", self.mesh, self.dcn_mesh)


@dataclass(frozen=True)
class TaskConfig:
    # arithmetic (built in, offline), gsm8k, code (tpt_jax/tasks/code.py), math
    # (tpt_jax/tasks/math.py), or plugin (a user's: task.plugin)
    name: str = "arithmetic"
    # gsm8k: hf[:REPO], tfds:NAME[:CONFIG] (prepared, in TFDS_DATA_DIR), a directory, or a
    # .jsonl / .parquet file
    source: str = "hf:openai/gsm8k"
    levels: tuple[int, ...] = (1, 2)  # arithmetic: reasoning steps per problem
    max_value: int = 999  # arithmetic: bound on every number shown or computed (10 to 999)
    train_size: int | None = None  # arithmetic: problems generated; gsm8k: first N (None = all)
    test_size: int | None = None  # evaluation problems (None = the whole test split)
    prompt: str = "chat"  # chat (the model's chat template) or plain (base models)
    # The text before each question (None: tasks.INSTRUCTION, the recipe's). Inline text, or
    # `file:PATH` (relative to the config file that names it), read when the config loads: the
    # run's config.json holds the text itself.
    instruction: str | None = None
    few_shot: int = 0  # worked train examples before the question (earlier turns in chat)
    on_bad_line: str = "fail"  # fail or skip (skipped lines are counted)
    on_long_prompt: str = "skip"  # a prompt with no room in the context: skip (counted) or fail
    # plugin: a .py file (relative to the config file that names it) or a module name defining
    # problems(split, options) and verify(text, problem); see tpt_jax/tasks/plugin.py.
    plugin: str | None = None
    options: dict[str, Any] | None = None  # plugin, code, math: passed to problems() as it is

    def check(self) -> None:
        _choice("task.name", self.name, ("arithmetic", "gsm8k", "code", "math", "plugin"))
        if (self.name == "plugin") != (self.plugin is not None):
            raise ConfigError("task.plugin is set exactly when task.name is plugin")
        if self.options is not None and self.name not in ("plugin", "code", "math"):
            raise ConfigError("task.options is for task.name: plugin, code or math only")
        _choice("task.prompt", self.prompt, ("chat", "plain"))
        _choice("task.on_bad_line", self.on_bad_line, ("fail", "skip"))
        _choice("task.on_long_prompt", self.on_long_prompt, ("skip", "fail"))
        _at_least("task.few_shot", self.few_shot, 0)
        if self.instruction is not None and not self.instruction.strip():
            raise ConfigError("task.instruction is empty; leave it unset for the built-in one")
        for key in ("train_size", "test_size"):
            if getattr(self, key) is not None:
                _at_least(f"task.{key}", getattr(self, key), 1)
        if not 10 <= self.max_value <= 999:
            raise ConfigError(f"task.max_value must be in [10, 999], got {self.max_value}")
        if self.name == "arithmetic":
            if self.train_size is None:
                raise ConfigError("task.train_size is required for the arithmetic task")
            if not self.levels or min(self.levels) < 1:
                raise ConfigError(
                    f"task.levels must be a list of step counts >= 1, got {self.levels}"
                )


@dataclass(frozen=True)
class ThinkConfig:
    n: int = 8  # samples per problem
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1500
    problems: int | None = None  # first N train problems per round (None = all)
    traces_from: str | None = None  # another run's directory: use its traces (cross-model)
    max_prompt_tokens: int | None = None  # longer prompts are skipped and counted

    def check(self) -> None:
        _at_least("think.n", self.n, 1)
        _at_least("think.max_new_tokens", self.max_new_tokens, 1)
        _at_least("think.temperature", self.temperature, 0.0)
        _at_least("think.top_k", self.top_k, 0)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"think.top_p must be in (0, 1], got {self.top_p}")
        if self.problems is not None:
            _at_least("think.problems", self.problems, 1)


@dataclass(frozen=True)
class PruneConfig:
    strategy: str = "correct"  # correct (TPT) or none (train on every sample: the ablation)
    grading: str = "strict"  # strict (the paper), normalized or lenient
    max_per_problem: int = 1  # correct traces kept per problem, the first in sample order
    dedupe: bool = True  # drop exact duplicate traces of a problem
    max_tokens: int | None = None  # drop traces longer than this (None = no cap)
    train_budget: int = 2000  # D: training examples per round
    val_budget: int = 200  # V: up to this many more examples for validation loss
    # No problem left over for validation (D took every candidate) while train.select needs it:
    # fail (the default; THINK's traces are kept) or warn (recorded; TRAIN keeps the last step)
    on_empty_val: str = "fail"

    def check(self) -> None:
        _choice("prune.strategy", self.strategy, ("correct", "none"))
        _choice("prune.grading", self.grading, ("strict", "normalized", "lenient"))
        _choice("prune.on_empty_val", self.on_empty_val, ("fail", "warn"))
        _at_least("prune.max_per_problem", self.max_per_problem, 1)
        _at_least("prune.train_budget", self.train_budget, 1)
        _at_least("prune.val_budget", self.val_budget, 0)
        if self.max_tokens is not None:
            _at_least("prune.max_tokens", self.max_tokens, 1)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-6
    warmup_ratio: float = 0.1  # linear warmup over this fraction of steps, then cosine to 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip: float = 1.0  # global gradient-norm clip (0 = off)
    global_batch: int = 8  # examples per optimizer step
    micro_batch: int = 8  # packed rows per forward/backward; steps accumulate gradients
    epochs: int = 1
    max_len: int = 1600  # tokens per row; longer examples are dropped and counted
    pack: bool = True  # pack several examples per row (segment ids keep them apart)
    # Row lengths are multiples of this (or max_len), chosen per step for the least padding:
    # smaller = less padding, more compiled shapes (GSM8K at the recipe: 128 -> 8% pad,
    # 10 shapes; 256 -> 13%, 7; 512 -> 16%, 5).
    length_step: int = 128
    compute_dtype: str = "bfloat16"  # matmuls; master weights and Adam moments are float32
    # Rematerialization per layer: none, minimal (keep matmul outputs, recompute the rest),
    # full (keep each layer's input only). Memory for compute; the same function.
    remat: str = "none"
    scan_layers: bool = False  # one compiled layer body (lax.scan): compile time flat in depth
    # Completion tokens per chunk of vocabulary-sized logits in the loss (None: as many as
    # 1 GiB of float32 logits hold; losses.default_chunk).
    loss_chunk: int | None = None
    eval_every: int = 50  # steps between validation losses (and resumable train states)
    # best_val: lowest validation loss after step 0 (the authors' trainer never picks the
    # untrained model); best_val_or_start: step 0 too (a harmful round returns its input); last
    select: str = "best_val"
    init: str = "previous"  # previous round's model (TPT) or base (STaR / ReST-EM style)
    chat_format: bool = True  # False reproduces the authors' quirk: plain text, no end token
    on_nan: str = "stop"  # NaN/Inf loss or gradients: stop (last good state kept) or skip step

    def check(self) -> None:
        _at_least("train.lr", self.lr, 0.0)
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        _at_least("train.weight_decay", self.weight_decay, 0.0)
        _at_least("train.clip", self.clip, 0.0)
        for key in (
            "global_batch",
            "micro_batch",
            "epochs",
            "eval_every",
            "length_step",
        ):
            _at_least(f"train.{key}", getattr(self, key), 1)
        _at_least("train.max_len", self.max_len, 2)
        _choice("train.compute_dtype", self.compute_dtype, ("float32", "bfloat16"))
        _choice("train.remat", self.remat, ("none", "minimal", "full"))
        if self.loss_chunk is not None:
            _at_least("train.loss_chunk", self.loss_chunk, 1)
        _choice("train.select", self.select, ("best_val", "best_val_or_start", "last"))
        _choice("train.init", self.init, ("previous", "base"))
        _choice("train.on_nan", self.on_nan, ("stop", "skip"))


@dataclass(frozen=True)
class EvalConfig:
    n: int = 20  # samples per problem
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 1500
    k: tuple[int, ...] | None = None  # Pass@k for each k (None: those of 1, 5, 10, 20 <= n)
    greedy: bool = True  # also one greedy answer per problem
    grading: str = "strict"

    @property
    def ks(self) -> tuple[int, ...]:
        """The k of each Pass@k reported."""
        return tuple(k for k in (1, 5, 10, 20) if k <= self.n) if self.k is None else self.k

    def check(self) -> None:
        _at_least("eval.n", self.n, 1)
        _at_least("eval.max_new_tokens", self.max_new_tokens, 1)
        _at_least("eval.temperature", self.temperature, 0.0)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"eval.top_p must be in (0, 1], got {self.top_p}")
        _choice("eval.grading", self.grading, ("strict", "normalized", "lenient"))
        if self.k is None:
            return
        if not self.k or min(self.k) < 1:
            raise ConfigError(f"eval.k must list values >= 1, got {list(self.k)}")
        if max(self.k) > self.n:  # Pass@k needs k of the n samples
            above = [k for k in self.k if k > self.n]
            raise ConfigError(f"eval.k {above} above eval.n {self.n}: Pass@k needs k <= n")


@dataclass(frozen=True)
class EngineConfig:
    """Generation for THINK and EVAL: every request goes to one engine whose decode slots are
    sized from a memory budget (`tpt plan` shows the numbers)."""

    dtype: str = "auto"  # weights and KV while sampling: auto = bfloat16 on GPU/TPU, else model
    slots: int | None = None  # decode slots (None: what the memory budget holds, capped)
    max_slots: int | None = None  # the cap when slots is None (None: 64 on CPU, 512 otherwise)
    memory_gb: float | None = None  # KV + workspace (None: 90% of free device memory; CPU: RAM/4)
    decode_steps: int = 16  # decode steps per device call between refills of finished slots
    prefill_tokens: int = 8192  # padded prompt tokens per prefill call
    # THINK and EVAL's (data, fsdp, tensor) over the same devices as model.mesh (None: that
    # one). Sampling holds no optimizer state: weights whole along fsdp, split over tensor.
    mesh: tuple[int, ...] | None = None
    dcn_mesh: tuple[int, ...] | None = None  # as model.dcn_mesh (None: model.dcn_mesh)

    def check(self) -> None:
        _choice("engine.dtype", self.dtype, ("auto", "float32", "bfloat16"))
        _check_mesh("engine", self.mesh, self.dcn_mesh)
        for key in ("slots", "max_slots"):
            if getattr(self, key) is not None:
                _at_least(f"engine.{key}", getattr(self, key), 1)
        if self.memory_gb is not None and not self.memory_gb > 0:
            raise ConfigError(f"engine.memory_gb must be > 0, got {self.memory_gb}")
        _at_least("engine.decode_steps", self.decode_steps, 1)
        _at_least("engine.prefill_tokens", self.prefill_tokens, 16)


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    rounds: int = 1
    export: str = "none"  # none, best or final: write that round's model as a HF directory
    # PRUNE kept nothing: stop (the run ends, exit code 0, with the reason) or carry (the next
    # round uses the same model; its eval equals the previous round's)
    on_empty_round: str = "stop"
    # Where numbers go besides metrics.jsonl: tensorboard (RUN_DIR/tb, needs tensorboardX)
    # and/or wandb (Weights & Biases: its usual WANDB_* variables apply, WANDB_MODE=offline
    # included). Neither changes a result, so a resumed run may change them.
    report_to: tuple[str, ...] = ("tensorboard",)
    wandb_project: str | None = None  # None: WANDB_PROJECT, else "tpt_jax"
    model: ModelSpec = field(default_factory=ModelSpec)
    task: TaskConfig = field(default_factory=TaskConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def check(self) -> None:
        _at_least("rounds", self.rounds, 0)
        _choice("export", self.export, ("none", "best", "final"))
        _choice("on_empty_round", self.on_empty_round, ("stop", "carry"))
        for tracker in self.report_to:
            _choice("report_to", tracker, ("tensorboard", "wandb"))
        sections = (self.model, self.task, self.think, self.prune, self.train, self.eval)
        for section in (*sections, self.engine):
            section.check()


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """A RunConfig from a YAML file (None: all defaults) and `key.sub=value` overrides."""
    import yaml

    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = _read_yaml(Path(path), ())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-5")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if key.strip() == "task.instruction":  # text, not YAML: " #" would start a comment
            parsed = _read_instruction(value, Path.cwd(), f"--set {item}")
        _set_dotted(raw, key.strip().split("."), parsed, f"--set {item}")
    config = _build(RunConfig, raw, "", where)
    try:
        config.check()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return config


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """One config file as a dict; a `base: other.yaml` key (relative to this file) is loaded
    first and this file's keys are merged over it, so ablations are a few lines each."""
    import yaml

    if path.resolve() in chain:
        raise ConfigError(f"{path}: `base` chain loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    try:
        raw = yaml.load(text, Loader=_strict_loader()) or {}
    except _DuplicateKey as e:
        raise ConfigError(
            f"{path}:{e.line}: duplicate key {e.key} (the later one would win)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(raw).__name__}")
    task = raw.get("task")
    if isinstance(task, dict) and isinstance(task.get("instruction"), str):
        task["instruction"] = _read_instruction(task["instruction"], path.parent, str(path))
    if isinstance(task, dict) and isinstance(task.get("plugin"), str):
        plugin = task["plugin"]  # a file relative to this config; a module name as it is
        if plugin.endswith(".py") or "/" in plugin:
            task["plugin"] = str((path.parent / plugin).resolve())
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name, got {base!r}")
    merged = _read_yaml(path.parent / base, (*chain, path.resolve()))
    _merge(merged, raw)
    return merged


def _read_instruction(value: str, folder: Path, where: str) -> str:
    """`file:PATH` (relative to `folder`) as the file's text; any other string as it is."""
    if not value.startswith("file:"):
        return value
    path = folder / value.removeprefix("file:").strip()
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise ConfigError(f"{where}: task.instruction: cannot read {path} ({reason})") from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int):
        self.key, self.line = key, line


@functools.cache
def _strict_loader() -> type:
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last one silently, so a second `task:` section would drop the first)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may repeat keys
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def from_dict(raw: dict[str, Any], where: str) -> RunConfig:
    """A RunConfig from a dict such as a run's saved `config.json` (missing keys: defaults)."""
    return _build(RunConfig, raw, "", where)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (tuples as lists), as written to a run's `config.yaml`."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_hash(config: RunConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode()).hexdigest()[:16]


def _set_dotted(raw: dict[str, Any], keys: list[str], value: Any, where: str) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if f"{prefix}{key}" in REMOVED:
            raise ConfigError(f"{where}: {prefix}{key} was removed: {REMOVED[prefix + key]}")
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else ""
            raise ConfigError(f"{where}: unknown key {prefix}{key}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            values[key] = _build(hint_type, value, f"{prefix}{key}.", where)
        else:
            values[key] = _coerce(value, hint_type, f"{prefix}{key}", where)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """`value` as type `hint` (int, float, str, bool, tuple[int, ...] and `X | None`)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        try:  # stored in the run's config.json and hashed: JSON values only
            return json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must hold JSON values, got {value!r}") from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(v, args[0], key, where) for v in value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-6` (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{where}: {key} must be {hint.__name__}, got {value!r}")
    if hint is float and not math.isfinite(value):  # YAML's .nan / .inf would pass every `>=`
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value) if hint is float else value


def _check_mesh(section: str, mesh: tuple[int, ...] | None, dcn: tuple[int, ...] | None) -> None:
    for key, shape in (("mesh", mesh), ("dcn_mesh", dcn)):
        if shape is not None and (len(shape) != 3 or min(shape) < 1):
            raise ConfigError(f"{section}.{key} must be three positive sizes, got {list(shape)}")
    if dcn is not None and mesh is None:
        raise ConfigError(f"{section}.dcn_mesh needs {section}.mesh (the whole mesh's sizes)")
    if dcn is not None and any(n % d for n, d in zip(mesh, dcn, strict=True)):
        raise ConfigError(
            f"{section}.dcn_mesh {list(dcn)} must divide {section}.mesh {list(mesh)} axis by axis"
        )


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")
