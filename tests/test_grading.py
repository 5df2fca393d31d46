"""Tests for tpt_jax.grading: answer extraction in every mode, pass@k, GSM8K references."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from tpt_jax.grading import (
    MODES,
    extract_answer,
    is_correct,
    mean_pass_at_k,
    pass_at_k,
    reference_answer,
)

# (model output, reference, strict, normalized, lenient)
CASES: list[tuple[str, str, bool, bool, bool]] = [
    (
        "Natalia sold 48/2 = 24 clips in May.\nSo she sold 72 clips.\n#### 72",
        "72",
        True,
        True,
        True,
    ),
    ("So she sold 72 clips.\n#### 72.", "72", False, True, True),
    ("Total cost is 1080 dollars.\n#### $1,080", "1080", False, True, True),
    ("Total: 1,080.\n#### 1,080", "1080", False, True, True),
    ("Total: 1,080.\n#### 1,080", "1,080", True, True, True),
    ("####72", "72", True, True, True),
    ("He is 5 dollars short.\n#### -5", "-5", True, True, True),
    ("He is 5 dollars short.\n#### -$5", "-5", False, True, True),
    ("#### 72.00", "72", False, True, True),
    ("#### 72.0", "72", False, True, True),
    ("#### 0.5", "0.5", True, True, True),
    ("#### .5", "0.5", False, True, True),
    ("#### 72.5", "72", False, False, False),
    ("She sold 48 + 24 clips. The answer is 72.", "72", False, False, True),
    ("The answer is **$72**", "72", False, False, True),
    ("the answer is: $1,080.", "1080", False, False, True),
    ("First 70, then 2 more: 72 clips in total.", "72", False, False, True),
    ("The answer is 72. Check: 72 - 48 = 24.", "72", False, False, True),
    ("The answer is 70. Actually it is 72.", "72", False, False, False),
    ("#### 72\n#### 73", "72", True, True, True),
    ("#### 73\n#### 72", "72", False, False, False),
    ("#### seventy-two", "72", False, False, False),
    ("So 72 in total.\n#### seventy-two", "72", False, False, False),
    # The authors' search passes over a "####" without a number, and "\s" includes newlines.
    ("#### seventy-two\n#### 72", "72", True, True, True),
    ("####\n7", "7", True, True, True),
    ("#### Step 1: 3 + 4.\n#### 7", "7", True, True, True),
    ("Sum:\n####\n\n  1,080\n", "1,080", True, True, True),
    ("####, 7", "7", False, False, False),  # the first match is ","
    ("#### 72 then #### 9", "72", True, True, True),
    ("", "72", False, False, False),
    ("I cannot solve this.", "72", False, False, False),
    ("#### 72 clips", "72", True, True, True),
    ("####   72\n", "72", True, True, True),
    ("#### €72", "72", False, True, True),
    ("#### £ 1,000,000", "1000000", False, True, True),
    ("#### 71", "72", False, False, False),
    ("#### 720", "72", False, False, False),
    ("There are 5-3 = 2 left", "2", False, False, True),
    ("It dropped to -3 degrees", "-3", False, False, True),
    ("Total 1,080 dollars", "1080", False, False, True),
]

STOP = ("<|im_end|>", "\nQuestion:")
# (model output, reference, strict, normalized, lenient) graded with stop_strings=STOP
STOP_CASES: list[tuple[str, str, bool, bool, bool]] = [
    ("#### 72<|im_end|>#### 73", "72", True, True, True),
    ("Thinking...<|im_end|>\n#### 72", "72", False, False, False),
    ("The answer is 72.\nQuestion: next one\n#### 9", "72", False, False, True),
    ("The answer is 72.\nQuestion: next one\n#### 9", "9", False, False, False),
    ("<|im_end|>", "72", False, False, False),
]


@pytest.mark.parametrize(("text", "ref", "strict", "normalized", "lenient"), CASES)
def test_verdicts(text: str, ref: str, strict: bool, normalized: bool, lenient: bool) -> None:
    expected = {"strict": strict, "normalized": normalized, "lenient": lenient}
    got = {mode: is_correct(text, ref, mode) for mode in MODES}
    assert got == expected


@pytest.mark.parametrize(("text", "ref", "strict", "normalized", "lenient"), STOP_CASES)
def test_verdicts_with_stop_strings(
    text: str, ref: str, strict: bool, normalized: bool, lenient: bool
) -> None:
    expected = {"strict": strict, "normalized": normalized, "lenient": lenient}
    got = {mode: is_correct(text, ref, mode, stop_strings=STOP) for mode in MODES}
    assert got == expected


def test_stop_strings_earliest_wins_and_empty_ignored() -> None:
    text = "#### 1\nQuestion: x <|im_end|> #### 2"
    assert extract_answer("A\nQuestion: #### 3 <|im_end|>", "strict", STOP) is None
    assert extract_answer(text, "strict", STOP) == "1"
    assert extract_answer("#### 5", "strict", ("",)) == "5"
    assert extract_answer("x <|im_end|> #### 5", "strict", "<|im_end|>") is None


def test_extract_answer_forms() -> None:
    assert extract_answer("#### 1,080") == "1,080"
    assert extract_answer("#### 72.") == "72."
    assert extract_answer("#### $1,080") is None
    assert extract_answer("#### $1,080", "normalized") == "1080"
    assert extract_answer("#### 72.00", "normalized") == "72"
    assert extract_answer("#### -0", "normalized") == "0"
    assert extract_answer("#### 0.50", "normalized") == "0.5"
    assert extract_answer("#### 100", "normalized") == "100"
    assert extract_answer("#### 1e5", "normalized") == "1"
    assert extract_answer("#### ...", "normalized") is None
    assert extract_answer("#### 1.2.3", "normalized") is None
    assert extract_answer("#### seventy-two", "lenient") is None
    assert extract_answer("no marker, 3 then 4.", "lenient") == "4"
    assert extract_answer("no marker, 3 then 4.", "normalized") is None
    assert extract_answer("no marker, 3 then 4.", "strict") is None
    assert extract_answer("The ANSWER IS -12", "lenient") == "-12"


def test_whole_text_is_graded() -> None:
    long_text = "word " * 50_000 + "\n#### 72"
    assert is_correct(long_text, "72", "strict")
    assert extract_answer("x " * 50_000 + "7", "lenient") == "7"


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="strict, normalized, lenient"):
        extract_answer("#### 1", "exact")
    with pytest.raises(ValueError, match="valid modes"):
        is_correct("#### 1", "1", "fuzzy")


def test_non_numeric_reference() -> None:
    assert not is_correct("#### 72", "seventy-two", "strict")
    with pytest.raises(ValueError, match="not a number"):
        is_correct("#### 72", "seventy-two", "normalized")


def test_reference_answer() -> None:
    assert reference_answer("48/2 = 24\n#### 1,080") == "1,080"  # as the data writes it
    assert reference_answer("#### 72\n") == "72"
    assert reference_answer("a #### 1\nb #### 2") == "2"
    with pytest.raises(ValueError, match="no '#### <answer>'"):
        reference_answer("Natalia sold 72 clips.")
    with pytest.raises(ValueError, match="Natalia"):
        reference_answer("Natalia sold 72 clips.\n####  ")


def _gsm8k(split: str) -> Path | None:
    candidates = [
        Path(__file__).resolve().parents[2] / f"shared/data/gsm8k/{split}.jsonl",
        Path(f"/work/shared/data/gsm8k/{split}.jsonl"),
    ]
    return next((p for p in candidates if p.is_file()), None)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_reference_grades_correct_against_its_own_answer(split: str) -> None:
    path = _gsm8k(split)
    if path is None:
        pytest.skip(f"GSM8K {split}.jsonl not available")
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    with_commas = 0
    for record in records:
        solution = record["answer"]  # raw, calculator annotations and all
        ref = reference_answer(solution)
        with_commas += "," in ref
        for mode in MODES:
            assert is_correct(solution, ref, mode), (mode, ref, solution[-60:])
        if "," in ref:  # the authors' strict rule keeps the separator on both sides
            assert not is_correct(solution, ref.replace(",", ""), "strict")
    assert with_commas == {"train": 79, "test": 14}[split]


def _brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(samples[i] for i in subset) for subset in subsets)
    return Fraction(hits, len(subsets))


def test_pass_at_k_matches_brute_force() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = float(_brute_force_pass_at_k(n, c, k))
                assert pass_at_k(n, c, k) == expected, (n, c, k)


def test_pass_at_k_edges() -> None:
    for n in (1, 5, 200):
        for k in (1, n):
            assert pass_at_k(n, 0, k) == 0.0
            assert pass_at_k(n, n, k) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # Large n stays exact and finite (no overflow from huge binomials).
    assert 0.0 < pass_at_k(10_000, 1, 5_000) <= 1.0
    assert pass_at_k(10_000, 1, 5_000) == 0.5
    assert math.isclose(pass_at_k(1000, 1, 1), 0.001)
    for bad in [(5, 2, 6), (5, 6, 1), (5, -1, 1), (5, 2, 0), (0, 0, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_mean_pass_at_k() -> None:
    counts = [(4, 0), (4, 4), (4, 1)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0 + 1 + 0.25) / 3)
    assert mean_pass_at_k(counts, 2) == pytest.approx((0 + 1 + 0.5) / 3)
    assert mean_pass_at_k([(3, 1)], 3) == 1.0
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)
    with pytest.raises(ValueError):
        mean_pass_at_k([(2, 1)], 3)
