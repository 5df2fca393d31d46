"""THINK: sample solutions to many problems into a JSONL traces file, resumably.

Shared by the THINK stage (train problems, temperature 0.8) and EVAL (test problems). Work is
done in chunks of problems; each chunk's traces are appended, flushed and fsync'd together, so
a killed process loses at most the chunk in flight. Sample j of problem i depends only on
(seed, i, j), never on chunking, so a resumed run writes exactly what an uninterrupted one
would have.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpt_jax import faults, storage
from tpt_jax.api import ModelHandle
from tpt_jax.config import TaskConfig
from tpt_jax.distributed import is_primary
from tpt_jax.engine import Sample, SamplingParams
from tpt_jax.errors import TptError
from tpt_jax.metrics import Progress
from tpt_jax.tasks import Problem, chat_messages, plain_prompt


@dataclass
class EncodedPrompts:
    """Prompt ids for the problems that fit, and how many were skipped as too long."""

    problems: list[Problem]
    key_ids: list[int]  # each problem's index in its split: the sampling key
    ids: list[list[int]]
    skipped_too_long: int


def prompt_for(problem: Problem, task: TaskConfig, shots: Sequence[Problem] = ()) -> Any:
    """The chat message list (chat prompts) or text (plain prompts) for one problem."""
    if task.prompt == "chat":
        return chat_messages(problem.question, shots, task.instruction)
    return plain_prompt(problem.question, shots, task.instruction)


def encode_prompts(
    handle: ModelHandle,
    problems: Sequence[Problem],
    task: TaskConfig,
    shots: Sequence[Problem] = (),
    max_prompt_tokens: int | None = None,
    max_new_tokens: int = 1,
) -> EncodedPrompts:
    """Token ids of every problem's prompt. A prompt longer than `max_prompt_tokens`, or with no
    room for an answer in the model's context, is skipped and counted, never truncated."""
    tok = handle.tokenizer
    if tok is None:
        raise TptError(f"{handle.source}: has no tokenizer; set model.tokenizer in the config")
    if task.prompt == "chat" and not tok.chat_template:
        raise TptError(
            f"{handle.source}: the tokenizer has no chat template; use task.prompt: plain"
        )
    context = handle.config.max_position_embeddings
    limit = min(max_prompt_tokens or context, context - max(1, min(max_new_tokens, 64)))
    out = EncodedPrompts([], [], [], 0)
    for index, problem in enumerate(problems):
        prompt = prompt_for(problem, task, shots)
        ids = handle.encode_prompt(prompt)
        if len(ids) > limit:
            if task.on_long_prompt == "fail":
                raise TptError(
                    f"problem {problem.id}: its prompt has {len(ids)} tokens, over the limit of "
                    f"{limit} (context {context}, think.max_prompt_tokens); set "
                    "task.on_long_prompt: skip to skip and count such problems"
                )
            out.skipped_too_long += 1
            continue
        out.problems.append(problem)
        out.key_ids.append(index)
        out.ids.append(ids)
    return out


def read_traces(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a traces file; a torn last line (a kill mid-write) is dropped."""
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            records.append(json.loads(line))
    return records


def sample_to_file(
    handle: ModelHandle,
    prompts: EncodedPrompts,
    params: SamplingParams,
    path: Path,
    *,
    label: str,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Sample `params.n` answers per prompt into `path` (JSONL, one record per sample), resuming
    from whatever complete problems it already holds; returns all records in problem order.
    `on_records` gets each chunk's finished records as they come (a task plug-in starts
    verifying them while the engine goes on sampling).

    Every prompt still to do goes to the engine at once, which keeps its decode slots full.
    Problems finish out of order; after each engine chunk the problems whose n samples are all
    done are appended and fsync'd, so a kill loses only samples in flight. At the end the file
    is rewritten in problem order, so it is the same however the work was interrupted."""
    done = read_traces(path)
    counts = Counter(r["problem_id"] for r in done)
    finished = {pid for pid, c in counts.items() if c == params.n}
    records = [r for r in done if r["problem_id"] in finished]
    written = None  # the file's text, when just rewritten
    if done:  # rewrite without a torn tail or a half-written problem: appends start clean
        written = write_records(path, records)
    todo = [i for i, p in enumerate(prompts.problems) if p.id not in finished]
    progress = Progress(label, len(todo) * params.n, "samples")
    tokens_made = 0
    t0 = time.perf_counter()
    if todo:
        # Other processes sample alike and keep the records in memory; process 0 writes them.
        appender = storage.Appender(path, written) if is_primary() else None
        chunks = handle.engine.run_chunks(
            [prompts.ids[i] for i in todo], params, [prompts.key_ids[i] for i in todo]
        )
        pending: dict[int, list] = {}
        for chunk in chunks:
            new = []
            for k, j, sample in chunk:
                tokens_made += sample.length
                pending.setdefault(k, [None] * params.n)[j] = handle.add_text(sample)
                if all(s is not None for s in pending[k]):
                    problem = prompts.problems[todo[k]]
                    new += [_record(problem.id, j, s) for j, s in enumerate(pending.pop(k))]
            records += new
            if on_records is not None:
                on_records(new)
            if appender is not None:
                appender.append("".join(map(_line, new)))
            faults.reached("think.chunk")
            tokens_per_s = tokens_made / (time.perf_counter() - t0)
            progress.update(len(chunk), f"{tokens_per_s:.0f} tok/s")
    progress.close()
    order = {p.id: i for i, p in enumerate(prompts.problems)}
    records.sort(key=lambda r: (order.get(r["problem_id"], len(order)), r["sample"]))
    write_records(path, records)
    return records


def _record(problem_id: str, sample: int, s: Sample) -> dict[str, Any]:
    return {
        "problem_id": problem_id,
        "sample": sample,
        "text": s.text,
        "n_tokens": s.length,
        "finish_reason": s.finish_reason,
    }


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_records(path: Path, records: list[dict[str, Any]]) -> str:
    """Replace `path` with these JSONL records atomically (`storage.write_text`); returns the
    text written. Process 0 alone writes; the others hold the same records."""
    text = "".join(map(_line, records))
    if is_primary():
        storage.write_text(path, text)
    return text
