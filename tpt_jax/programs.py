"""Code tasks' verification: the program in a completion, run against a problem's tests in the
sandbox. Pure Python over `tpt_jax.sandbox` (no JAX).

Two test styles, as the code datasets have them:
- stdin/stdout (CodeContests): each test is `{"input": str, "output": str}`; the program reads
  the input and passes when its stdout equals the output up to whitespace at line ends and
  trailing blank lines (the usual judge rule);
- asserts (MBPP / LeetCode style): the tests are Python statements (`assert f(2) == 4`) run
  after the program in the same sandboxed process; it passes when they all hold.

A verdict says why a program failed: `no_program` (no code in the completion), `wrong`,
`timeout`, `memory`, `runtime_error` or `output_limit`, the first failing test's outcome.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tpt_jax import sandbox

__all__ = ["Limits", "Verdict", "extract_program", "outputs_match", "verify", "verify_many"]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAGS = {"python", "python3", "py", "py3"}


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 4.0  # wall time per test
    memory_mb: int = 512
    output_bytes: int = 1 << 20


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # correct, no_program, wrong, timeout, memory, runtime_error, output_limit
    detail: str = ""  # the first failing test's index and what went wrong, one line


def extract_program(text: str, language: str = "python") -> str | None:
    """The program in a completion: the last fenced block tagged `language` (python, py,
    python3), else the last untagged fenced block, else the last block of any tag (an
    unterminated fence at the end counts: generation may stop inside it); without fences,
    the whole text when it parses as Python. None when there is no program."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    tags = _PYTHON_TAGS if language == "python" else {language.lower()}
    for wanted in (lambda t: t in tags, lambda t: t == "", lambda t: True):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen and chosen[-1].strip():
            return chosen[-1].strip("\n") + "\n"
    if not blocks and language == "python" and text.strip():
        try:
            compile(text, "<completion>", "exec")
        except (SyntaxError, ValueError):
            return None
        return text.strip("\n") + "\n"
    return None


def outputs_match(got: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""

    def lines(s: str) -> list[str]:
        out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(expected)


def verify(
    text: str,
    tests: Sequence[Mapping[str, str]] | Sequence[str],
    limits: Limits = Limits(),
    *,
    language: str = "python",
) -> Verdict:
    """Run the program in `text` against `tests` (stdin/stdout dicts, or assert statements);
    stops at the first failing test."""
    program = extract_program(text, language)
    if program is None:
        return Verdict(False, "no_program")
    if tests and isinstance(tests[0], str):  # asserts: one run, the tests after the program
        source = program + "\n" + "\n".join(str(t) for t in tests) + "\n"
        return _judge(_run(source, "", limits), None, 0)
    for i, test in enumerate(tests):
        assert isinstance(test, Mapping)
        verdict = _judge(_run(program, test["input"], limits), test["output"], i)
        if not verdict.correct:
            return verdict
    return Verdict(True, "correct")


def verify_many(
    jobs: Iterable[tuple[str, Any]],
    verify_one: Callable[[str, Any], Verdict],
    *,
    workers: int = 4,
) -> list[Verdict]:
    """`verify_one(text, tests)` for every job, `workers` at a time, in the jobs' order. Threads
    suffice: each test runs in its own sandboxed process, the threads only wait on them."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: verify_one(*job), jobs))


def _run(source: str, stdin: str, limits: Limits) -> sandbox.Result:
    return sandbox.run(
        source, stdin, timeout_s=limits.timeout_s, memory_mb=limits.memory_mb,
        output_bytes=limits.output_bytes,
    )  # fmt: skip


def _judge(result: sandbox.Result, expected: str | None, index: int) -> Verdict:
    if result.status != "ok":
        last = (result.stderr.strip().splitlines()[-1:] or [""])[0]
        failed_assert = result.status == "runtime_error" and last.startswith("AssertionError")
        reason = "wrong" if failed_assert else result.status
        return Verdict(False, reason, f"test {index}: {last[:200]}")
    if expected is not None and not outputs_match(result.stdout, expected):
        return Verdict(False, "wrong", f"test {index}: got {result.stdout[:80]!r}")
    return Verdict(True, "correct")
