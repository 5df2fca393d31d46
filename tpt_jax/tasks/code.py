"""The code task: programs pruned by running them against each problem's tests in the sandbox.

It is a task plug-in like a user's (`problems(split, options)`, `verify(text, problem)`), shipped
with the package: `task.name: code` loads this module. `task.options`:

    source:  "generated" (default: the offline generator below); `hf[:NAME]` through `datasets`
             (default NAME deepmind/code_contests); a directory holding SPLIT.jsonl or
             SPLIT.parquet, or one such file; in either layout:
             - CodeContests: description, public_tests / private_tests / generated_tests
               ({"input": [...], "output": [...]}), solutions ({"language": [...],
               "solution": [...]}, Python 3 is language 3);
             - MBPP / LeetCode: text (or prompt), test_list (assert statements), optional
               test_setup_code and code (a reference solution);
    tests:   which CodeContests tests verify: "public", "private", "generated" or "all"
             (default "all": a program passes when it passes every test the problem has);
    timeout_s, memory_mb: the sandbox's limits per test (default 4 s, 512 MiB);
    train, test, levels, seed: the generator's sizes, difficulty levels and seed.

Verdict reasons: correct, no_program, wrong, timeout, memory, runtime_error, output_limit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

from tpt_jax.errors import TptError
from tpt_jax.programs import Limits
from tpt_jax.programs import verify as verify_program
from tpt_jax.tasks.gsm8k import source_rows

INSTRUCTION = (
    "Solve the following programming problem in Python 3. The program reads its input from "
    "standard input and writes the answer to standard output. Give the complete program in one "
    "```python code block."
)
_PYTHON3 = 3  # CodeContests' language id for Python 3
PARALLEL_VERIFY = True  # verify only waits on sandboxed processes: a thread per core
_TEST_KINDS = ("public", "private", "generated")


def problems(split: str, options: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    limits = {"timeout_s": float(options.get("timeout_s", 4.0))}
    limits["memory_mb"] = int(options.get("memory_mb", 512))
    for row in _rows(split, options):
        yield {**row, **limits}  # each row carries its limits to verify


def _rows(split: str, options: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    source = options.get("source", "generated")
    if source == "generated":
        yield from generate(split, options)
        return
    kinds = _test_kinds(options.get("tests", "all"))
    _, rows, _ = source_rows(source, split, hf_default="deepmind/code_contests", hf_config=None)
    for number, (where, row) in enumerate(rows, 1):
        if isinstance(row, Exception):  # a line that is not JSON or not UTF-8
            raise TptError(f"{where}: {row}")
        if not isinstance(row, dict):
            raise TptError(f"{where}: a row must be an object")
        yield _row(row, kinds, where, split, number)


def verify(text: str, problem: Mapping[str, Any]) -> Any:
    limits = Limits(
        timeout_s=float(problem.get("timeout_s", 4.0)), memory_mb=int(problem.get("memory_mb", 512))
    )
    return verify_program(text, problem["tests"], limits)


# --- the offline generator ------------------------------------------------------------------
# Small stdin/stdout problems with known solutions, by level: 1 is one operation over a list,
# 2 combines two, 3 adds a condition. Seeded; train and test draw from separate streams.

_LEVELS: dict[int, list[tuple[str, Any]]] = {
    1: [
        ("the sum of the numbers", lambda xs: sum(xs)),
        ("the largest number", lambda xs: max(xs)),
        ("the smallest number", lambda xs: min(xs)),
        ("how many numbers there are", lambda xs: len(xs)),
    ],
    2: [
        ("the sum of the squares of the numbers", lambda xs: sum(x * x for x in xs)),
        ("the largest number minus the smallest", lambda xs: max(xs) - min(xs)),
        ("the product of the first and the last number", lambda xs: xs[0] * xs[-1]),
    ],
    3: [
        ("the sum of the even numbers", lambda xs: sum(x for x in xs if x % 2 == 0)),
        ("how many numbers are larger than the first one", lambda xs: sum(x > xs[0] for x in xs)),
        (
            "the numbers in increasing order, separated by spaces",
            lambda xs: " ".join(map(str, sorted(xs))),
        ),
    ],
}


def generate(split: str, options: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    count = int(options.get(split, 100 if split == "train" else 50))
    levels = [int(x) for x in options.get("levels", [1, 2])]
    rng = random.Random(f"code/{options.get('seed', 0)}/{split}")
    for i in range(count):
        level = levels[i % len(levels)]
        what, solve = rng.choice(_LEVELS[level])
        tests = []
        for _ in range(4):
            xs = [rng.randint(-20, 50) for _ in range(rng.randint(1, 8))]
            stdin = f"{len(xs)}\n{' '.join(map(str, xs))}\n"
            tests.append({"input": stdin, "output": f"{solve(xs)}\n"})
        question = (
            "The first line of the input holds a number n; the second line holds n integers "
            f"separated by spaces. Print {what}."
        )
        yield {
            "id": f"code/{split}/L{level}/{i}",
            "question": question,
            "answer": tests[0]["output"].strip(),  # the first test's output, for reports
            "tests": tests,
            "level": level,
        }


# --- loaders ---------------------------------------------------------------------------------


def _test_kinds(value: Any) -> tuple[str, ...]:
    if value == "all":
        return _TEST_KINDS
    if value in _TEST_KINDS:
        return (value,)
    raise TptError(
        f"task.options.tests must be one of all, {', '.join(_TEST_KINDS)}, got {value!r}"
    )


def _row(row: dict[str, Any], kinds: tuple[str, ...], where: str, split: str, number: int) -> dict:
    if "test_list" in row:  # MBPP / LeetCode: asserts
        question = row.get("text") or row.get("prompt")
        tests = [row.get("test_setup_code") or ""] + list(row["test_list"])
        tests = [t for t in tests if t]
        ident = row.get("task_id", number)
        if not tests:
            raise TptError(f"{where}: empty test_list")
        # The asserts name the function to write: show the first, as MBPP's prompt does.
        question = f"{question}\nYour code should pass this test:\n{row['test_list'][0]}"
        answer = row.get("code", "")
    elif "description" in row:  # CodeContests: stdin/stdout
        question, ident = row["description"], row.get("name", number)
        tests = []
        for kind in kinds:
            block = row.get(f"{kind}_tests") or {}
            tests += [
                {"input": i, "output": o}
                for i, o in zip(block.get("input", []), block.get("output", []), strict=True)
            ]
        if not tests:
            raise TptError(f"{where}: no {'/'.join(kinds)} tests")
        solutions = row.get("solutions") or {}
        python = [
            s
            for lang, s in zip(
                solutions.get("language", []), solutions.get("solution", []), strict=True
            )
            if lang == _PYTHON3
        ]
        answer = python[0] if python else ""
    else:
        raise TptError(
            f"{where}: neither CodeContests (description, *_tests) nor MBPP (text, test_list)"
        )
    if not isinstance(question, str) or not question.strip():
        raise TptError(f"{where}: the problem statement is empty")
    return {"id": f"{split}/{ident}", "question": question, "answer": answer, "tests": tests}
