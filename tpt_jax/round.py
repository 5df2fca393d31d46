"""Rounds and runs: base evaluation, then R rounds of think → prune → train → eval, resumable.

Run directory layout (everything a user looks for, nothing hidden):

    config.yaml                 the resolved config; a different config is refused unless forced
    metrics.jsonl, tb/          every number, as JSONL and TensorBoard events
    round_0/eval/               the base model's evaluation (samples, greedy answers, summary)
    round_R/think/traces.jsonl  THINK: sampled solutions to train problems
    round_R/prune/              PRUNE: selected.jsonl (train + val examples), stats.json
    round_R/train/              TRAIN: resume state and best-validation copy (deleted when done)
    round_R/model/              the round's model (a tpt_jax checkpoint)
    round_R/eval/               EVAL of the round's model
    round_R/manifest.json       written last: a round without it is not finished
    export/                     the best or final round as a Hugging Face directory (on request)

Each stage ends by writing `DONE.json` atomically; a stage with that file is never redone, so a
killed run continues from the last finished stage, and rerunning a finished run changes
nothing. Sampling keys depend only on (seed, round, problem, sample) and training resumes from
its saved step, so a resumed run reaches the same numbers as an uninterrupted one.

Before any sampling, `preflight` reads both data splits, checks `prune.train_budget` against
what the THINK problems can give, loads the base model and encodes every THINK prompt (chat
template, `think.max_prompt_tokens`, `train.max_len`): a mistake is one line before any work.
Faults: a round whose PRUNE keeps no training example either stops the run (`on_empty_round:
stop`: `tpt run` exits 0 after the table of finished rounds with a last line `run stopped: ...`;
the round gets no manifest, so rerunning stops there again and `carry` would go on) or carries
the previous model forward (`carry`: its train/DONE.json says `carried`, and its model and
evaluation are the previous round's). One process at a time per run directory: an flock that
the kernel drops when the process dies, `kill -9` included (on `gs://`, a lease object that a
relaunch takes over: `storage.RunLock`). The run directory may be local, a shared mount or a
`gs://` prefix (`storage`: every file goes through pathlib's API, atomic writes and appends
through its helpers). Manifests record the data read
(`data`: problems used, bad lines skipped, each file's sha256 or the generator's settings).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from tpt_jax import checkpoint, faults, plan, storage
from tpt_jax.api import ModelHandle, load, reshard
from tpt_jax.config import RunConfig, config_hash, from_dict, load_config, to_dict
from tpt_jax.data import encode_example
from tpt_jax.distributed import barrier, is_primary
from tpt_jax.engine import EngineOptions, SamplingParams
from tpt_jax.errors import TptError, require
from tpt_jax.evaluate import evaluate
from tpt_jax.metrics import MetricsWriter, Progress
from tpt_jax.models.config import preset
from tpt_jax.models.transformer import init_model
from tpt_jax.prune import prune
from tpt_jax.sharding import SAMPLE_RULES, TRAIN_RULES, make_mesh
from tpt_jax.stages import first_difference, stage_inputs
from tpt_jax.storage import read_json
from tpt_jax.tasks import INSTRUCTION, Problem
from tpt_jax.tasks.plugin import BUILT_IN, load_plugin
from tpt_jax.think import (
    EncodedPrompts,
    encode_prompts,
    prompt_for,
    read_traces,
    sample_to_file,
    write_records,
)
from tpt_jax.tokenizer import Tokenizer
from tpt_jax.train import train

STAGES = ("think", "prune", "train", "eval")
SCRATCH = ("state", "best")  # TRAIN's resume files, deleted once its DONE.json is written


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON atomically: a reader sees the old file or the new one, never half.
    Process 0 alone writes (every process of a multi-process run computes the same `obj`)."""
    if is_primary():
        storage.write_json(path, obj)


