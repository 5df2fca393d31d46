"""Reasoning tasks: GSM8K loading, an offline generator of graded arithmetic word problems, and
the prompts the model sees.

Pure Python (no JAX): this module sits at layer 0 and imports only the standard library,
:mod:`tpt_jax.errors` and :mod:`tpt_jax.grading` (``datasets`` and ``pyarrow`` are imported lazily,
only by the loaders that need them).

Problems
--------
A :class:`Problem` holds a question, its reference answer string (what ``grading``'s strict mode
compares against) and a worked solution in GSM8K format: one calculation per line, calculator
annotations ``<<...>>`` removed, and a last line ``#### <answer>``.

GSM8K
-----
:func:`load_gsm8k` reads a split from a directory holding ``{split}.jsonl`` or
``{split}.parquet``, from one ``.jsonl`` / ``.parquet`` file, or from the Hugging Face hub
(``"hf"`` or ``"hf:OWNER/NAME"``, through ``datasets.load_dataset(NAME, "main", split=split)``;
``NAME`` may also be a local dataset directory). Ids are ``gsm8k/{split}/{i}`` with ``i`` the
0-based row index in the source (a row's own ``id`` field, if it has one, is used instead of
``i``). The reference answer is ``grading.reference_answer`` of the solution (``"1,080"`` ->
``"1080"``) and the solution's last line is rewritten to ``#### <answer>`` so that the solution
itself grades as correct under the strict mode.

Bad input raises :class:`~tpt_jax.errors.TptError` with one line naming the file and the line
(``train.jsonl:17: not valid JSON``; Parquet and hub rows are named ``train.parquet: row 16``,
0-based like the ids). With ``on_bad_line="skip"`` bad rows are left out instead; the returned
:class:`ProblemList` (a ``list``) then tells how many in ``.skipped`` and why in ``.skip_reasons``.
A split with no problems left is an error in both modes.

Generated problems
------------------
:func:`generate_problems` makes seeded, deterministic grade-school word problems whose answers
are exact non-negative integers (every intermediate value is an integer from 1 to 999). The
``level`` of a problem is its number of arithmetic steps: its solution has exactly ``level``
lines of the form ``... a op b = c ...`` (``op`` one of ``+ - * /``, money written ``$a``), then
``#### c``. Train and test never share a question: a question belongs to the test split if and
only if :func:`split_of` (a hash of its text) says so, and generation for a split rejects every
candidate of the other split.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpt_jax.errors import TptError
from tpt_jax.grading import reference_answer

__all__ = [
    "INSTRUCTION",
    "Problem",
    "ProblemList",
    "chat_messages",
    "generate_problems",
    "load_gsm8k",
    "plain_prompt",
    "split_of",
    "strip_calculator",
]


@dataclass(frozen=True)
class Problem:
    """One problem with a known answer."""

    id: str  # stable and unique within a split: "gsm8k/train/42", "arith/test/L2/3f9c0a1b2d4e"
    question: str
    answer: str  # the reference answer as grading's strict mode compares it ("1080")
    solution: str  # worked solution, no <<...>> annotations, last line "#### <answer>"
    level: int | None = None  # arithmetic steps of a generated problem; None for GSM8K


class ProblemList(list):
    """A ``list`` of :class:`Problem` that also says how many bad rows a loader skipped."""

    skipped: int
    skip_reasons: list[str]

    def __init__(self, problems: Sequence[Problem] = (), skip_reasons: Sequence[str] = ()):
        super().__init__(problems)
        self.skip_reasons = list(skip_reasons)
        self.skipped = len(self.skip_reasons)


# --------------------------------------------------------------------------------------------
# Prompts

INSTRUCTION = (
    "You are an expert mathematician. Solve the following problem step by step, showing each "
    "calculation. Then write the final answer, just the number, on its own last line in the "
    "form #### <number>."
)


def chat_messages(question: str) -> list[dict[str, str]]:
    """One user turn: :data:`INSTRUCTION`, a blank line, then the question."""
    return [{"role": "user", "content": f"{INSTRUCTION}\n\n{question.strip()}"}]


def plain_prompt(question: str, shots: Sequence[Problem] = ()) -> str:
    """A plain-text prompt for base models without a chat template: :data:`INSTRUCTION`, then
    ``"Question: ...\\nAnswer: <solution>\\n\\n"`` per shot (annotations removed), then the
    question and ``"Answer:"``."""
    parts = [INSTRUCTION, "\n\n"]
    for shot in shots:
        solution = strip_calculator(shot.solution).strip()
        parts.append(f"Question: {shot.question.strip()}\nAnswer: {solution}\n\n")
    parts.append(f"Question: {question.strip()}\nAnswer:")
    return "".join(parts)


_CALC_RE = re.compile(r"<<[^<>]*>>")


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations: ``"48/2 = <<48/2=24>>24"`` -> ``"48/2 = 24"``."""
    return _CALC_RE.sub("", text)


# --------------------------------------------------------------------------------------------
# GSM8K loading

_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_ON_BAD_LINE = ("fail", "skip")
_HF_DEFAULT = "openai/gsm8k"


class _BadRow(Exception):
    """One bad row: the message without the location."""


def _expected(split: str) -> str:
    return (
        f"expected a directory holding {split}.jsonl or {split}.parquet, a GSM8K .jsonl or "
        "'.parquet' file, or 'hf[:OWNER/NAME]'"
    )


