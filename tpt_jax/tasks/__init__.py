"""Tasks: where problems come from, how they become prompts, how a completion is verified.

One module per task: `arithmetic` (the built-in generator), `gsm8k`, `code`, `math`, and
`plugin` (a user's task, and the protocol `code` and `math` follow too: `problems(split,
options)`, `verify(text, problem)`). `base` holds the `Problem` record, `prompts` the prompts.
"""

from tpt_jax.tasks.base import Problem, ProblemList
from tpt_jax.tasks.gsm8k import load_gsm8k, source_rows
from tpt_jax.tasks.prompts import INSTRUCTION, chat_messages, plain_prompt, strip_calculator

__all__ = [
    "INSTRUCTION",
    "Problem",
    "ProblemList",
    "chat_messages",
    "load_gsm8k",
    "plain_prompt",
    "source_rows",
    "strip_calculator",
]
