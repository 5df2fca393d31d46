"""What each stage of a run depends on, so that nothing stale survives a resume or `--force`.

Pure Python (layer 0). Every stage directory of a run holds `INPUTS.json`, written when the
stage starts: the config keys, data hashes and upstream stages its output depends on. A stage is
*valid* when that record equals what the current config and data give; the run directory keeps
only valid stages (see `Run.preflight`).

Dependencies (a model is the base spec for round 0, else the TRAIN that made it):

    think r   model r-1, task, think, engine.dtype, seed, train data
    prune r   think r, prune, train.select, seed, train data
    train r   prune r, the model it starts from (r-1, or 0 with train.init: base), train
              (without on_nan, a policy for bad steps, and init, which only picks the start
              model), model.dtype, seed
    eval r    model r, task, eval, engine.dtype, seed, test and train data (few-shot examples)

Left out on purpose: the meshes (model.mesh, engine.mesh, their dcn_mesh) and the engine's
slot and chunk settings (sampled tokens do not depend on them), rounds, export and
on_empty_round (they change what runs, not what a stage makes). Each upstream stage enters as
its own fingerprint, so a change anywhere reaches every stage after it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tpt_jax.config import RunConfig, to_dict

__all__ = ["fingerprint", "first_difference", "stage_inputs"]


def fingerprint(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def stage_inputs(config: RunConfig, stage: str, r: int, data: dict[str, str]) -> dict[str, Any]:
    """The inputs of `stage` of round `r` (a JSON-able dict); `data` maps each split ("train",
    "test") to a hash of its problems."""
    c = to_dict(config)
    # Keys added after runs existed enter only when set, so those runs stay resumable.
    c["task"] = {
        k: v for k, v in c["task"].items() if v is not None or k not in ("plugin", "options")
    }
    sampling = {"task": c["task"], "engine.dtype": c["engine"]["dtype"], "seed": c["seed"]}
    if stage == "think":
        return {"model": _model(config, r - 1, data), "think": c["think"], **sampling,
                "train data": data["train"]}  # fmt: skip
    if stage == "prune":
        return {"think": fingerprint(stage_inputs(config, "think", r, data)), "prune": c["prune"],
                "train.select": c["train"]["select"], "seed": c["seed"],
                "train data": data["train"]}  # fmt: skip
    if stage == "train":
        start = 0 if config.train.init == "base" else r - 1
        train = {k: v for k, v in c["train"].items() if k not in ("on_nan", "init")}
        return {"prune": fingerprint(stage_inputs(config, "prune", r, data)),
                "start model": _model(config, start, data), "train": train,
                "model.dtype": c["model"]["dtype"], "seed": c["seed"]}  # fmt: skip
    if stage == "eval":
        return {"model": _model(config, r, data), "eval": c["eval"], **sampling,
                "test data": data["test"], "train data": data["train"]}  # fmt: skip
    raise ValueError(f"unknown stage {stage!r}")


def _model(config: RunConfig, r: int, data: dict[str, str]) -> str:
    """A fingerprint of round r's model: the base model's spec, or the TRAIN that made it."""
    if r == 0:
        spec = {k: v for k, v in to_dict(config)["model"].items() if "mesh" not in k}
        return fingerprint({"base": spec, "seed": config.seed})  # a preset is drawn from the seed
    return fingerprint(stage_inputs(config, "train", r, data))


def first_difference(then: Any, now: Any, prefix: str = "") -> str:
    """The first dotted key where two nested dicts differ: `"think.temperature: 0.8 then, 1.0
    now"`."""
    if isinstance(then, dict) and isinstance(now, dict):
        for key in sorted(set(then) | set(now)):
            if then.get(key) != now.get(key):
                return first_difference(then.get(key), now.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {then!r} then, {now!r} now"