def _problem_from_row(row: Any, split: str, index: int) -> tuple[str, Problem]:
    """(id, Problem) from one parsed row, or _BadRow."""
    if not isinstance(row, dict):
        raise _BadRow(
            f"expected a JSON object with 'question' and 'answer', got {type(row).__name__}"
        )
    fields = {}
    for key in ("question", "answer"):
        if key not in row or row[key] is None:
            raise _BadRow(f"missing field {key!r}")
        value = row[key]
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _BadRow(f"field {key!r} is not valid UTF-8 ({e.reason})") from None
        if not isinstance(value, str):
            raise _BadRow(f"field {key!r} is not a string ({type(value).__name__})")
        if not value.strip():
            raise _BadRow(f"field {key!r} is empty")
        fields[key] = value
    solution = strip_calculator(fields["answer"]).strip()
    try:
        answer = reference_answer(solution)
    except ValueError:
        raise _BadRow("field 'answer' has no '#### <number>' final line") from None
    if not _NUMBER_RE.fullmatch(answer):
        raise _BadRow(f"reference answer {answer!r} after '####' is not a number")
    head = solution.rpartition("####")[0].rstrip()
    solution = f"{head}\n#### {answer}" if head else f"#### {answer}"
    key = row.get("id")
    ident = f"gsm8k/{split}/{index if key is None else key}"
    return ident, Problem(ident, fields["question"].strip(), answer, solution)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed row or _BadRow) for each non-blank line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TptError(f"{path}: cannot read ({e.strerror})") from None
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, _BadRow(f"not valid UTF-8 (byte {e.start})")
            continue
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError:
            yield where, _BadRow("not valid JSON")


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TptError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TptError(f"{path}: not a readable Parquet file ({msg})") from None
    for key in ("question", "answer"):
        if key not in table.column_names:
            raise TptError(f"{path}: missing column {key!r} (columns: {table.column_names})")
    names = ["question", "answer"] + (["id"] if "id" in table.column_names else [])
    columns = {}
    for name in names:
        column = table.column(name)
        try:
            columns[name] = column.to_pylist()
        except Exception:  # invalid UTF-8 in a string column: read the raw bytes instead
            import pyarrow as pa

            columns[name] = column.cast(pa.binary()).to_pylist()
    for i in range(table.num_rows):
        yield f"{path}: row {i}", {name: columns[name][i] for name in names}


def _hf_rows(name: str, split: str) -> Iterator[tuple[str, Any]]:
    label = f"hf:{name}"
    try:
        import datasets
    except ImportError:
        raise TptError(
            f"{label}: loading from the Hugging Face hub needs the 'datasets' package "
            "(pip install datasets)"
        ) from None
    try:
        ds = datasets.load_dataset(name, "main", split=split)
    except Exception as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise TptError(f"{label}: cannot load split {split!r} of config 'main': {msg}") from None
    for i, row in enumerate(ds):
        yield f"{label}[{split}]: row {i}", row


def _source_rows(source: str | Path, split: str) -> tuple[str, Iterator[tuple[str, Any]]]:
    text = str(source)
    if text == "hf" or text.startswith("hf:"):
        name = text[3:] or _HF_DEFAULT
        return f"hf:{name}[{split}]", _hf_rows(name, split)
    path = Path(source)
    if path.is_dir():
        for suffix in (".jsonl", ".parquet"):
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                path = candidate
                break
        else:
            raise TptError(f"{source}: no {split}.jsonl or {split}.parquet in this directory")
    elif not path.exists():
        raise TptError(f"{source}: no such file or directory ({_expected(split)})")
    if path.suffix == ".jsonl":
        return str(path), _jsonl_rows(path)
    if path.suffix == ".parquet":
        return str(path), _parquet_rows(path)
    raise TptError(f"{path}: unknown file type ({_expected(split)})")


def load_gsm8k(source: str | Path, split: str, *, on_bad_line: str = "fail") -> ProblemList:
    """Problems of one GSM8K split (see the module docstring for sources, ids and errors).

    ``on_bad_line="fail"`` (default) raises TptError at the first bad row; ``"skip"`` leaves bad
    rows out and reports them in the result's ``.skipped`` / ``.skip_reasons``.
    """
    if on_bad_line not in _ON_BAD_LINE:
        raise TptError(f"on_bad_line must be 'fail' or 'skip', got {on_bad_line!r}")
    label, rows = _source_rows(source, split)
    problems: list[Problem] = []
    reasons: list[str] = []
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        try:
            if isinstance(row, _BadRow):
                raise row
            ident, problem = _problem_from_row(row, split, index)
            if ident in seen:
                raise _BadRow(f"duplicate id {ident!r} (first at {seen[ident]})")
        except _BadRow as e:
            if on_bad_line == "fail":
                raise TptError(f"{where}: {e}") from None
            reasons.append(f"{where}: {e}")
            continue
        seen[ident] = where
        problems.append(problem)
    if not problems:
        why = f" ({len(reasons)} bad rows skipped)" if reasons else ""
        raise TptError(f"{label}: split {split!r} has no problems{why}")
    return ProblemList(problems, reasons)


# --------------------------------------------------------------------------------------------
# Generated problems: vocabulary

_MAX = 999  # by default every value in a generated problem stays within 1.._MAX

_FEMALE = (
    "Mia Ava Emma Sofia Lily Chloe Zoe Nora Maya Ruby Grace Leah Hannah Aisha Priya Elena Rosa "
    "Yuki Fatima Ines Clara Julia Amara Naomi Tessa Lucy Keiko Maria Olivia Sara"
).split()
_MALE = (
    "Liam Noah Ethan Lucas Mason Omar Leo Jack Ben Sam Ravi Diego Kenji Hugo Felix Owen Adam "
    "Tariq Marco Jonah Elijah Arjun Mateo Kofi Pablo Theo Isaac Daniel Tom Victor"
).split()
_RELATIVES = ("brother", "sister", "cousin", "friend", "neighbor", "grandmother", "aunt", "uncle")
_CONNECTORS = ("", "", "Then ", "Later, ", "After that, ", "Next, ")


