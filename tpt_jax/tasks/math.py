"""The MATH task: competition problems whose solutions end in `\\boxed{...}`, graded by
mathematical equivalence. A task plug-in shipped with the package (`task.name: math`).

`task.options`:
    source: where the problems are (required): `hf:NAME` through `datasets` (e.g.
            `hf:EleutherAI/hendrycks_math` with `config: algebra`, or a local copy in the hub's
            layout), a directory holding SPLIT.jsonl or SPLIT.parquet, or one such file;
            rows in MATH's layout: `problem`, `solution` (ending in \\boxed{...}), optional
            `answer` (MATH-500 has it), `level`, `type`, `unique_id`;
    config: the `datasets` config name, if the hub dataset has several.

Grading: the completion's last `\\boxed{...}` against the reference (the `answer` field, else the
solution's last box). With `math-verify` installed (`pip install -e '.[math]'`), equivalence is
its parse-and-compare (fractions, decimals, LaTeX forms, sets and intervals); without it, a
fallback compares the two after normalising LaTeX spacing and wrappers (`\\left`, `\\dfrac`,
`\\text{}`, degrees, dollars) and as numbers when both are numbers or simple fractions. The
fallback is stricter: it misses equivalences that need algebra (`2\\sqrt{2}` vs `\\sqrt{8}`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any

from tpt_jax.errors import TptError
from tpt_jax.tasks.gsm8k import source_rows

INSTRUCTION = (
    "Solve the following math problem step by step. Put the final answer in \\boxed{} at the "
    "end of your solution."
)


def problems(split: str, options: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    source = options.get("source")
    if not source:
        raise TptError("task.options.source is required for the math task (hf:NAME or a path)")
    _, rows, _ = source_rows(source, split, hf_default="", hf_config=options.get("config"))
    for number, (where, row) in enumerate(rows):
        if isinstance(row, Exception):  # a line that is not JSON or not UTF-8
            raise TptError(f"{where}: {row}")
        if not isinstance(row, dict) or not isinstance(row.get("problem"), str):
            raise TptError(f"{where}: a MATH row needs 'problem' and 'solution'")
        solution = row.get("solution")
        answer = row.get("answer") or (last_boxed(solution) if isinstance(solution, str) else None)
        if not answer:
            raise TptError(f"{where}: no 'answer' and no \\boxed{{}} in the solution")
        ident = row.get("unique_id") or f"{split}/{number}"
        yield {"id": str(ident), "question": row["problem"], "answer": str(answer),
               "solution": solution if isinstance(solution, str) else "",
               "level": row.get("level"), "type": row.get("type")}  # fmt: skip


def verify(text: str, problem: Mapping[str, Any]) -> dict[str, Any]:
    got = last_boxed(text)
    if got is None:
        return {"correct": False, "reason": "no_answer"}
    return {"correct": equivalent(got, str(problem["answer"])), "reason": "checked"}


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[brace + 1 : i].strip()
    return None  # unbalanced: generation stopped inside the box


def equivalent(answer: str, reference: str) -> bool:
    """Whether two final answers are the same mathematical object (see the module docstring)."""
    try:
        from math_verify import parse, verify  # optional: the `math` extra
    except ImportError:
        return _fallback_equal(answer, reference)
    gold, guess = parse(f"${reference}$"), parse(f"${answer}$")
    if gold and guess:
        return bool(verify(gold, guess))
    return _fallback_equal(answer, reference)


_WRAPPERS = [
    (r"\\left|\\right|\\!|\\,|\\;|\\:|\\ ", ""),
    (r"\\[dt]frac", r"\\frac"),
    (r"\^\{?\\circ\}?|°", ""),
    (r"\\text\{\s*([^{}]*)\}|\\mathrm\{\s*([^{}]*)\}|\\textbf\{\s*([^{}]*)\}", r"\1\2\3"),
    (r"\\\$|\$", ""),
    (r"\s+", ""),
]


def _normalise(s: str) -> str:
    for pattern, repl in _WRAPPERS:
        s = re.sub(pattern, repl, s)
    return s.rstrip(".").replace("\\{", "{").replace("\\}", "}")


def _number(s: str) -> Fraction | None:
    s = s.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else s
    frac = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?)\\frac(\d)(\d)", s)
    try:
        if frac:
            sign, num, den, sign2, n2, d2 = frac.groups()
            value = Fraction(int(num or n2), int(den or d2))
            return -value if (sign or sign2) else value
        if re.fullmatch(r"-?\d+(\.\d+)?(/\d+)?|-?\.\d+", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _fallback_equal(answer: str, reference: str) -> bool:
    a, b = _normalise(answer), _normalise(reference)
    if a == b:
        return True
    x, y = _number(a), _number(b)
    return x is not None and x == y
