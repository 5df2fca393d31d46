"""SFT examples and the packed batches that training consumes (layer 3, NumPy only).

An example is (prompt ids, completion ids); the loss covers only the completion. Each optimizer
step takes `global_batch` examples of a (seed, epoch)-shuffled order and packs them into as few
computed tokens as it can (`pack_step`): rows of a bucketed length (a multiple of `length_step`, or
`max_len`), as many rows per microbatch as the token budget `micro_batch * max_len` holds, the
last microbatch's row count rounded up to a power of two. The shapes come from small sets, so
the train step compiles a few times, not once per step; the rows a step computes are the rows
packing produced, not `micro_batch` rows of `max_len` whatever the data.

Row layout of one packed example whose ids are seq = prompt + completion (n tokens, p prompt):
    tokens    seq                         targets   seq[1:], then 0 at the segment's last slot
    positions 0 .. n-1 (restart per seq)  segments  k for the k-th example of the row, 0 = padding
    valid     True on the n slots         loss_mask True at slots p-1 .. n-2, i.e. exactly where
                                                    the target is a completion token
A segment's last slot predicts nothing: its "next token" would be the next example's first one.

The train step takes the loss positions gathered per row (`Rows.train_arrays`): `loss_index`
[B, M] (M = the row with most completion tokens, rounded up to a quarter of T), so logits and
cross-entropy are computed for completion tokens only, never for prompts or padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool, Int

from tpt_jax.config import TrainConfig
from tpt_jax.errors import TptError
from tpt_jax.tokenizer import Tokenizer

Prompt = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class SFTExample:
    """Token ids of a prompt and its completion. In chat format the completion ends with the
    template's end-of-turn marker (and whatever the template writes after it, e.g. a newline)."""

    prompt: tuple[int, ...]
    completion: tuple[int, ...]

    def __post_init__(self) -> None:
        # The first completion token is predicted from the last prompt token, so both are needed.
        if not self.prompt or not self.completion:
            raise TptError("an SFT example needs at least one prompt and one completion token")

    def __len__(self) -> int:
        return len(self.prompt) + len(self.completion)


def encode_example(
    tokenizer: Tokenizer, prompt: Prompt, completion_text: str, *, chat_format: bool = True
) -> SFTExample:
    """Token ids of one training example.

    - Chat messages (chat_format): the conversation with the assistant turn appended, rendered by
      the chat template; prompt = the template's generation prompt, completion = the rest, so the
      template's own end-of-turn marker is learned. Where the generation prompt is not a prefix
      of the full rendering (BPE merges across the boundary, e.g. a completion starting with
      whitespace), prompt ids + the completion encoded alone + the end-of-turn token.
    - Plain text prompts (chat_format): `prompt + completion_text` joined with nothing in
      between, then EOS. The completion text is a decode of what the model sampled right after
      exactly these prompt ids, so any separator is already in it; the same prefix rule applies.
    - chat_format=False, the authors' quirk: plain "question\\n\\ncompletion" (a message list
      contributes its message texts), no chat template and no end token.
    """
    if not chat_format:
        if not isinstance(prompt, str):
            prompt = "\n\n".join(str(m["content"]) for m in prompt)
        head = prompt + "\n\n"
        full = tokenizer.encode(head + completion_text)
        return _split(tokenizer, tokenizer.encode(head), full, completion_text, end="none")
    if isinstance(prompt, str):
        full = tokenizer.encode(prompt + completion_text)
        return _split(tokenizer, tokenizer.encode(prompt), full, completion_text, end="eos")
    if not tokenizer.chat_template:
        raise TptError("the tokenizer has no chat template: give prompts as plain text")
    messages = [dict(m) for m in prompt]
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    turn = {"role": "assistant", "content": completion_text}
    full = tokenizer.apply_chat_template(messages + [turn], add_generation_prompt=False)
    return _split(tokenizer, head, full, completion_text, end="template")


def _split(
    tokenizer: Tokenizer,
    head: Sequence[int],
    full: Sequence[int],
    completion_text: str,
    *,
    end: Literal["template", "eos", "none"],
) -> SFTExample:
    """Completion = `full` after `head` where `head` is its prefix; else the text encoded alone
    (plus the end-of-turn token the template wrote, when `end` is "template")."""
    head, full = list(head), list(full)
    if full[: len(head)] == head and len(full) > len(head):
        completion = full[len(head) :]
    else:
        common = next(
            (i for i, (a, b) in enumerate(zip(head, full, strict=False)) if a != b), len(head)
        )
        completion = tokenizer.encode(completion_text, add_special_tokens=False)
        if end == "template":
            completion.append(_end_token(tokenizer, full[common:]))
    if end == "eos":
        completion.append(_end_token(tokenizer, ()))
    if not completion:
        raise TptError(
            "empty completion: nothing to train on (chat_format=False adds no end token)"
        )
    return SFTExample(tuple(head), tuple(completion))