class Run:
    """One TPT run: a run directory and the config that owns it (what `tpt run` drives).

    `config` is a YAML path (with `overrides`, `--set`'s `key=value` strings), a mapping of the
    same keys, or a `RunConfig`; `run_dir` defaults to `runs/<config file's stem>`. `force`
    accepts a changed config or data (the stages the change reaches are discarded); `reuse`
    names other run directories whose finished stages with equal inputs are copied.

        run = tpt_jax.Run("configs/demo.yaml", "runs/demo")
        run.run()                      # base EVAL, then every round (resumes where it stopped)
        run.report()                   # one row per finished round (Pass@1, CI, change, ...)
        run.model(1).generate([...])   # round 1's model, ready to sample
    """

    def __init__(
        self,
        config: RunConfig | str | Path | Mapping[str, Any],
        run_dir: str | Path | None = None,
        *,
        overrides: Sequence[str] = (),
        force: bool = False,
        reuse: Sequence[str | Path] = (),
    ):
        if isinstance(config, str | Path):
            run_dir = run_dir if run_dir is not None else Path("runs") / Path(config).stem
            config = load_config(config, overrides)
        elif overrides:
            raise TptError("Run: overrides apply to a config file; edit the mapping instead")
        elif isinstance(config, Mapping):
            config = from_dict(dict(config), "Run(config=...)")
        if not isinstance(config, RunConfig):
            raise TptError(f"Run: config must be a path, a mapping or a RunConfig, not {config!r}")
        if run_dir is None:
            raise TptError("Run: give run_dir (only a config file gives a default)")
        self.config = config
        _check_mesh(config.model.mesh)
        _check_mesh(config.engine.mesh, "engine.mesh")
        self.dir = storage.run_path(run_dir)  # a local directory or a gs:// prefix
        self.dir.mkdir(parents=True, exist_ok=True)
        # process 0 holds it for all
        self._lock = storage.RunLock(self.dir) if is_primary() else None
        self.force = force
        # other runs whose finished stages may be ours
        self.reuse = tuple(storage.run_path(d) for d in reuse)
        self._claim_config(force)
        # One clock per run for chat templates that print today's date (Llama 3.x): prompts, and
        # so sampling keys and TRAIN's fingerprint, stay the same on every day the run resumes.
        self.template_time = _run_started(self.dir)
        self.mesh = make_mesh(config.model.mesh, dcn=config.model.dcn_mesh)  # TRAIN's
        self.sample_mesh = self.mesh
        if config.engine.mesh:
            dcn = config.engine.dcn_mesh or config.model.dcn_mesh
            self.sample_mesh = make_mesh(config.engine.mesh, dcn=dcn)
        # TRAIN's result, kept on device until THINK or EVAL reshards it into their layout
        # (no reload from disk): (checkpoint path, model, tokenizer).
        self._trained: tuple[str, Any, Any] | None = None
        self._handle: tuple[str, ModelHandle] | None = None
        self._problems: dict[str, list[Problem]] | None = None
        self._data: dict[str, Any] = {}  # the manifest's `data`: skipped lines, files read
        # The task's plug-in (a module of tpt_jax.tasks, or the user's task.plugin), imported
        # and checked before any work.
        task = config.task
        self.plugin = load_plugin(BUILT_IN.get(task.name) or task.plugin or "")
        if "wandb" in config.report_to:  # installed? (before any work, not at the first number)
            require("wandb", "wandb", "report_to: wandb")
        if "tensorboard" in config.report_to and importlib.util.find_spec("tensorboardX") is None:
            _say(  # the default tracker: a note, not an error (metrics.jsonl has every number)
                "note: no TensorBoard events (tensorboardX is not installed: pip install "
                "'tpt-jax[tb]'); metrics.jsonl has every number"
            )
        modes = self.plugin.grading_modes
        for key, mode in (
            ("prune.grading", config.prune.grading),
            ("eval.grading", config.eval.grading),
        ):
            if modes and mode not in modes:
                raise TptError(f"{key}: {mode!r} is not a grading mode of the task ({modes})")
        instruction = task.instruction or self.plugin.instruction
        self.task = dataclasses.replace(task, instruction=instruction)  # prompts use it

    @functools.cached_property
    def metrics(self) -> MetricsWriter:  # opened on first use: a run that fails checks has none
        trackers = self.config.report_to
        tb = self.dir / "tb" if "tensorboard" in trackers else None
        wandb = None
        if "wandb" in trackers:  # one W&B run per run directory, resumed with it
            id_file = self.dir / "wandb_id"
            name = self.dir.name if storage.is_remote(self.dir) else self.dir.resolve().name
            if not id_file.exists() and is_primary():
                id_file.write_text(f"{name}-{os.urandom(4).hex()}\n")
            wandb = {
                "project": self.config.wandb_project or os.environ.get("WANDB_PROJECT", "tpt_jax"),
                "name": name,
                "id": id_file.read_text().strip() if id_file.exists() else None,
                "resume": "allow",
                # W&B keeps its files on a local disk (a gs:// run: its working directory's)
                "dir": "." if storage.is_remote(self.dir) else str(self.dir),
                "config": to_dict(self.config),
            }
        return MetricsWriter(self.dir / "metrics.jsonl", tb, enabled=is_primary(), wandb=wandb)

    # --- the whole run ---------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Checks (`preflight`), the base evaluation and every round, then the export; returns
        the round manifests (a round that stopped the run, `on_empty_round: stop`, is last,
        with `stopped: true` and no eval). Finished stages are not redone."""
        self.preflight()
        manifests = [self.round(0)]
        for r in range(1, self.config.rounds + 1):
            manifest = self.round(r)
            manifests.append(manifest)
            if manifest.get("stopped"):
                break
        self.export(manifests)
        self._close_metrics()
        return manifests

    def close(self) -> None:
        """Free the run directory for another process (the lock; on gs://, the lease, which
        would otherwise stay until it expires). The CLI calls it when a command ends."""
        self._close_metrics()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _close_metrics(self) -> None:
        if "metrics" in self.__dict__:  # opened: flush TensorBoard, finish the W&B run
            self.metrics.close()
            del self.metrics

    def report(self) -> list[dict[str, Any]]:
        """One row per finished round, as `tpt report --json` prints them (`report.rounds`)."""
        from tpt_jax import report

        return report.rounds(self.dir)

    def model(self, r: int) -> ModelHandle:
        """Round r's model (r = 0: the base model) as a handle ready to sample (`generate`,
        `logits`), in the sampling dtype and layout; its round must have finished TRAIN."""
        return self.model_for(r, sampling=True)

    def round(self, r: int) -> dict[str, Any]:
        """Round r's stages (r = 0: the base EVAL only) that are not done yet; its manifest."""
        path = self.round_dir(r) / "manifest.json"
        if path.exists():
            return read_json(path)
        walls: dict[str, float] = {}
        results: dict[str, Any] = {}
        for stage in ("eval",) if r == 0 else STAGES:
            t0 = time.perf_counter()
            results[stage] = self.stage(stage, r)
            walls[stage] = round(time.perf_counter() - t0, 2)
            if stage == "prune" and results[stage]["kept_train"] == 0:
                stats = results[stage]
                why = (
                    f"round {r}: PRUNE kept no training examples ({stats['correct']} of "
                    f"{stats['traces']} traces correct)"
                )
                if self.config.on_empty_round == "stop":
                    _say(f"{why}; stopping the run (on_empty_round: stop)")
                    return {"round": r, "stopped": True, "reason": why, "prune": stats}
                _say(f"{why}; round {r - 1}'s model goes on unchanged (on_empty_round: carry)")
        manifest = self._manifest(r, results, walls)
        write_json(path, manifest)
        return manifest

    def preflight(self, model: bool = True, stage: str | None = None) -> None:
        """Every check that needs no sampling, done before any: memory (`tpt plan` on these
        devices, for `stage` alone when one is given), the data (both splits), the prune budget
        against the THINK problems, and, while round 0 or round 1's THINK is still to do, the
        base model, its tokenizer and every THINK prompt against think.max_prompt_tokens and
        train.max_len. Writes nothing but the materialized base model of a `preset:` run (which
        round 0 loads next anyway)."""
        stages = plan.run_stages(self.config) if stage is None else (stage,)
        plan.check_local(self.config, [s for s in stages if s != "prune"])
        self.problems("train")
        self.problems("test")
        if is_primary():  # the others wait: they must not see half a deletion or a copy
            self._discard_stale()
            for other in self.reuse:
                self._adopt(other)
        barrier("preflight: run directory settled")
        think_pending = (
            self.config.rounds >= 1 and not (self.round_dir(1) / "think" / "DONE.json").exists()
        )
        if think_pending:
            self._check_budget()
        if not model:
            return
        if think_pending or not (self.round_dir(0) / "manifest.json").exists():
            handle = self.model_for(0, sampling=True)  # model errors now, before any output
            spec, tok = self.config.model, handle.tokenizer
            if self.task.prompt == "chat" and tok is not None and not tok.chat_template:
                where = (
                    f"model.tokenizer {spec.tokenizer}"
                    if spec.path.startswith("preset:")
                    else f"model.path {spec.path}"
                )
                raise TptError(
                    f"task.prompt: chat needs a chat template, but the tokenizer of {where} has "
                    "none; use task.prompt: plain (a plain-text prompt, as for base models)"
                )
            encode_prompts(  # a tokenizer and, for chat prompts, a chat template
                handle, self.problems("test")[:1], self.task, self.shots(), None,
                self.config.eval.max_new_tokens,
            )  # fmt: skip
            if think_pending:
                self._check_prompts(self._think_prompts(handle))

    def _think_problems(self) -> list[Problem]:
        shots = self.config.task.few_shot  # worked examples are shown, never THINK problems
        return self.problems("train")[shots:][: self.config.think.problems]

    def _think_prompts(self, handle: ModelHandle) -> EncodedPrompts:
        cfg = self.config.think
        return encode_prompts(
            handle, self._think_problems(), self.task, self.shots(), cfg.max_prompt_tokens,
            cfg.max_new_tokens,
        )  # fmt: skip

    def _check_budget(self) -> None:
        """prune.train_budget must be reachable: at most min(max_per_problem, think.n) examples
        come from each THINK problem. A budget that takes every possible example leaves no
        validation set: refused here, before THINK, unless prune.on_empty_val is warn."""
        cfg = self.config
        n = len(self._think_problems())
        each = min(cfg.prune.max_per_problem, cfg.think.n)
        why = (
            f"{n} THINK problems x at most {each} per problem: prune.max_per_problem "
            f"{cfg.prune.max_per_problem}, think.n {cfg.think.n}"
        )
        if cfg.prune.train_budget > n * each:
            raise TptError(
                f"prune.train_budget: {cfg.prune.train_budget} is more than the {n * each} "
                f"training examples pruning could ever keep ({why}); lower prune.train_budget "
                "or give THINK more problems"
            )
        if cfg.prune.train_budget == n * each:
            _empty_val_policy(cfg, f"prune.train_budget {cfg.prune.train_budget} takes all ({why})")

    def _check_prompts(self, prompts: EncodedPrompts) -> None:
        """Some THINK prompt must fit, and every one must leave train.max_len room for a
        solution: an example longer than train.max_len is dropped, never trained on."""
        cfg = self.config
        if not prompts.problems:
            raise TptError(
                f"think.max_prompt_tokens: {cfg.think.max_prompt_tokens}: all "
                f"{prompts.skipped_too_long} THINK prompts are longer, so there is nothing to "
                "sample; raise it (or leave it unset)"
            )
        longest = max(range(len(prompts.ids)), key=lambda i: len(prompts.ids[i]))
        length = len(prompts.ids[longest])
        if length >= cfg.train.max_len:
            raise TptError(
                f"train.max_len: {cfg.train.max_len} is not longer than the prompt of THINK "
                f"problem {prompts.problems[longest].id} ({length} tokens), so none of its "
                f"solutions could be trained on; raise train.max_len above {length} (to fit "
                f"whole solutions: {length} + think.max_new_tokens {cfg.think.max_new_tokens})"
            )

    # --- stages ------------------------------------------------------------------------------

    def stage(self, stage: str, r: int) -> dict[str, Any]:
        """Run one stage of round r (think, prune, train or eval; round 0 has only eval) unless
        it is done; its DONE.json content. The stages before it must be done (`tpt think|...`
        calls `preflight(model=False, stage=...)` first)."""
        if stage not in STAGES or (r == 0 and stage != "eval") or r < 0:
            raise TptError(f"no stage {stage!r} in round {r} (round 0: eval; then {STAGES})")
        out = self.round_dir(r) / stage
        done = out / "DONE.json"
        finished = done.exists()
        barrier(f"round {r} {stage}: looked for DONE.json")  # before process 0 may write it
        if finished:
            _drop_scratch(out)
            return read_json(done)
        for before in STAGES[: STAGES.index(stage)] if r else ():
            if not (self.round_dir(r) / before / "DONE.json").exists():
                raise TptError(f"round {r}: stage {stage} needs {before} first")
        inputs = self._inputs(stage, r)
        if (out / "INPUTS.json").exists() and read_json(out / "INPUTS.json") != inputs:
            raise TptError(f"{out}: partial output of other inputs; run preflight (tpt run) first")
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "INPUTS.json", inputs)  # before any output: a partial one is named too
        _say(f"[round {r}] {stage}")
        result = getattr(self, f"_{stage}")(r, out)
        write_json(done, result)
        _drop_scratch(out)
        return result

    def _think(self, r: int, out: Path) -> dict[str, Any]:
        cfg = self.config.think
        traces_path = out / "traces.jsonl"
        if cfg.traces_from:  # the cross-model ablation: another run's traces for this round
            source = storage.run_path(cfg.traces_from) / f"round_{r}" / "think" / "traces.jsonl"
            if not (source.parent / "DONE.json").exists():
                raise TptError(f"think.traces_from: {source} is missing or unfinished")
            records = read_traces(source)
            write_records(traces_path, records)
            return {"problems": len({t["problem_id"] for t in records}), "copied_from": str(source)}
        handle = self.model_for(r - 1, sampling=True)
        prompts = self._think_prompts(handle)
        self._check_prompts(prompts)
        if prompts.skipped_too_long:
            _say(
                f"  skipped {prompts.skipped_too_long} of "
                f"{prompts.skipped_too_long + len(prompts.problems)} THINK problems whose prompt "
                "does not fit (think.max_prompt_tokens, the context; task.on_long_prompt: skip)"
            )
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            n=cfg.n,
            seed=_seed(self.config.seed, "think", r),
        )
        t0 = time.perf_counter()
        records = sample_to_file(  # a slow verifier starts on records while sampling goes on
            handle, prompts, params, traces_path, label="think", on_records=self.plugin.prefetch
        )
        tokens = sum(t["n_tokens"] for t in records)
        stats = {
            "problems": len(prompts.problems),
            "samples": len(records),
            "skipped_too_long": prompts.skipped_too_long,
            "tokens": tokens,
            "seconds": time.perf_counter() - t0,
        }
        self.metrics.write("think", r, **stats)
        return stats

    def _prune(self, r: int, out: Path) -> dict[str, Any]:
        traces = read_traces(self.round_dir(r) / "think" / "traces.jsonl")
        answers = {p.id: p.answer for p in self.problems("train")}
        result = prune(
            traces, answers, self.config.prune, _seed(self.config.seed, "prune", r),
            verify=self.plugin.verify_all,
        )  # fmt: skip
        result.stats["val_empty"] = False
        if result.train and not result.val:
            candidates = result.stats["kept_train"]
            budget = self.config.prune.train_budget
            result.stats["val_empty"] = _empty_val_policy(
                self.config,
                f"round {r}: the {candidates} candidates PRUNE found all fit prune.train_budget "
                f"{budget}",
            )
        selected = [{**t, "split": "train"} for t in result.train]
        selected += [{**t, "split": "val"} for t in result.val]
        write_records(out / "selected.jsonl", selected)
        write_records(out / "per_problem.jsonl", result.per_problem)
        write_json(out / "stats.json", result.stats)
        self.metrics.write("prune", r, **{k: v for k, v in result.stats.items() if k != "dropped"})
        _say(
            f"  kept {result.stats['kept_train']} train + {result.stats['kept_val']} val of "
            f"{result.stats['traces']} traces ({result.stats['correct']} correct); "
            f"dropped {result.stats['dropped']}"
        )
        return result.stats

    def _train(self, r: int, out: Path) -> dict[str, Any]:
        selected = read_traces(self.round_dir(r) / "prune" / "selected.jsonl")
        model_dir = self.round_dir(r) / "model"
        if not any(t["split"] == "train" for t in selected):  # on_empty_round: carry
            return {"model": self.model_path(r - 1), "carried": True}
        cfg = self.config.train
        start = 0 if cfg.init == "base" else r - 1
        # Loaded straight into float32 masters (train.py's rule), never through a bf16 copy.
        handle = self.model_for(start, rules=TRAIN_RULES, dtype="float32")
        problems = {p.id: p for p in self.problems("train")}
        sets: dict[str, list] = {"train": [], "val": []}
        for t in selected:
            prompt = prompt_for(problems[t["problem_id"]], self.task, self.shots())
            example = encode_example(
                handle.tokenizer, prompt, t["text"], chat_format=cfg.chat_format
            )
            sets[t["split"]].append(example)
        self._handle = None  # training consumes (donates) the loaded weights

        bar: list[Progress] = []

        def log(record: dict[str, Any]) -> None:
            fields = {k: v for k, v in record.items() if k != "step"}
            self.metrics.write(f"train/round_{r}", int(record.get("step", 0)), **fields)
            if "loss" in record:
                text = f"loss {record['loss']:.3f} {record.get('tokens_per_s', 0):.0f} tok/s"
                text += f" pad {record.get('pad_fraction', 0):.0%}"
                if record.get("compile_s"):
                    text += f" (+{record['compile_s']:.0f}s compiling)"
                if not bar:  # the first step (compilation) or a resume point starts the clock
                    bar.append(
                        Progress("train", record["total_steps"], "steps", initial=record["step"])
                    )
                else:
                    bar[0].update(1, text)
            if "val_loss" in record:
                _say(f"  step {record['step']}: validation loss {record['val_loss']:.4f}")
            faults.reached("train.step")

        model, result = train(
            handle.model,
            self.mesh,
            sets["train"],
            sets["val"],
            cfg,
            seed=_seed(self.config.seed, "train", r),
            work_dir=out,
            log=log,
        )
        if bar:
            bar[0].close()
        checkpoint.save_checkpoint(model, model_dir, tokenizer=handle.tokenizer)
        self._trained = (str(model_dir), model, handle.tokenizer)
        summary = {k: v for k, v in vars(result).items() if k != "history"}
        return {"model": str(model_dir), "carried": False, **summary}

    def _eval(self, r: int, out: Path) -> dict[str, Any]:
        handle = self.model_for(r, sampling=True)
        cfg = self.config.eval
        prompts = encode_prompts(
            handle, self.problems("test"), self.task, self.shots(), None, cfg.max_new_tokens
        )
        modes = self.plugin.grading_modes
        # The train answers give the prior baseline (always the most common train answer):
        # the Pass@1 a model gets from the answer distribution alone.
        summary = evaluate(
            handle,
            prompts,
            cfg,
            out,
            seed=_seed(self.config.seed, "eval"),
            label=f"eval r{r}",
            # Only an answer-graded task has a prior baseline; the others' notion of a right
            # answer is their own (a program passing tests).
            train_answers=[p.answer for p in self.problems("train")] if modes else None,
            verify=self.plugin.verify_all,
            modes=modes,
            on_records=self.plugin.prefetch,
        )
        prior = summary.get("prior_baseline")
        extra = {"prior_baseline_pass_at_1": prior["pass_at_1"]} if prior else {}
        self.metrics.write("eval", r, **_scalars(summary), **extra)
        low, high = summary["pass_at_1_ci95"]
        against = f"; prior baseline {100 * prior['pass_at_1']:.1f}%" if prior else ""
        _say(
            f"  round {r}: Pass@1 {100 * summary['pass_at_1']:.1f}% "
            f"[{100 * low:.1f}, {100 * high:.1f}] on {summary['problems']} problems{against}"
        )
        return summary

    # --- models and data ---------------------------------------------------------------------

    def round_dir(self, r: int) -> Path:
        return self.dir / f"round_{r}"

    def model_path(self, r: int) -> str:
        """Where round r's model lives: the base model for r = 0."""
        if r == 0:
            return self.config.model.path
        return read_json(self.round_dir(r) / "train" / "DONE.json")["model"]

    def model_for(
        self, r: int, rules=None, sampling: bool = False, dtype: str | None = None
    ) -> ModelHandle:
        """Round r's model: in `dtype` (TRAIN: float32), model.dtype (export), or for sampling
        (THINK, EVAL) in engine.dtype, loaded directly in that dtype so no second copy is made."""
        path = self.model_path(r)
        dtype = dtype or (self.sampling_dtype() if sampling else self.config.model.dtype)
        mesh = self.sample_mesh if sampling else self.mesh
        key = f"{path}|{rules is not None}|{dtype}|{sampling}"
        if self._handle is None or self._handle[0] != key:
            self._handle = None  # free the old weights before loading new ones
            trained, self._trained = self._trained, None
            if sampling and trained is not None and trained[0] == path:
                # Just trained: cast and reshard on device into the sampling layout (reshard
                # consumes the trained weights).
                _, model, tokenizer = trained
                model = reshard(model, mesh, SAMPLE_RULES, dtype)
                handle = ModelHandle(model, tokenizer, mesh, path, self.engine_options(dtype))
            else:
                trained = None  # its weights go before others are loaded
                handle = self._load(path, rules, dtype, mesh)
            if handle.tokenizer is not None:
                handle.tokenizer.template_time = self.template_time
            self._handle = (key, handle)
        return self._handle[1]

    def sampling_dtype(self) -> str:
        """engine.dtype, with auto = bfloat16 on GPU/TPU and the master dtype on CPU."""
        name = self.config.engine.dtype
        if name != "auto":
            return name
        return self.config.model.dtype if jax.devices()[0].platform == "cpu" else "bfloat16"

    def engine_options(self, dtype: str) -> EngineOptions:
        cfg = self.config.engine
        budget = None if cfg.memory_gb is None else int(cfg.memory_gb * 2**30)
        return EngineOptions(
            dtype=dtype,
            slots=cfg.slots,
            max_slots=cfg.max_slots,
            memory_budget=budget,
            decode_steps=cfg.decode_steps,
            prefill_tokens=cfg.prefill_tokens,
        )

    def _load(self, path: str, rules, dtype: str, mesh) -> ModelHandle:
        spec = self.config.model
        kwargs = {"rules": rules} if rules is not None else {}
        kwargs |= {"dtype": dtype, "mesh": mesh, "engine": self.engine_options(dtype)}
        if not path.startswith("preset:"):
            try:
                return load(path, **kwargs)
            except TptError as e:
                if path != spec.path:
                    raise
                msg = str(e)  # name the key, and the path where the message does not
                raise type(e)(f"model.path: {msg if path in msg else f'{path}: {msg}'}") from None
        if spec.tokenizer is None:
            raise TptError("model.tokenizer: a preset: model needs a tokenizer (a name or dir)")
        tok_handle = spec.tokenizer
        tokenizer = (
            Tokenizer.from_pretrained(tok_handle)
            if Path(tok_handle).is_dir()
            else _shipped_tokenizer(tok_handle)
        )
        import jax.numpy as jnp

        master = jnp.float32 if spec.dtype == "float32" else jnp.bfloat16
        model = init_model(preset(path.removeprefix("preset:")), self.config.seed, master)
        tmp = self.dir / "base_model"  # materialize once, so every later load is the same
        made_from = {"model": spec.path, "dtype": spec.dtype, "seed": self.config.seed}
        record = tmp / "MADE_FROM.json"
        present = checkpoint.is_checkpoint(tmp)
        stale = present and (not record.exists() or read_json(record) != made_from)
        barrier("base model: looked")  # every process decides on the same files
        if stale and is_primary():
            storage.rmtree(tmp)  # another preset or seed (--force): draw it again
        if stale or not present:
            checkpoint.save_checkpoint(model, tmp, tokenizer=tokenizer)
            write_json(tmp / "MADE_FROM.json", made_from)
        return load(tmp, **kwargs)

    def problems(self, split: str) -> list[Problem]:
        if self._problems is None:
            task = self.config.task
            sizes = {"train": task.train_size, "test": task.test_size}
            problems: dict[str, list[Problem]] = {}
            data: dict[str, Any] = {"task": task.name}
            # A built-in answer task's rows are its problems and its verifier is the package's
            # grading: its data alone is what stages depend on (older runs' hashes stay valid).
            hashed_plugin = None if task.name in ("arithmetic", "gsm8k") else self.plugin
            for name, size in sizes.items():
                loaded = self.plugin.problems(name, _task_options(self.config))
                problems[name] = loaded[:size]
                skipped = loaded.skipped
                if skipped:
                    _say(
                        f"data: skipped {skipped} bad line{'s' * (skipped > 1)} of the {name}"
                        f" split (task.on_bad_line: skip); first: {loaded.skip_reasons[0]}"
                    )
                data[f"{name}_skipped"] = skipped
                data[f"{name}_problems"] = len(problems[name])
                data[f"{name}_sha256"] = _problems_sha256(problems[name], hashed_plugin)
                data[f"{name}_source"] = loaded.source
            self._problems, self._data = problems, data
        return self._problems[split]

    def shots(self) -> list[Problem]:
        return self.problems("train")[: self.config.task.few_shot]

    # --- bookkeeping -------------------------------------------------------------------------

    def _inputs(self, stage: str, r: int) -> dict[str, Any]:
        self.problems("train")
        data = {split: self._data[f"{split}_sha256"] for split in ("train", "test")}
        return stage_inputs(self.config, stage, r, data)

    def _adopt(self, other: Path) -> None:
        """Copy every finished stage of the run in `other` whose inputs equal this run's (an
        ablation shares its first stages with the main run: restart-from-base shares all of
        round 1). Stops at the first stage it cannot take, since the ones after depend on it."""
        for r in range(self.config.rounds + 1):
            for stage in ("eval",) if r == 0 else STAGES:
                mine, theirs = self.round_dir(r) / stage, other / f"round_{r}" / stage
                if mine.exists():
                    continue
                done = theirs / "DONE.json"
                if not done.exists() or read_json(theirs / "INPUTS.json") != self._inputs(stage, r):
                    return
                storage.copytree(theirs, mine, skip=SCRATCH)
                result = read_json(done)
                if stage == "train" and not result.get("carried"):
                    storage.copytree(other / f"round_{r}" / "model", self.round_dir(r) / "model")
                    result["model"] = str(self.round_dir(r) / "model")
                elif stage == "train":
                    result["model"] = self.model_path(r - 1)
                write_json(mine / "DONE.json", {**result, "reused_from": str(theirs)})
                _say(f"reused round {r} {stage} from {other}")

    def _discard_stale(self) -> None:
        """Every stage directory whose INPUTS.json differs from what the config and data give
        now (a changed data file, or a config changed with --force): refused, naming what would
        be discarded, or with --force deleted (and the manifests of its rounds)."""
        stale = []
        for r in range(self.config.rounds + 1):
            for stage in ("eval",) if r == 0 else STAGES:
                out = self.round_dir(r) / stage
                if not out.exists():
                    continue
                path = out / "INPUTS.json"
                then = read_json(path) if path.exists() else None
                now = self._inputs(stage, r)
                if then != now:
                    why = "no INPUTS.json" if then is None else first_difference(then, now)
                    stale.append((r, stage, why))
        if not stale:
            return
        (r, stage, why), names = stale[0], ", ".join(f"round {r} {s}" for r, s, _ in stale)
        if not self.force:
            raise TptError(
                f"{self.dir}: round {r} {stage} was made from other inputs ({why}); --force "
                f"discards {names} and redoes them"
            )
        _say(f"discarding {names} (round {r} {stage}: {why})")
        for r, stage, _ in stale:
            storage.rmtree(self.round_dir(r) / stage)
            (self.round_dir(r) / "manifest.json").unlink(missing_ok=True)
        storage.rmtree(self.dir / "export")  # it may hold a discarded round

    def _claim_config(self, force: bool) -> None:
        path = self.dir / "config.json"
        mine = to_dict(self.config)
        if path.exists():
            try:  # keys added by a newer tpt_jax take their defaults
                theirs = to_dict(from_dict(read_json(path), str(path)))
            except TptError:
                theirs = read_json(path)
            for key in ("report_to", "wandb_project"):  # where numbers go changes no result
                theirs[key] = mine[key]
            fresh = not any(self.dir.glob("round_*"))  # nothing made with the old config yet
            if theirs != mine and fresh:
                if is_primary():
                    storage.rmtree(self.dir / "base_model")  # its seed/preset
            elif theirs != mine and not force:
                diff = first_difference(theirs, mine)
                raise TptError(
                    f"{self.dir}: was started with a different config ({diff}); "
                    "use the same config, another --run-dir, or --force"
                )
        write_json(path, mine)

    def _manifest(self, r: int, results: dict[str, Any], walls: dict[str, float]) -> dict:
        problems = self.problems("train") + self.problems("test")
        data_hash = hashlib.sha256(
            json.dumps([(p.id, p.question, p.answer) for p in problems]).encode()
        ).hexdigest()[:16]
        return {
            "round": r,
            "model": self.model_path(r),
            "seed": self.config.seed,
            "config_hash": config_hash(self.config),
            "data_hash": data_hash,
            "data": self._data,  # per split: problems used, bad lines skipped, what was read
            "instruction": self.task.instruction or INSTRUCTION,
            "template_time": self.template_time.isoformat(),  # what chat templates' dates read
            "versions": _versions(),
            "devices": {"kind": jax.devices()[0].device_kind, "count": jax.device_count()},
            "wall_seconds": walls,
            **results,
        }

    def export(self, manifests: list[dict[str, Any]]) -> Path | None:
        which = self.config.export
        finished = [m for m in manifests if "eval" in m]
        if which == "none" or not finished:
            return None
        if which == "best":
            pick = max(finished, key=lambda m: m["eval"]["pass_at_1"])
        else:
            pick = finished[-1]
        out = self.dir / "export"
        marker = out / "ROUND"
        if marker.exists() and marker.read_text().strip() == str(pick["round"]):
            return out
        handle = self.model_for(pick["round"])
        # every process gathers; process 0 writes (to gs://: locally, then uploaded)
        with storage.writable_dir(out, upload=is_primary()) as local:
            handle.save_hf(local)
        if is_primary():
            marker.write_text(f"{pick['round']}\n")
        _say(f"exported round {pick['round']} ({which}) to {out}")
        return out


