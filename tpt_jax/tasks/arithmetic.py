"""An offline generator of graded arithmetic word problems.

:func:`generate_problems` makes seeded, deterministic grade-school word problems whose answers
are exact non-negative integers (every intermediate value is an integer from 1 to 999). The
``level`` of a problem is its number of arithmetic steps: its solution has exactly ``level``
lines of the form ``... a op b = c ...`` (``op`` one of ``+ - * /``, money written ``$a``), then
``#### c``. Train and test never share a question: a question belongs to the test split if and
only if :func:`split_of` (a hash of its text) says so, and generation for a split rejects every
candidate of the other split. Answers are spread over the values a level reaches (no answer
takes much more than an even share of a split, so no constant guess scores well; see "Spreading
the answers"), and no step undoes the step before it.

The word tables (names, settings, phrasings) live in :mod:`tpt_jax.tasks.arithmetic_words`. Pure
Python, layer 0. The seed strings still say ``tpt_jax.tasks`` (where this code first lived) so
that the problems stay the same.

The module is the `arithmetic` task's plug-in (``tasks/plugin.py``): :func:`problems` and the
answer tasks' ``verify`` (``tasks/answers.py``).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tpt_jax.errors import TptError
from tpt_jax.tasks.answers import GRADING_MODES, verify
from tpt_jax.tasks.arithmetic_words import (
    CONNECTORS,
    EARN,
    FEMALE,
    MALE,
    MONEY,
    MONEY_STARTS_MUL,
    PART,
    RELATIVES,
    SETTINGS,
    SPEND,
    TIMES,
    Person,
    Setting,
    Thing,
)
from tpt_jax.tasks.base import Problem, ProblemList

__all__ = ["GRADING_MODES", "generate_problems", "problems", "split_of", "verify"]

_MAX = 999  # by default every value in a generated problem stays within 1.._MAX

# --------------------------------------------------------------------------------------------
# The step engine


@dataclass
class _State:
    value: int
    thing: Thing
    owner: Person
    money: bool = False
    last: str = "start"  # the last op family: "start", "add", "sub", "compare", "other"
    question: str | None = None  # set by a final-only op
    # Values the next step must not come back to (what the last step started from): a step that
    # undoes the one before (3 times as many, then a third of those) wastes a step and makes the
    # answer a number the question shows.
    undo: tuple[int, ...] = ()


class _Ctx:
    def __init__(self, rng: random.Random, setting: Setting, cap: int):
        self.rng = rng
        self.setting = setting
        self.cap = cap  # the largest number a problem may show or compute
        self.used: set[str] = set()
        self.people = 0  # named people mentioned so far

    def person(self) -> Person:
        rng = self.rng
        while True:
            female = rng.random() < 0.5
            name = rng.choice(FEMALE if female else MALE)
            if name not in self.used:
                self.used.add(name)
                self.people += 1
                return Person(name, female)

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
            rel=self.rng.choice(RELATIVES),
            many=st.thing.many,
            one=st.thing.one,
            item=self.rng.choice(self.setting.spend),
        )
        f.update(kw)
        return f


@functools.cache
def _pairs(ks: range, ns: range, bound: int) -> tuple[tuple[int, int], ...]:
    """The ``(k, n)`` with ``k * n <= bound``, ``k`` major; cached because candidates are made by
    the ten thousand and rebuilding these lists took a third of the time."""
    return tuple((k, n) for k in ks for n in ns if k * n <= bound)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _say(
    ctx: _Ctx, template: str, st: _State, connector: bool = True, first: bool = False, **kw: Any
) -> str:
    """One question sentence; templates start with a placeholder or a lower-case word."""
    prefix = ctx.rng.choice(CONNECTORS) if connector else ""
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
_Op = Callable[[_Ctx, _State], _Step | None]


def _op_add(ctx: _Ctx, st: _State) -> _Step | None:
    rng = ctx.rng
    hi = min(60 if st.thing.owned else 90, ctx.cap - st.value)
    if hi < 2:
        return None
    n = rng.randint(2, hi)
    r = st.value + n
    if st.money:
        q = _say(ctx, rng.choice(EARN), st, n=n)
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
    q = _say(ctx, rng.choice(SPEND if st.money else lose), st, n=n)
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


def _compare_sentence(ctx: _Ctx, st: _State, other: Person, how: str) -> str:
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
    q = _compare_sentence(ctx, st, other, TIMES[k])
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
    q = _compare_sentence(ctx, st, other, PART[k])
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
    return [q], [sol], _State(r, MONEY, st.owner, True, "other")


def _op_more_boxes(ctx: _Ctx, st: _State) -> _Step | None:
    """Two steps: k more containers of n things each, then the sum."""
    if st.money or not st.thing.owned or not ctx.setting.boxes or st.thing.pack is not None:
        return None
    rng = ctx.rng
    box, boxes = rng.choice(ctx.setting.boxes)
    options = _pairs(range(2, 7), range(2, 13), ctx.cap - st.value)
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


def _split_evenly(ctx: _Ctx, st: _State, lo: int, hi: int) -> tuple[int, int] | None:
    """A divisor ``k`` of the value in ``lo..hi`` leaving at least 2 per part, and the quotient;
    None when there is none."""
    ks = [k for k in range(lo, hi + 1) if st.value % k == 0 and st.value // k >= 2]
    if not ks:
        return None
    k = ctx.rng.choice(ks)
    return k, st.value // k


def _final_pack(ctx: _Ctx, st: _State) -> _Step | None:
    if st.money or not st.thing.owned:
        return None
    pack = st.thing.pack or ctx.setting.pack
    split = _split_evenly(ctx, st, 2, 12) if pack is not None else None
    if split is None:
        return None
    k, r = split
    box, boxes = ctx.rng.choice(ctx.setting.boxes) if ctx.setting.boxes else ("", "")
    sentence, question = pack
    q = _say(ctx, sentence, st, k=k, boxes=boxes)
    question = question.format(boxes=boxes, name=st.owner.name)
    unit = question.split()[2]  # "How many <unit> ..."
    sol = f"{st.owner.name} needs {st.value} / {k} = {r} {unit}."
    return [q], [sol], _State(r, st.thing, st.owner, False, "other", question)


def _final_share(ctx: _Ctx, st: _State) -> _Step | None:
    split = _split_evenly(ctx, st, 2, 9) if st.thing.owned else None
    if split is None:
        return None
    k, r = split
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
    split = _split_evenly(ctx, st, lo, hi)
    if split is None:
        return None
    k, r = split
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


@functools.cache
def _families(remaining: int) -> tuple[tuple[str, ...], dict[str, tuple[_Op, ...]]]:
    """The op families that fit when ``remaining`` steps are left (sorted), and their ops. Only
    1 (final ops allowed, two-step ops not) and 2 or more differ, so callers pass
    ``min(remaining, 2)``; cached because every step of every candidate asks."""
    fams: dict[str, list[_Op]] = {}
    for fam, op, steps, final in _OPS:
        if steps <= remaining and (not final or remaining == 1):
            fams.setdefault(fam, []).append(op)
    return tuple(sorted(fams)), {fam: tuple(ops) for fam, ops in fams.items()}


def _start(ctx: _Ctx) -> tuple[list[str], list[str], _State]:
    """The opening sentence; some openings are a multiplication (one step)."""
    rng = ctx.rng
    setting = ctx.setting
    owner = ctx.person()
    if setting.money_start:
        st = _State(0, MONEY, owner, True)
        pairs = _pairs(range(2, 9), range(3, 26), ctx.cap)
        if rng.random() < 0.3 and pairs:
            tq, tsol = rng.choice(MONEY_STARTS_MUL)
            k, n = rng.choice(pairs)
            st.value, st.undo = k * n, (k, n)
            q = _say(ctx, tq, st, connector=False, first=True, n=n, k=k)
            return [q], [tsol.format(name=owner.name, k=k, n=n, r=k * n)], st
        st.value = rng.randint(5, min(120, ctx.cap))
        q = _say(ctx, rng.choice(setting.money_start), st, connector=False, first=True, n=st.value)
        return [q], [], st
    thing = rng.choice(setting.things)
    st = _State(0, thing, owner)
    pairs = _pairs(range(2, 10), range(3, 25), min(300, ctx.cap))
    if thing.owned and thing.pack is None and setting.boxes and rng.random() < 0.3 and pairs:
        box, boxes = rng.choice(setting.boxes)
        k, n = rng.choice(pairs)
        st.value, st.undo = k * n, (k, n)
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
    ctx = _Ctx(rng, rng.choice(SETTINGS), cap)
    q, sols, st = _start(ctx)
    for _ in range(8 * level + 8):
        remaining = level - len(sols)
        if remaining <= 0:
            break
        names, fams = _families(min(remaining, 2))
        step = rng.choice(fams[rng.choice(names)])(ctx, st)
        if step is None or step[2].value in st.undo:
            continue
        q_more, sol_more, new = step
        new.undo = (st.value,)
        st = new
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


# --------------------------------------------------------------------------------------------
# Spreading the answers
#
# Left alone, the step engine piles answers onto a few values: at level 1 with max_value 12,
# 22% of candidates answer 12 (sums and products pile up at the cap), so a model that always
# said 12 scored as well as the base model on the demo. Generation therefore holds back any
# answer already more than one problem above its share of what a level has made so far. The
# share is the flattest a level reaches cheaply: 1 in 20 where answers spread over many values
# (the engine alone stays under that with max_value 999, so this rarely binds there), nearly
# uniform over the values a level reaches where there are fewer (1.1 / 12 with max_value 12),
# and never so flat that more than about half of the candidates are thrown away.

_PEAK_SHARE = 0.05  # the largest share we aim to give any one answer
_MIN_KEPT = 0.5  # the least fraction of candidates the flattening may keep, on average
_CALIBRATION = 2000  # candidates drawn to estimate how often the engine makes each answer


@functools.cache
def _answer_share(level: int, cap: int) -> float:
    """The most of a level's problems, as a share, that one answer may take (plus one problem).

    Estimated once per (level, cap) from candidates of a fixed stream of its own (not the run's
    seed or split: this is a property of the engine). Clipping every answer's frequency ``p`` at
    a level ``t`` keeps ``sum(min(p, t))`` of the candidates and gives the most common answer a
    share ``t / sum(min(p, t))``; the lowest ``t`` allowed by ``_MIN_KEPT`` bounds how flat the
    answers can be made, and ``_PEAK_SHARE`` how flat we want them. Holding each answer to that
    share in every prefix (see :func:`generate_problems`) gives about the clipped distribution:
    an inverse-frequency reweighting that also holds in splits of a few dozen problems, where
    independent draws would leave chance peaks (12 equally likely values over 64 problems
    usually give one of them 9 or more).
    """
    rng = random.Random(f"tpt_jax.arithmetic/answers/L{level}/{cap}")
    counts: dict[int, int] = {}
    for _ in range(_CALIBRATION):
        made = _make_problem(rng, level, cap)
        if made is not None:
            counts[made[2]] = counts.get(made[2], 0) + 1
    total = sum(counts.values())
    if not total:  # pragma: no cover - every level makes problems; no estimate, no limit
        return 1.0
    freqs = [c / total for c in counts.values()]

    def kept(t: float) -> float:
        return sum(min(f, t) for f in freqs)

    lo, hi = 0.0, max(freqs)  # kept() rises with t, from 0 to 1: bisect for kept(t) = _MIN_KEPT
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < _MIN_KEPT else (lo, mid)
    # Never below 1 / (values seen), so the answers the level makes always have room; and a tenth
    # above that, because at exactly uniform every value has to keep pace with the scarcest one
    # and generation stalls (nearly twice the time with 12 values, measured) to save 0.8 points
    # of share.
    return max(_PEAK_SHARE, hi / kept(hi), 1.1 / len(freqs))


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
    shares = {level: _answer_share(level, max_value) for level in streams}
    answers: dict[int, dict[int, int]] = {level: {} for level in streams}  # per level, per answer
    made_so_far = dict.fromkeys(streams, 0)
    seen: set[str] = set()
    problems: list[Problem] = []
    for i in range(n):
        level = levels[i % len(levels)]
        rng = streams[level]
        counts = answers[level]
        # An answer may hold at most its share of this level's problems, plus one, in every
        # prefix: so no value dominates even a split of 64, and a smaller n is still a prefix.
        limit = shares[level] * (made_so_far[level] + 1)
        for _ in range(100_000):
            made = _make_problem(rng, level, max_value)
            if made is None:
                continue
            question, solution, answer = made
            if counts.get(answer, 0) > limit:
                continue
            if question in seen or split_of(question) != split:
                continue
            break
        else:  # pragma: no cover - the problem space is far larger than any request
            raise TptError(f"could not generate {n} distinct level-{level} problems")
        seen.add(question)
        counts[answer] = counts.get(answer, 0) + 1
        made_so_far[level] += 1
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]
        problems.append(
            Problem(f"arith/{split}/L{level}/{digest}", question, str(answer), solution, level)
        )
    return problems


def problems(split: str, options: Mapping[str, Any]) -> ProblemList:
    """The task plug-in's problems: ``options`` holds the run's ``train_size`` / ``test_size``
    (None: 500), ``levels``, ``max_value`` and ``seed``."""
    size = options.get(f"{split}_size") or 500
    levels = list(options.get("levels", (1, 2)))
    seed, max_value = options.get("seed", 0), options.get("max_value", _MAX)
    made = generate_problems(split, size, levels, seed, max_value=max_value)
    source = {"generator": "arithmetic", "levels": levels, "max_value": max_value, "seed": seed}
    return ProblemList(made, source=source)


def _main() -> (
    None
):  # pragma: no cover - a quick look: python -m tpt_jax.tasks.arithmetic [level] [n]
    import sys

    level = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for p in generate_problems("train", count, [level], 0):
        print(p.id, "\n", p.question, "\n", p.solution, "\n", sep="")


if __name__ == "__main__":  # pragma: no cover
    _main()