def _end_token(tokenizer: Tokenizer, rendered_turn: Sequence[int]) -> int:
    """The end-of-turn token the template wrote (Gemma: <end_of_turn>, not <eos>), else EOS."""
    stops = tokenizer.stop_token_ids
    if not stops:
        raise TptError("the tokenizer has no EOS or end-of-turn token to end completions with")
    return next((t for t in rendered_turn if t in stops), stops[0])


# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """Packed rows [B, T] (T = max_len); the arrays the train step takes, by these names."""

    tokens: Int[np.ndarray, "B T"]
    targets: Int[np.ndarray, "B T"]
    loss_mask: Bool[np.ndarray, "B T"]
    positions: Int[np.ndarray, "B T"]
    segments: Int[np.ndarray, "B T"]
    valid: Bool[np.ndarray, "B T"]

    @staticmethod
    def empty(rows: int, length: int) -> Rows:
        ints = lambda: np.zeros((rows, length), np.int32)
        bools = lambda: np.zeros((rows, length), bool)
        return Rows(ints(), ints(), bools(), ints(), ints(), bools())

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def pad_to_multiple(self, multiple: int) -> Rows:
        """Padding rows (all-zero, loss_mask False) up to a multiple of `multiple` rows."""
        extra = -len(self) % multiple
        pad = Rows.empty(extra, self.tokens.shape[1]).arrays()
        return Rows(**{k: np.concatenate([v, pad[k]]) for k, v in self.arrays().items()})

    def chunks(self, size: int) -> list[Rows]:
        return [
            Rows(**{k: v[i : i + size] for k, v in self.arrays().items()})
            for i in range(0, len(self), size)
        ]

    def train_arrays(self) -> dict[str, np.ndarray]:
        """What the train step takes: the [B, T] inputs, and per row the slots of its completion
        tokens (`loss_index` [B, M], their `loss_targets`, `loss_valid` False on filler), M the
        largest per-row count rounded up to a quarter of T: at most 4 shapes per row shape)."""
        t = self.tokens.shape[1]
        counts = self.loss_mask.sum(axis=1)
        step = max(1, -(-t // 4))
        m = min(t, max(1, -(-int(counts.max(initial=0)) // step) * step))
        # Stable sort puts each row's loss slots first, in order; filler points at slot 0.
        order = np.argsort(~self.loss_mask, axis=1, kind="stable")[:, :m].astype(np.int32)
        loss_valid = np.arange(m)[None, :] < counts[:, None]
        loss_index = np.where(loss_valid, order, 0).astype(np.int32)
        loss_targets = np.where(loss_valid, np.take_along_axis(self.targets, loss_index, 1), 0)
        return {
            "tokens": self.tokens,
            "positions": self.positions,
            "segments": self.segments,
            "valid": self.valid,
            "loss_index": loss_index,
            "loss_targets": loss_targets.astype(np.int32),
            "loss_valid": loss_valid,
        }


def pack_rows(examples: Sequence[SFTExample], max_len: int, *, pack: bool = True) -> Rows:
    """Rows of `max_len` tokens: first-fit in example order (each example goes into the first
    row with room, else a new row), or one example per row when `pack` is False. Deterministic
    and order-preserving within a row; first-fit-decreasing would pack a little tighter but
    reorder examples. An example longer than `max_len` is an error (drop them first)."""
    bins: list[list[SFTExample]] = []
    room: list[int] = []
    for ex in examples:
        if len(ex) > max_len:
            raise TptError(f"example of {len(ex)} tokens exceeds train.max_len={max_len}")
        free = [i for i, r in enumerate(room) if r >= len(ex)] if pack else []
        if not free:
            bins.append([])
            room.append(max_len)
            free = [len(bins) - 1]
        bins[free[0]].append(ex)
        room[free[0]] -= len(ex)
    out = Rows.empty(len(bins), max_len)
    for r, row in enumerate(bins):
        at = 0
        for segment, ex in enumerate(row, start=1):
            seq = np.asarray(ex.prompt + ex.completion, np.int32)
            n, p = len(seq), len(ex.prompt)
            out.tokens[r, at : at + n] = seq
            out.targets[r, at : at + n - 1] = seq[1:]
            out.loss_mask[r, at + p - 1 : at + n - 1] = True
            out.positions[r, at : at + n] = np.arange(n)
            out.segments[r, at : at + n] = segment
            out.valid[r, at : at + n] = True
            at += n
    return out


def drop_long(examples: Sequence[SFTExample], max_len: int) -> tuple[list[SFTExample], int]:
    """(examples that fit in `max_len` tokens, number dropped); nothing is ever truncated."""
    kept = [ex for ex in examples if len(ex) <= max_len]
    return kept, len(examples) - len(kept)


# --- steps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One optimizer step's data: its microbatches and what they hold."""

    epoch: int
    index: int  # within the epoch
    micro: list[Rows]
    examples: int
    tokens: int  # non-padding tokens
    loss_tokens: int

    @property
    def computed(self) -> int:
        """Token slots the step computes (rows x length summed over microbatches)."""
        return sum(m.tokens.size for m in self.micro)

    @property
    def pad_fraction(self) -> float:
        return 1.0 - self.tokens / max(self.computed, 1)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """ceil(examples / global_batch): the last step of an epoch may take fewer examples."""
    return math.ceil(num_examples / global_batch)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of an epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def row_lengths(max_len: int, longest: int, step: int) -> list[int]:
    """Candidate row lengths: multiples of `step` from the longest example up, and max_len."""
    first = -(-longest // step) * step
    return [*range(first, max_len, step), max_len]


def row_counts(limit: int, multiple: int) -> list[int]:
    """Candidate rows per microbatch: `multiple` times powers of two below `limit`, and `limit`."""
    counts, n = [], multiple
    while n < limit:
        counts.append(n)
        n *= 2
    return [*counts, limit]


def pack_step(
    examples: Sequence[SFTExample], cfg: TrainConfig, rows_multiple: int = 1
) -> list[Rows]:
    """Microbatches holding `examples` (in order) that compute the fewest token slots.

    For each candidate row length L (`row_lengths`, multiples of `cfg.length_step`): pack
    first-fit into rows of L, cut them into microbatches of as many rows as the budget
    `micro_batch * max_len` tokens holds (a multiple of `rows_multiple`, the data-parallel
    size, so rows always shard evenly), and round the last microbatch up to a candidate row
    count. Keep the L with the fewest computed slots
    (then the fewest microbatches). A pure function of its inputs: resuming rebuilds the same
    batches. Attention memory stays within the plan: rows x L^2 <= micro_batch x max_len^2.
    """
    budget = cfg.micro_batch * cfg.max_len
    best: tuple[tuple[int, int], list[Rows]] | None = None
    longest = max(len(ex) for ex in examples)
    for length in row_lengths(cfg.max_len, longest, cfg.length_step):
        rows = pack_rows(examples, length, pack=cfg.pack)
        per_micro = max(rows_multiple, budget // length // rows_multiple * rows_multiple)
        counts = row_counts(per_micro, rows_multiple)
        micro = []
        for chunk in rows.chunks(per_micro):
            size = next(c for c in counts if c >= len(chunk))
            micro.append(chunk.pad_to_multiple(size))
        key = (sum(m.tokens.size for m in micro), len(micro))
        if best is None or key < best[0]:
            best = (key, micro)
    assert best is not None
    return best[1]


def epoch_steps(
    examples: Sequence[SFTExample],
    cfg: TrainConfig,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    rows_multiple: int = 1,
) -> Iterator[Step]:
    """The steps of one epoch from step `start` on (resuming skips the others unpacked).

    Every example must fit `cfg.max_len` (see `drop_long`); `pack_step` shapes the microbatches.
    """
    order = epoch_order(len(examples), seed, epoch)
    batch = cfg.global_batch
    for index in range(start, steps_per_epoch(len(examples), batch)):
        chunk = [examples[i] for i in order[index * batch : (index + 1) * batch]]
        micro = pack_step(chunk, cfg, rows_multiple)
        yield Step(
            epoch=epoch,
            index=index,
            micro=micro,
            examples=len(chunk),
            tokens=sum(int(m.valid.sum()) for m in micro),
            loss_tokens=sum(int(m.loss_mask.sum()) for m in micro),
        )


def eval_batches(
    examples: Sequence[SFTExample], cfg: TrainConfig, rows_multiple: int = 1
) -> list[Rows]:
    """A validation set as microbatches (packed like a training step, in the given order)."""
    return pack_step(examples, cfg, rows_multiple) if examples else []