@dataclass(frozen=True)
class _Person:
    name: str
    female: bool

    @property
    def subj(self) -> str:
        return "she" if self.female else "he"

    @property
    def obj(self) -> str:
        return "her" if self.female else "him"

    @property
    def pos(self) -> str:
        return "her" if self.female else "his"

    @property
    def refl(self) -> str:
        return "herself" if self.female else "himself"


@dataclass(frozen=True)
class _Thing:
    """What is counted. ``owned`` things can be given away, sold, shared and packed; the others
    (points, laps, miles, pages) only add up and compare."""

    one: str
    many: str
    owned: bool = True
    verb: tuple[str, str] = ("has", "have")  # (he ..., does he ...) in comparisons and questions
    start: tuple[str, ...] = ()  # overrides of the setting's phrases
    gain: tuple[str, ...] = ()
    lose: tuple[str, ...] = ()
    pack: tuple[str, str] | None = None  # (sentence with {k}, question); None: the setting's
    rate: tuple[str, str, int, int] | None = None  # (sentence with {k}, question, k from, k to)


@dataclass(frozen=True)
class _Setting:
    name: str
    things: tuple[_Thing, ...]
    start: tuple[str, ...]
    gain: tuple[str, ...]
    lose: tuple[str, ...]
    boxes: tuple[tuple[str, str], ...]  # containers: (one, many)
    pack: tuple[str, str] | None  # (sentence with {k} and {boxes}, question)
    sells: bool  # owned things can be sold for a price (turns the count into money)
    spend: tuple[str, ...]  # what money is spent on
    money_start: tuple[str, ...] = ()  # a money-only setting starts with these (savings)


def _t(one: str, many: str, **kw: Any) -> _Thing:
    return _Thing(one, many, **kw)


