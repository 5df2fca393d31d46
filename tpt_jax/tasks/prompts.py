"""The prompts the model sees: the recipe's instruction, chat messages or plain text, worked
examples as earlier turns. Pure Python."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tpt_jax.tasks.base import Problem

__all__ = ["INSTRUCTION", "chat_messages", "plain_prompt", "strip_calculator"]

INSTRUCTION = (
    "You are an expert mathematician. Solve the following problem step by step, showing each "
    "calculation. Then write the final answer, just the number, on its own last line in the "
    "form #### <number>."
)


def chat_messages(
    question: str, shots: Sequence[Problem] = (), instruction: str | None = None
) -> list[dict[str, str]]:
    """The recipe's zero-shot prompt: one user turn, the instruction (:data:`INSTRUCTION` unless
    `instruction` is given), a blank line, then the question. With `shots`, each worked example
    comes first as an earlier user turn and its reference solution (annotations removed) as the
    assistant's reply, so the model sees the answer format in its own chat format and still ends
    its turn with the end token."""
    head = INSTRUCTION if instruction is None else instruction
    messages = []
    for shot in shots:
        messages.append({"role": "user", "content": f"{head}\n\n{shot.question.strip()}"})
        messages.append({"role": "assistant", "content": strip_calculator(shot.solution).strip()})
    messages.append({"role": "user", "content": f"{head}\n\n{question.strip()}"})
    return messages


def plain_prompt(
    question: str, shots: Sequence[Problem] = (), instruction: str | None = None
) -> str:
    """A plain-text prompt for base models without a chat template: the instruction
    (:data:`INSTRUCTION` unless given), then ``"Question: ...\\nAnswer: <solution>\\n\\n"``
    per shot (annotations removed), then the question and ``"Answer:"``."""
    parts = [INSTRUCTION if instruction is None else instruction, "\n\n"]
    for shot in shots:
        solution = strip_calculator(shot.solution).strip()
        parts.append(f"Question: {shot.question.strip()}\nAnswer: {solution}\n\n")
    parts.append(f"Question: {question.strip()}\nAnswer:")
    return "".join(parts)


_CALC_RE = re.compile(r"<<[^<>]*>>")


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations: ``"48/2 = <<48/2=24>>24"`` -> ``"48/2 = 24"``."""
    return _CALC_RE.sub("", text)