def _run_started(run_dir: Path) -> datetime.datetime:
    """When the run first started (`run_dir/started.json`, written once)."""
    path = run_dir / "started.json"
    if not path.exists():
        write_json(path, {"time": datetime.datetime.now().isoformat(timespec="seconds")})
    barrier("started.json")
    return datetime.datetime.fromisoformat(read_json(path)["time"])


def _drop_scratch(stage_dir: Path) -> None:
    """Delete what only a resume needs once the stage is done (TRAIN's train state and best
    copy: three times the model's size with Adam's moments; the round's model is kept)."""
    if not is_primary():
        return
    for name in SCRATCH:
        storage.rmtree(stage_dir / name)


def _check_mesh(shape: tuple[int, ...] | None, key: str = "model.mesh") -> None:
    if shape is not None and math.prod(shape) != jax.device_count():
        n = jax.device_count()
        unset = "all devices on fsdp" if key == "model.mesh" else "model.mesh's"
        raise TptError(
            f"{key}: {list(shape)} needs {math.prod(shape)} devices, but {n} "
            f"{'is' if n == 1 else 'are'} available; make the sizes multiply to {n}, or leave "
            f"{key} unset ({unset})"
        )


def _task_options(config: RunConfig) -> dict[str, Any]:
    """What the task plug-in's problems() gets: the built-in answer tasks' keys of the task
    section, or task.options as the user wrote it."""
    task = config.task
    if task.name == "arithmetic":
        sizes = {"train_size": task.train_size, "test_size": task.test_size}
        return {
            **sizes,
            "levels": list(task.levels),
            "max_value": task.max_value,
            "seed": config.seed,
        }
    if task.name == "gsm8k":
        return {"source": task.source, "on_bad_line": task.on_bad_line}
    return dict(task.options or {})