_SETTINGS: tuple[_Setting, ...] = (
    _Setting(
        "shop",
        tuple(
            _t(o, m)
            for o, m in [
                ("pencil", "pencils"),
                ("notebook", "notebooks"),
                ("eraser", "erasers"),
                ("candle", "candles"),
                ("toy car", "toy cars"),
                ("keychain", "keychains"),
                ("mug", "mugs"),
            ]
        ),
        start=(
            "{who} has {n} {many} for sale in {pos} shop.",
            "{who} runs a small shop and has {n} {many} on the shelf.",
            "There are {n} {many} in {name}'s shop.",
        ),
        gain=(
            "{who} orders {n} more {many} from the supplier.",
            "a delivery brings {name} {n} more {many}.",
            "{who} unpacks another {n} {many}.",
        ),
        lose=(
            "{who} sells {n} {many}.",
            "a customer buys {n} of {name}'s {many}.",
            "{n} of the {many} are damaged, so {who_l} sends them back.",
        ),
        boxes=(("box", "boxes"), ("pack", "packs"), ("crate", "crates")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("a new shelf", "paint for the shop", "a sign", "lunch"),
    ),
    _Setting(
        "bakery",
        tuple(
            _t(o, m)
            for o, m in [
                ("cookie", "cookies"),
                ("muffin", "muffins"),
                ("cupcake", "cupcakes"),
                ("bagel", "bagels"),
                ("roll", "rolls"),
                ("brownie", "brownies"),
            ]
        )
        + (
            _t(
                "cup of flour",
                "cups of flour",
                start=("{who} has {n} cups of flour in the bakery.",),
                gain=("{who} buys {n} more cups of flour.",),
                lose=("{who} uses {n} cups of flour for a cake.",),
                pack=(
                    "{who} uses all the flour to bake loaves of bread that need {k} cups each.",
                    "How many loaves of bread does {name} bake?",
                ),
            ),
        ),
        start=(
            "{who} bakes {n} {many} in the morning.",
            "{who} has {n} {many} on a tray at the bakery.",
            "A bakery owner named {name} makes {n} {many}.",
        ),
        gain=(
            "{who} bakes {n} more {many}.",
            "{who} makes another {n} {many}.",
            "{pos} {rel} brings {name} {n} more {many}.",
        ),
        lose=(
            "{who} sells {n} {many}.",
            "{who} gives {n} {many} to {pos} {rel}.",
            "{n} of the {many} get burned, so {who_l} throws them away.",
        ),
        boxes=(("box", "boxes"), ("tray", "trays"), ("bag", "bags")),
        pack=(
            "{who} packs all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("flour", "a new oven mitt", "sugar", "a cake stand"),
    ),
    _Setting(
        "farm",
        tuple(
            _t(o, m)
            for o, m in [
                ("egg", "eggs"),
                ("apple", "apples"),
                ("potato", "potatoes"),
                ("carrot", "carrots"),
                ("pumpkin", "pumpkins"),
                ("pear", "pears"),
            ]
        )
        + (
            _t(
                "liter of milk",
                "liters of milk",
                start=("{name}'s cows give {n} liters of milk in the morning.",),
                gain=("{name}'s cows give {n} more liters of milk in the evening.",),
                lose=("{who} sells {n} liters of milk to a neighbor.",),
                pack=(
                    "{who} pours all the milk into jugs that hold {k} liters each.",
                    "How many jugs does {name} fill?",
                ),
            ),
        ),
        start=(
            "{who} collects {n} {many} on the farm.",
            "{who} has {n} {many} in the barn.",
            "A farmer named {name} harvests {n} {many}.",
        ),
        gain=(
            "{who} collects {n} more {many}.",
            "{who} gathers another {n} {many}.",
            "{pos} {rel} brings {name} {n} more {many} from the field.",
        ),
        lose=(
            "{who} sells {n} {many} at the market.",
            "{n} of the {many} are spoiled, so {who_l} throws them away.",
            "{who} gives {n} {many} to {pos} {rel}.",
        ),
        boxes=(("basket", "baskets"), ("crate", "crates"), ("bucket", "buckets")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("chicken feed", "a new fence post", "seeds", "a shovel"),
    ),
    _Setting(
        "school",
        tuple(
            _t(o, m)
            for o, m in [
                ("crayon", "crayons"),
                ("sticker", "stickers"),
                ("marker", "markers"),
                ("paper clip", "paper clips"),
                ("index card", "index cards"),
            ]
        )
        + (
            _t(
                "page",
                "pages",
                owned=False,
                verb=("reads", "read"),
                start=("{who} reads {n} pages of a book for school.",),
                gain=("{who} reads {n} more pages.", "{who} reads another {n} pages."),
            ),
        ),
        start=(
            "{who} has {n} {many} in {pos} desk.",
            "{who} brings {n} {many} to school.",
            "There are {n} {many} in {name}'s pencil case.",
        ),
        gain=(
            "{name}'s teacher gives {obj} {n} more {many}.",
            "{who} finds {n} more {many} in the classroom.",
            "{pos} {rel} gives {name} {n} {many}.",
        ),
        lose=(
            "{who} gives {n} {many} to a classmate.",
            "{who} loses {n} {many} at recess.",
            "{who} uses up {n} of the {many} in art class.",
        ),
        boxes=(("box", "boxes"), ("cup", "cups"), ("bundle", "bundles")),
        pack=(
            "{who} sorts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} make?",
        ),
        sells=False,
        spend=("a backpack", "a lunch box", "a new ruler", "a field trip"),
    ),
    _Setting(
        "travel",
        tuple(
            _t(o, m)
            for o, m in [
                ("postcard", "postcards"),
                ("souvenir", "souvenirs"),
                ("stamp", "stamps"),
                ("seashell", "seashells"),
            ]
        )
        + (
            _t(
                "mile",
                "miles",
                owned=False,
                verb=("drives", "drive"),
                start=("{who} drives {n} miles on the first day of a road trip.",),
                gain=(
                    "{who} drives another {n} miles.",
                    "the next day, {who_l} drives {n} more miles.",
                ),
                rate=(
                    "{who} drives at a steady {k} miles per hour the whole time.",
                    "How many hours does {name} spend driving?",
                    20,
                    70,
                ),
            ),
            _t(
                "kilometer",
                "kilometers",
                owned=False,
                verb=("walks", "walk"),
                start=("On a hiking trip, {who_l} walks {n} kilometers.",),
                gain=("{who} walks another {n} kilometers.",),
                rate=(
                    "{who} walks at {k} kilometers per hour the whole time.",
                    "How many hours does {name} spend walking?",
                    2,
                    6,
                ),
            ),
        ),
        start=(
            "On a trip to the coast, {who_l} collects {n} {many}.",
            "{who} buys {n} {many} on vacation.",
            "{who} comes back from a trip with {n} {many}.",
        ),
        gain=(
            "{who} collects {n} more {many} in the next town.",
            "{who} buys another {n} {many} at the airport.",
            "{pos} {rel} sends {name} {n} more {many}.",
        ),
        lose=(
            "{who} gives {n} {many} to {pos} {rel}.",
            "{who} loses {n} {many} on the train.",
            "{who} mails {n} of the {many} to friends.",
        ),
        boxes=(("bag", "bags"), ("envelope", "envelopes"), ("box", "boxes")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=False,
        spend=("a train ticket", "a hotel room", "dinner", "a museum ticket"),
    ),
    _Setting(
        "savings",
        (),
        start=(),
        gain=(),
        lose=(),
        boxes=(),
        pack=None,
        sells=False,
        spend=("a book", "a video game", "a scarf", "a pair of shoes", "a bike helmet"),
        money_start=("{who} has ${n} in a piggy bank.", "{who} has saved ${n}.", "{who} has ${n}."),
    ),
    _Setting(
        "sports",
        (
            _t("tennis ball", "tennis balls"),
            _t("water bottle", "water bottles"),
            _t("cone", "cones"),
            _t("jersey", "jerseys"),
            _t(
                "point",
                "points",
                owned=False,
                verb=("scores", "score"),
                start=("{who} scores {n} points in the first game of the season.",),
                gain=("{who} scores {n} more points in the next game.",),
                lose=("{who} loses {n} points for a penalty.",),
            ),
            _t(
                "lap",
                "laps",
                owned=False,
                verb=("swims", "swim"),
                start=("{who} swims {n} laps at practice.",),
                gain=("{who} swims another {n} laps.", "{who} swims {n} more laps."),
            ),
        ),
        start=(
            "Coach {name} has {n} {many} in the gym.",
            "{who} buys {n} {many} for the team.",
            "The team gives {name} {n} {many} to look after.",
        ),
        gain=(
            "{who} buys {n} more {many} for the team.",
            "the school gives {name} another {n} {many}.",
            "{who} finds {n} more {many} in the storage room.",
        ),
        lose=(
            "{n} of the {many} get lost during practice.",
            "{who} gives {n} {many} to another team.",
            "{who} throws away {n} old {many}.",
        ),
        boxes=(("bag", "bags"), ("bucket", "buckets"), ("box", "boxes")),
        pack=(
            "{who} puts all the {many} into {boxes} of {k}.",
            "How many {boxes} does {name} fill?",
        ),
        sells=True,
        spend=("a new whistle", "a team photo", "snacks for the team"),
    ),
    _Setting(
        "garden",
        tuple(
            _t(o, m)
            for o, m in [
                ("seed", "seeds"),
                ("tulip bulb", "tulip bulbs"),
                ("seedling", "seedlings"),
                ("rose bush", "rose bushes"),
                ("pepper plant", "pepper plants"),
            ]
        ),
        start=(
            "{who} has {n} {many} for {pos} garden.",
            "{who} buys {n} {many} at the garden center.",
            "{pos} {rel} gives {name} {n} {many} for the garden.",
        ),
        gain=(
            "{who} buys {n} more {many}.",
            "{pos} {rel} gives {name} another {n} {many}.",
            "{who} gets {n} more {many} from a neighbor.",
        ),
        lose=(
            "{who} gives away {n} {many}.",
            "{n} of the {many} are damaged by the frost, so {who_l} throws them out.",
            "{who} trades {n} of the {many} for some tools.",
        ),
        boxes=(("pot", "pots"), ("tray", "trays"), ("box", "boxes")),
        pack=("{who} plants all the {many} in rows of {k}.", "How many rows does {name} plant?"),
        sells=True,
        spend=("a watering can", "a bag of soil", "garden gloves"),
    ),
    _Setting(
        "library",
        tuple(
            _t(o, m)
            for o, m in [
                ("book", "books"),
                ("magazine", "magazines"),
                ("comic book", "comic books"),
                ("atlas", "atlases"),
            ]
        ),
        start=(
            "{who} has {n} {many} on a library cart.",
            "A librarian named {name} has {n} {many} to sort.",
            "{who} collects {n} {many} from the return box.",
        ),
        gain=(
            "{who} adds {n} more {many} to the cart.",
            "readers return another {n} {many} to {name}.",
            "{who} picks up {n} more {many} from the front desk.",
        ),
        lose=(
            "{who} puts {n} of the {many} back on the shelves.",
            "{who} lends {n} {many} to a school.",
            "{n} of the {many} are too worn out, so {who_l} recycles them.",
        ),
        boxes=(("box", "boxes"), ("stack", "stacks"), ("bin", "bins")),
        pack=(
            "{who} puts all the {many} on shelves that hold {k} each.",
            "How many shelves does {name} fill?",
        ),
        sells=False,
        spend=("new bookmarks", "a reading lamp", "tape for torn pages"),
    ),
    _Setting(
        "party",
        tuple(
            _t(o, m)
            for o, m in [
                ("balloon", "balloons"),
                ("paper cup", "paper cups"),
                ("party hat", "party hats"),
                ("plate", "plates"),
                ("napkin", "napkins"),
            ]
        ),
        start=(
            "{who} buys {n} {many} for a party.",
            "{who} has {n} {many} for {pos} birthday party.",
            "For a party, {who_l} gets {n} {many}.",
        ),
        gain=(
            "{who} buys {n} more {many}.",
            "{pos} {rel} brings {name} {n} more {many}.",
            "{who} finds another {n} {many} in the closet.",
        ),
        lose=(
            "{who} gives {n} {many} to {pos} {rel}.",
            "{n} of the {many} are broken, so {who_l} throws them away.",
            "{who} uses {n} of the {many} before the party starts.",
        ),
        boxes=(("pack", "packs"), ("bag", "bags"), ("box", "boxes")),
        pack=(
            "{who} puts {k} {many} on each table and uses all of them.",
            "How many tables does {name} set?",
        ),
        sells=False,
        spend=("a cake", "music for the party", "snacks"),
    ),
)

_MONEY = _Thing("dollar", "dollars", owned=True)
_EARN = (
    "{who} earns ${n} more by walking dogs.",
    "{pos} {rel} gives {name} ${n}.",
    "{who} gets ${n} for {pos} birthday.",
    "{who} earns another ${n} doing chores.",
)
_SPEND = (
    "{who} spends ${n} on {item}.",
    "{who} buys {item} for ${n}.",
    "{who} pays ${n} for {item}.",
)
_MONEY_STARTS_MUL = (
    ("{who} saves ${n} each week for {k} weeks.", "{name} saves {k} * ${n} = ${r}."),
    ("{who} earns ${n} a day for {k} days.", "{name} earns {k} * ${n} = ${r}."),
)


# --------------------------------------------------------------------------------------------
# Generated problems: the step engine


@dataclass
class _State:
    value: int
    thing: _Thing
    owner: _Person
    money: bool = False
    last: str = "start"  # the last op family: "start", "add", "sub", "compare", "other"
    question: str | None = None  # set by a final-only op


class _Ctx:
    def __init__(self, rng: random.Random, setting: _Setting, cap: int):
        self.rng = rng
        self.setting = setting
        self.cap = cap  # the largest number a problem may show or compute
        self.used: set[str] = set()
        self.people = 0  # named people mentioned so far

    def person(self) -> _Person:
        rng = self.rng
        while True:
            female = rng.random() < 0.5
            name = rng.choice(_FEMALE if female else _MALE)
            if name not in self.used:
                self.used.add(name)
                self.people += 1
                return _Person(name, female)

    def fields(self, st: _State, **kw: Any) -> dict[str, Any]:
        p = st.owner
        # A pronoun as subject only while one named person is in the story.
        who = p.subj if self.people == 1 and self.rng.random() < 0.4 else p.name
        f = dict(
            who=who,
            who_l=who if who == p.name else p.subj,
            name=p.name,
            pos=p.pos,
            obj=p.obj,
            refl=p.refl,
            rel=self.rng.choice(_RELATIVES),
            many=st.thing.many,
            one=st.thing.one,
            item=self.rng.choice(self.setting.spend),
        )
        f.update(kw)
        return f


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _say(
    ctx: _Ctx, template: str, st: _State, connector: bool = True, first: bool = False, **kw: Any
) -> str:
    """One question sentence; templates start with a placeholder or a lower-case word."""
    prefix = ctx.rng.choice(_CONNECTORS) if connector else ""
    fields = ctx.fields(st, **kw)
    if first:  # the opening sentence names its person
        fields["who"] = fields["who_l"] = st.owner.name
    return _cap(prefix + template.format(**fields))


def _m(st: _State, x: int) -> str:
    """A number in a solution: ``$x`` for money."""
    return f"${x}" if st.money else str(x)


def _unit(st: _State) -> str:
    return "" if st.money else f" {st.thing.many}"


# Each op returns (question sentences, solution lines, new state) or None when it does not fit.
_Step = tuple[list[str], list[str], _State]


def _op_add(ctx: _Ctx, st: _State) -> _Step | None:
    rng = ctx.rng
    hi = min(60 if st.thing.owned else 90, ctx.cap - st.value)
    if hi < 2:
        return None
    n = rng.randint(2, hi)
    r = st.value + n
    if st.money:
        q = _say(ctx, rng.choice(_EARN), st, n=n)
    else:
        q = _say(ctx, rng.choice(st.thing.gain or ctx.setting.gain), st, n=n)
    name, u = st.owner.name, _unit(st)
    sol = rng.choice(
        (
            f"{name} now has {_m(st, st.value)} + {_m(st, n)} = {_m(st, r)}{u}.",
            f"That makes {_m(st, st.value)} + {_m(st, n)} = {_m(st, r)}{u}.",
            f"So the total is {_m(st, st.value)} + {_m(st, n)} = {_m(st, r)}{u}.",
        )
        if st.thing.owned
        else (
            f"That makes {_m(st, st.value)} + {_m(st, n)} = {_m(st, r)}{u}.",
            f"So {name}'s total is {_m(st, st.value)} + {_m(st, n)} = {_m(st, r)}{u}.",
        )
    )
    return [q], [sol], _State(r, st.thing, st.owner, st.money, "add")


def _op_sub(ctx: _Ctx, st: _State) -> _Step | None:
    rng = ctx.rng
    lose = st.thing.lose or (ctx.setting.lose if st.thing.owned else ())
    if st.value < 3 or not (lose or st.money):
        return None
    n = rng.randint(2, min(st.value - 1, max(2, st.value * 3 // 4), 80))
    r = st.value - n
    q = _say(ctx, rng.choice(_SPEND if st.money else lose), st, n=n)
    name, u = st.owner.name, _unit(st)
    sol = rng.choice(
        (
            f"{name} has {_m(st, st.value)} - {_m(st, n)} = {_m(st, r)}{u} left.",
            f"That leaves {_m(st, st.value)} - {_m(st, n)} = {_m(st, r)}{u}.",
        )
        if st.thing.owned
        else (f"That brings the total to {_m(st, st.value)} - {_m(st, n)} = {_m(st, r)}{u}.",)
    )
    return [q], [sol], _State(r, st.thing, st.owner, st.money, "sub")


_TIMES = {2: "twice", 3: "3 times", 4: "4 times", 5: "5 times", 6: "6 times"}
_PART = {2: "half", 3: "a third", 4: "a quarter"}


def _compare_sentence(ctx: _Ctx, st: _State, other: _Person, how: str) -> str:
    if st.money:
        return f"{other.name} has {how} as much money as {st.owner.name}."
    verb = st.thing.verb[0]
    return f"{other.name} {verb} {how} as many {st.thing.many} as {st.owner.name}."


def _op_times(ctx: _Ctx, st: _State) -> _Step | None:
    rng = ctx.rng
    ks = [k for k in (2, 3, 4, 5) if st.value * k <= ctx.cap]
    if not ks:
        return None
    k = rng.choice(ks)
    r = st.value * k
    other = ctx.person()
    q = _compare_sentence(ctx, st, other, _TIMES[k])
    sol = rng.choice(
        (
            f"{other.name} has {k} * {_m(st, st.value)} = {_m(st, r)}{_unit(st)}.",
            f"So {other.name} has {_m(st, st.value)} * {k} = {_m(st, r)}{_unit(st)}.",
        )
        if st.thing.owned
        else (f"{other.name} {st.thing.verb[0]} {k} * {st.value} = {r}{_unit(st)}.",)
    )
    return [q], [sol], _State(r, st.thing, other, st.money, "compare")


def _op_part(ctx: _Ctx, st: _State) -> _Step | None:
    ks = [k for k in (2, 3, 4) if st.value % k == 0 and st.value // k >= 1]
    if not ks:
        return None
    k = ctx.rng.choice(ks)
    r = st.value // k
    other = ctx.person()
    q = _compare_sentence(ctx, st, other, _PART[k])
    verb = "has" if st.thing.owned else st.thing.verb[0]
    sol = f"{other.name} {verb} {_m(st, st.value)} / {k} = {_m(st, r)}{_unit(st)}."
    return [q], [sol], _State(r, st.thing, other, st.money, "compare")


def _op_keep(ctx: _Ctx, st: _State) -> _Step | None:
    """The owner keeps an exact fraction (gives half away, keeps a third, shares equally)."""
    if not st.thing.owned:
        return None
    rng = ctx.rng
    name = st.owner.name
    options = []
    if st.value % 2 == 0:
        if st.money:
            options.append((2, "{who} spends half of the money on {item}."))
        else:
            options.append((2, "{who} gives half of the {many} to {pos} {rel}."))
    for k, word in ((3, "third"), (4, "quarter")):
        if st.value % k == 0 and not st.money:
            options.append((k, f"{{who}} keeps a {word} of the {{many}} and gives the rest away."))
    for k in (2, 3, 4, 5, 6):
        if st.value % k == 0 and not st.money:
            friends = "one friend" if k == 2 else f"{k - 1} friends"
            options.append(
                (k, f"{{who}} shares the {{many}} equally between {{refl}} and {friends}.")
            )
    if not options:
        return None
    k, template = rng.choice(options)
    r = st.value // k
    q = _say(ctx, template, st)
    if st.money:
        sol = f"{name} has ${st.value} / 2 = ${r} left."
    else:
        sol = rng.choice(
            (
                f"{name} keeps {st.value} / {k} = {r} {st.thing.many}.",
                f"{name} is left with {st.value} / {k} = {r} {st.thing.many}.",
            )
        )
    return [q], [sol], _State(r, st.thing, st.owner, st.money, "sub")


def _op_price(ctx: _Ctx, st: _State) -> _Step | None:
    """Owned things are sold: the count becomes money."""
    if st.money or not st.thing.owned or not ctx.setting.sells or st.thing.pack is not None:
        return None
    ps = [p for p in range(2, 13) if st.value * p <= ctx.cap]
    if not ps:
        return None
    p = ctx.rng.choice(ps)
    r = st.value * p
    q = _say(ctx, f"{{who}} sells all of the {{many}} for ${p} each.", st)
    sol = f"{st.owner.name} makes {st.value} * ${p} = ${r}."
    return [q], [sol], _State(r, _MONEY, st.owner, True, "other")


def _op_more_boxes(ctx: _Ctx, st: _State) -> _Step | None:
    """Two steps: k more containers of n things each, then the sum."""
    if st.money or not st.thing.owned or not ctx.setting.boxes or st.thing.pack is not None:
        return None
    rng = ctx.rng
    box, boxes = rng.choice(ctx.setting.boxes)
    options = [(k, n) for k in range(2, 7) for n in range(2, 13) if st.value + k * n <= ctx.cap]
    if not options:
        return None
    k, n = rng.choice(options)
    m = k * n
    r = st.value + m
    name, many = st.owner.name, st.thing.many
    q = _say(ctx, f"{{who}} gets {k} more {boxes} with {n} {many} in each {box}.", st)
    sols = [
        f"The {k} {boxes} hold {k} * {n} = {m} {many}.",
        f"{name} now has {st.value} + {m} = {r} {many}.",
    ]
    return [q], sols, _State(r, st.thing, st.owner, st.money, "add")


def _final_pack(ctx: _Ctx, st: _State) -> _Step | None:
    if st.money or not st.thing.owned:
        return None
    pack = st.thing.pack or ctx.setting.pack
    if pack is None:
        return None
    ks = [k for k in range(2, 13) if st.value % k == 0 and st.value // k >= 2]
    if not ks:
        return None
    k = ctx.rng.choice(ks)
    r = st.value // k
    box, boxes = ctx.rng.choice(ctx.setting.boxes) if ctx.setting.boxes else ("", "")
    sentence, question = pack
    q = _say(ctx, sentence, st, k=k, boxes=boxes)
    question = question.format(boxes=boxes, name=st.owner.name)
    unit = question.split()[2]  # "How many <unit> ..."
    sol = f"{st.owner.name} needs {st.value} / {k} = {r} {unit}."
    return [q], [sol], _State(r, st.thing, st.owner, False, "other", question)


def _final_share(ctx: _Ctx, st: _State) -> _Step | None:
    if not st.thing.owned:
        return None
    ks = [k for k in range(2, 10) if st.value % k == 0 and st.value // k >= 2]
    if not ks:
        return None
    k = ctx.rng.choice(ks)
    r = st.value // k
    group = ctx.rng.choice(("friends", "classmates", "cousins", "neighbors"))
    if st.money:
        q = _say(ctx, f"{{who}} shares all of the money equally among {k} {group}.", st)
        question = f"How many dollars does each of the {group} get?"
        sol = f"Each one gets ${st.value} / {k} = ${r}."
    else:
        q = _say(ctx, f"{{who}} shares all of the {{many}} equally among {k} {group}.", st)
        question = f"How many {st.thing.many} does each of the {group} get?"
        sol = f"Each one gets {st.value} / {k} = {r} {st.thing.many}."
    return [q], [sol], _State(r, st.thing, st.owner, st.money, "other", question)


def _final_rate(ctx: _Ctx, st: _State) -> _Step | None:
    if st.thing.rate is None:
        return None
    sentence, question, lo, hi = st.thing.rate
    ks = [k for k in range(lo, hi + 1) if st.value % k == 0 and st.value // k >= 2]
    if not ks:
        return None
    k = ctx.rng.choice(ks)
    r = st.value // k
    q = _say(ctx, sentence, st, connector=False, k=k)
    sol = f"{st.owner.name} spends {st.value} / {k} = {r} hours."
    return (
        [q],
        [sol],
        _State(r, st.thing, st.owner, False, "other", question.format(name=st.owner.name)),
    )


# (family, op, steps it takes, final only)
_OPS = (
    ("+", _op_add, 1, False),
    ("+", _op_more_boxes, 2, False),
    ("-", _op_sub, 1, False),
    ("*", _op_times, 1, False),
    ("*", _op_price, 1, False),
    ("/", _op_part, 1, False),
    ("/", _op_keep, 1, False),
    ("/", _final_pack, 1, True),
    ("/", _final_share, 1, True),
    ("/", _final_rate, 1, True),
)


def _start(ctx: _Ctx) -> tuple[list[str], list[str], _State]:
    """The opening sentence; some openings are a multiplication (one step)."""
    rng = ctx.rng
    setting = ctx.setting
    owner = ctx.person()
    if setting.money_start:
        st = _State(0, _MONEY, owner, True)
        pairs = [(k, n) for k in range(2, 9) for n in range(3, 26) if k * n <= ctx.cap]
        if rng.random() < 0.3 and pairs:
            tq, tsol = rng.choice(_MONEY_STARTS_MUL)
            k, n = rng.choice(pairs)
            st.value = k * n
            q = _say(ctx, tq, st, connector=False, first=True, n=n, k=k)
            return [q], [tsol.format(name=owner.name, k=k, n=n, r=k * n)], st
        st.value = rng.randint(5, min(120, ctx.cap))
        q = _say(ctx, rng.choice(setting.money_start), st, connector=False, first=True, n=st.value)
        return [q], [], st
    thing = rng.choice(setting.things)
    st = _State(0, thing, owner)
    pairs = [(k, n) for k in range(2, 10) for n in range(3, 25) if k * n <= min(300, ctx.cap)]
    if thing.owned and thing.pack is None and setting.boxes and rng.random() < 0.3 and pairs:
        box, boxes = rng.choice(setting.boxes)
        k, n = rng.choice(pairs)
        st.value = k * n
        q = _say(
            ctx, f"{{who}} has {k} {boxes} of {thing.many} with {n} {thing.many} in each {box}.",
            st, connector=False, first=True,
        )  # fmt: skip
        return [q], [f"{owner.name} has {k} * {n} = {k * n} {thing.many}."], st
    st.value = rng.randint(4, min(60, ctx.cap)) if thing.owned else rng.randint(5, min(90, ctx.cap))
    q = _say(ctx, rng.choice(thing.start or setting.start), st, False, True, n=st.value)
    return [q], [], st


def _final_question(ctx: _Ctx, st: _State) -> str:
    if st.question is not None:
        return st.question
    name = st.owner.name
    if st.money:
        options = [f"How much money does {name} have now?", f"How many dollars does {name} have?"]
        if st.last == "compare":
            options = [f"How much money does {name} have?", f"How many dollars does {name} have?"]
        elif st.last == "other":
            options = [f"How much money does {name} make?"]
        return ctx.rng.choice(options)
    many, (_, base) = st.thing.many, st.thing.verb
    if st.last == "compare":
        return f"How many {many} does {name} {base}?"
    if not st.thing.owned:
        end = ctx.rng.choice(("in total", "in all", "altogether"))
        return f"How many {many} does {name} {base} {end}?"
    options = [
        f"How many {many} does {name} have now?",
        f"How many {many} does {name} end up with?",
    ]
    if st.last == "sub":
        options.append(f"How many {many} does {name} have left?")
    return ctx.rng.choice(options)


def _make_problem(rng: random.Random, level: int, cap: int) -> tuple[str, str, int] | None:
    """(question, solution, answer) of one candidate with exactly ``level`` steps, or None."""
    ctx = _Ctx(rng, rng.choice(_SETTINGS), cap)
    q, sols, st = _start(ctx)
    for _ in range(8 * level + 8):
        remaining = level - len(sols)
        if remaining <= 0:
            break
        fams: dict[str, list] = {}
        for fam, op, steps, final in _OPS:
            if steps <= remaining and (not final or remaining == 1):
                fams.setdefault(fam, []).append(op)
        fam = rng.choice(sorted(fams))
        step = rng.choice(fams[fam])(ctx, st)
        if step is None:
            continue
        q_more, sol_more, st = step
        q += q_more
        sols += sol_more
        if st.question is not None and len(sols) < level:  # pragma: no cover - guarded above
            return None
    if len(sols) != level:
        return None
    q.append(_final_question(ctx, st))
    question = " ".join(q)
    solution = "\n".join(sols + [f"#### {st.value}"])
    return question, solution, st.value


def split_of(question: str) -> str:
    """``"test"`` for about one question in five (by a hash of its text), else ``"train"``."""
    digest = hashlib.sha256(("tpt_jax.tasks/split\0" + question).encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 5 == 0 else "train"


def generate_problems(
    split: str, n: int, levels: Sequence[int], seed: int, *, max_value: int = _MAX
) -> list[Problem]:
    """``n`` generated problems of ``split`` (``"train"`` or ``"test"``), levels round-robin over
    ``levels`` (problem i has level ``levels[i % len(levels)]``).

    Deterministic in (split, n, levels, seed); each level draws from its own seeded stream, so
    the problems of a level do not depend on the other levels asked for, and a smaller ``n``
    gives a prefix of a larger one. No two problems share a question. Ids are
    ``arith/{split}/L{level}/{hash of the question}``.

    ``max_value`` (10 to 999) bounds every number a problem shows or computes; a small bound
    (say 12 to 20) makes easier problems for very small models.
    """
    if split not in ("train", "test"):
        raise TptError(f"generated problems come in splits 'train' and 'test', not {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TptError(f"n must be a non-negative integer, got {n!r}")
    levels = list(levels)
    if not levels:
        raise TptError("levels must name at least one level")
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 20:
            raise TptError(f"levels must be integers from 1 to 20, got {level!r}")
    if isinstance(max_value, bool) or not isinstance(max_value, int) or not 10 <= max_value <= _MAX:
        raise TptError(f"max_value must be an integer from 10 to {_MAX}, got {max_value!r}")
    streams = {
        level: random.Random(f"tpt_jax.tasks/{split}/{seed}/L{level}") for level in set(levels)
    }
    seen: set[str] = set()
    problems: list[Problem] = []
    for i in range(n):
        level = levels[i % len(levels)]
        rng = streams[level]
        for _ in range(100_000):
            made = _make_problem(rng, level, max_value)
            if made is None:
                continue
            question, solution, answer = made
            if question in seen or split_of(question) != split:
                continue
            break
        else:  # pragma: no cover - the problem space is far larger than any request
            raise TptError(f"could not generate {n} distinct level-{level} problems")
        seen.add(question)
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]
        problems.append(
            Problem(f"arith/{split}/L{level}/{digest}", question, str(answer), solution, level)
        )
    return problems


def _main() -> None:  # pragma: no cover - a quick look: python -m tpt_jax.tasks [level] [n]
    import sys

    level = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for p in generate_problems("train", count, [level], 0):
        print(p.id, "\n", p.question, "\n", p.solution, "\n", sep="")


if __name__ == "__main__":  # pragma: no cover
    _main()
