r"""Grading of GSM8K-style answers, and the unbiased pass@k estimator.

Pure Python (no JAX): this module sits at layer 0 and can be imported anywhere.

A model's output is graded against a reference answer string (see :func:`reference_answer`,
which takes it from a GSM8K reference solution as the data writes it: ``"... #### 1,080"`` gives
``"1,080"``). Before anything
else the text is cut at the first occurrence of any of the given ``stop_strings``; the rest of
the text (all of it, however long) is what gets graded.

Modes
-----
All three modes find the answer the same way, the authors' way: the FIRST match anywhere in the
text of ``####\s*(-?[\d.,]+)`` (Python ``re.search``; ``\s`` includes newlines, and a ``####``
with no number after it is passed over in favour of a later one). They differ in how they
compare it with the reference.

``strict``
    The authors' rule exactly. The captured string, stripped, must equal the reference string as
    it stands after ``####`` in the data: ``"#### 1,080"`` matches the reference ``"1,080"`` but
    not ``"1080"``, and ``"#### 72."`` does not match ``"72"``.
``normalized``
    The same search, except that a currency sign (``$``, ``€``, ``£``, optionally after a minus
    sign) may precede the number. Answer and reference are compared as exact decimals
    (:class:`decimal.Decimal`, no float tolerance) after dropping thousands separators, a
    trailing period and trailing zeros after the decimal point. The extracted answer is returned
    in canonical form (``"1080"``, ``"-5"``, ``"0.5"``).
``lenient``
    ``normalized``, and only when that search finds nothing, two fallbacks: the last "the answer
    is N" (case-insensitive; ``:``, ``**`` and a currency sign are allowed around N), then the last
    number anywhere in the text. A text whose ``####`` has no number after it anywhere
    (``"#### seventy-two"``) gets no answer: the model committed to that format and failed it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = [
    "MODES",
    "extract_answer",
    "is_correct",
    "mean_pass_at_k",
    "pass_at_k",
    "reference_answer",
]

MODES: tuple[str, ...] = ("strict", "normalized", "lenient")

_MARKER = "####"
# The authors' pattern, searched (not matched) so that it may start anywhere.
_STRICT_RE = re.compile(r"####\s*(-?[\d.,]+)")
_NORMALIZED_RE = re.compile(r"####\s*(?:(?P<neg>-)?\s*[$€£]\s*)?(?P<num>-?[\d.,]+)")
# A number as written in prose: optional minus (not part of a word or range like "5-3"),
# integer part with or without well-formed thousands separators, optional decimals.
_PROSE_NUMBER = r"(?:(?<![\w-])-)?(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_ANSWER_IS_RE = re.compile(
    r"the answer is[ \t]*:?[ \t]*(?:\*\*)?[ \t]*(?P<neg>-)?[ \t]*[$€£]?[ \t]*(?:\*\*)?[ \t]*"
    r"(?P<num>-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)",
    re.IGNORECASE,
)
_LAST_NUMBER_RE = re.compile(_PROSE_NUMBER)
_CANONICAL_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown grading mode {mode!r}; valid modes: {', '.join(MODES)}")


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text up to (not including) the earliest occurrence of any non-empty stop string."""
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    end = len(text)
    for stop in stop_strings:
        if stop:
            i = text.find(stop, 0, end)
            if i != -1:
                end = i
    return text[:end]


def _to_decimal(raw: str, negate: bool = False) -> Decimal | None:
    """Parse a number written with optional thousands commas and a trailing period."""
    s = raw.replace(",", "").rstrip(".")
    if negate:
        if s.startswith("-"):
            return None
        s = "-" + s
    if not _CANONICAL_RE.fullmatch(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:  # pragma: no cover - the regex already guarantees a valid literal
        return None


def _canonical(d: Decimal) -> str:
    """``72.00`` -> ``"72"``, ``-0`` -> ``"0"``, ``0.50`` -> ``"0.5"``; never an exponent."""
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _numeric_answer(text: str, lenient: bool) -> Decimal | None:
    m = _NORMALIZED_RE.search(text)
    if m is not None:
        return _to_decimal(m["num"], negate=m["neg"] is not None)
    if not lenient or _MARKER in text:
        return None
    matches = list(_ANSWER_IS_RE.finditer(text))
    if matches:
        last = matches[-1]
        return _to_decimal(last["num"], negate=last["neg"] is not None)
    numbers = _LAST_NUMBER_RE.findall(text)
    if numbers:
        return _to_decimal(numbers[-1])
    return None


def extract_answer(text: str, mode: str = "strict", stop_strings: Sequence[str] = ()) -> str | None:
    """The answer found in ``text`` under ``mode`` (see the module docstring), or ``None``.

    ``strict`` returns the number verbatim (``"1,080"``, ``"72."``); ``normalized`` and
    ``lenient`` return it in canonical form (``"1080"``, ``"72"``).
    """
    _check_mode(mode)
    text = _cut_at_stop(text, stop_strings)
    if mode == "strict":
        m = _STRICT_RE.search(text)
        return m.group(1).strip() if m is not None else None
    value = _numeric_answer(text, lenient=mode == "lenient")
    return None if value is None else _canonical(value)


def is_correct(
    text: str, reference: str, mode: str = "strict", stop_strings: Sequence[str] = ()
) -> bool:
    """Whether ``text`` answers ``reference`` under ``mode``.

    In ``strict`` mode the extracted number must equal ``reference.strip()`` as a string (keep
    the reference as the data writes it, thousands separators included). In the
    other modes both are compared as exact decimals; a reference that is not a number is a
    ValueError (it is a data bug, not a wrong answer).
    """
    _check_mode(mode)
    if mode == "strict":
        got = extract_answer(text, "strict", stop_strings)
        return got is not None and got == reference.strip()
    ref = reference.strip()
    ref_value = None
    m = re.fullmatch(r"(?:(-)?[ \t]*[$€£][ \t]*)?(-?[\d.,]+)", ref)
    if m is not None:
        ref_value = _to_decimal(m.group(2), negate=m.group(1) is not None)
    if ref_value is None:
        raise ValueError(f"reference answer {reference!r} is not a number")
    value = _numeric_answer(_cut_at_stop(text, stop_strings), lenient=mode == "lenient")
    return value is not None and value == ref_value


def reference_answer(solution: str) -> str:
    """The final answer of a GSM8K reference solution as the data writes it: the text after the
    last ``####``, stripped (``"... #### 1,080"`` -> ``"1,080"``; strict grading compares with
    this string, as the authors' scripts do)."""
    head, marker, tail = solution.rpartition(_MARKER)
    answer = tail.strip()
    if not marker or not answer:
        snippet = solution.strip().replace("\n", " ")
        if len(snippet) > 80:
            snippet = snippet[:77] + "..."
        raise ValueError(f"GSM8K solution has no '#### <answer>' line: {snippet!r}")
    return answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed exactly (integer binomials, one rounding at the end).
    """
    if n < 1:
        raise ValueError(f"pass@k needs n >= 1 samples, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    return float(_pass_at_k_exact(n, c, k))


def _pass_at_k_exact(n: int, c: int, k: int) -> Fraction:
    if n - c < k:
        return Fraction(1)
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems; ``counts`` holds one ``(n, c)`` pair per problem."""
    if len(counts) == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    for n, c in counts:
        pass_at_k(n, c, k)  # validates
    total = sum((_pass_at_k_exact(n, c, k) for n, c in counts), Fraction(0))
    return float(total / len(counts))