def _problems_sha256(problems: list[Problem], plugin: Any = None) -> str:
    """The split's hash, which stages depend on; with a plug-in, also its rows' other keys
    (a code problem's tests) and its file (its verify function)."""
    rows: list[Any] = [(p.id, p.question, p.answer, p.solution) for p in problems]
    if plugin is not None:
        rows += [plugin.sha256, [plugin.extras[p.id] for p in problems]]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def _empty_val_policy(config: RunConfig, what: str) -> bool:
    """An empty validation set where train.select needs one: a one-line error (prune.on_empty_val
    fail) or a printed warning (warn). True when the set is empty and selection matters."""
    if config.prune.val_budget == 0 or config.train.select == "last":
        return False  # no validation set was asked for
    if config.prune.on_empty_val == "fail":
        raise TptError(
            f"{what}, so no problem is left for validation (train.select "
            f"{config.train.select}); lower prune.train_budget, or set prune.on_empty_val: warn "
            "to train on them all and keep the last step"
        )
    _say(f"  warning: {what}: validation set empty, TRAIN keeps the last step")
    return True


def _seed(seed: int, stage: str, r: int = 0) -> int:
    digest = hashlib.sha256(f"{seed}/{stage}/{r}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _shipped_tokenizer(name: str) -> Tokenizer:
    from tpt_jax.api import shipped_models
    from tpt_jax.gguf_io import read_gguf

    finders = shipped_models()
    if name not in finders:
        raise TptError(
            f"model.tokenizer: {name!r} is neither a directory nor one of {list(finders)}"
        )
    return read_gguf(finders[name]()).tokenizer


def _scalars(summary: dict[str, Any]) -> dict[str, float]:
    out = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    out.update({f"pass_at_{k}": v for k, v in summary.get("pass_at_k", {}).items()})
    return out


def _versions() -> dict[str, str]:
    names = ("tpt-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
