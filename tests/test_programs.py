"""Code tasks' verification: program extraction from completions, the judge's output rule, and
programs run against stdin/stdout and assert tests in the sandbox."""

from __future__ import annotations

import pytest

from tpt_jax.programs import Limits, Verdict, extract_program, outputs_match, verify, verify_many

ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]


@pytest.mark.parametrize(
    "text, program",
    [
        (f"Here:\n```python\n{ADD}```\nDone.", ADD),
        (f"```py\nprint(0)\n```\nbetter:\n```python3\n{ADD}```", ADD),  # the last tagged block
        (f"```python\n{ADD}```\n```text\n3\n```", ADD),  # a tagged block beats a later text one
        (f"```\n{ADD}```", ADD),  # untagged
        (f"Reasoning...\n```python\n{ADD}", ADD),  # generation stopped inside the fence
        (ADD, ADD),  # no fences, but the whole text is Python
        ("The answer is 3.", None),  # prose: no program
        ("```python\n\n```", None),  # an empty block
    ],
)
def test_extract_program(text: str, program: str | None) -> None:
    assert extract_program(text) == program


def test_outputs_match_like_a_judge() -> None:
    assert outputs_match("3  \n4\n\n\n", "3\n4")
    assert outputs_match("3\r\n", "3\n")
    assert not outputs_match("3 4\n", "3\n4\n")
    assert not outputs_match(" 3\n", "3\n")  # leading spaces count


def test_stdin_stdout_tests() -> None:
    assert verify(f"```python\n{ADD}```", TESTS) == Verdict(True, "correct")
    wrong = verify("```python\nprint(3)\n```", TESTS)
    assert (wrong.correct, wrong.reason) == (False, "wrong") and wrong.detail.startswith("test 1")
    assert verify("no code here", TESTS).reason == "no_program"
    crash = verify("```python\nprint(1/0)\n```", TESTS)
    assert crash.reason == "runtime_error" and "ZeroDivisionError" in crash.detail
    slow = verify("```python\nwhile True: pass\n```", TESTS, Limits(timeout_s=1.0))
    assert slow.reason == "timeout"


def test_assert_tests() -> None:
    tests = ["assert double(2) == 4", "assert double(-1) == -2"]
    assert verify("```python\ndef double(x):\n    return 2 * x\n```", tests).correct
    wrong = verify("```python\ndef double(x):\n    return x + 2\n```", tests)
    assert (wrong.correct, wrong.reason) == (False, "wrong")
    missing = verify("```python\ndef triple(x):\n    return 3 * x\n```", tests)
    assert missing.reason == "runtime_error" and "NameError" in missing.detail


def test_verify_many_keeps_the_order() -> None:
    texts = [f"```python\nprint({i})\n```" for i in range(6)]
    jobs = [(text, [{"input": "", "output": str(i % 2)}]) for i, text in enumerate(texts)]
    verdicts = verify_many(jobs, verify, workers=3)
    assert [v.correct for v in verdicts] == [True, True, False, False, False, False]
