"""Tasks: where problems come from, how they become prompts, how a completion is verified.

Every task is a task plug-in (`plugin` says the protocol: `problems(split, options)`,
`verify(text, problem)`, and loads and checks one), and each built-in task is one module:
`arithmetic` (the offline generator), `gsm8k`, `code`, `math`; `answers` is the answer tasks'
verify. `base` holds the `Problem` and `Verdict` records, `prompts` the prompts.
"""

from tpt_jax.tasks.base import Problem, ProblemList, Verdict
from tpt_jax.tasks.gsm8k import load_gsm8k, source_rows
from tpt_jax.tasks.prompts import INSTRUCTION, chat_messages, plain_prompt, strip_calculator

__all__ = [
    "INSTRUCTION",
    "Problem",
    "ProblemList",
    "Verdict",
    "chat_messages",
    "load_gsm8k",
    "plain_prompt",
    "source_rows",
    "strip_calculator",
]
