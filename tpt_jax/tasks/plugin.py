"""A task plug-in: a Python file or module with two functions. Every task is one: the built-in
ones are modules of this package (`task.name: arithmetic` loads `tpt_jax.tasks.arithmetic`,
likewise gsm8k, code and math), a user's is named by `task.name: plugin`, `task.plugin`.

    def problems(split: str, options: dict) -> Iterable[dict]:
        # each row: "id", "question", "answer" (any JSON scalar), optional "solution"; other
        # keys (a code problem's tests, say) are kept for verify. Or a tasks.ProblemList of
        # tasks.Problem, which also says which rows were skipped and what was read.
    def verify(text: str, problem: dict) -> bool:
        # or an object with `.correct` (and `.reason`), or {"correct": ..., "reason": ...}
    INSTRUCTION = "..."  # optional: the prompt's instruction when task.instruction is unset
    PARALLEL_VERIFY = True  # optional: verify is thread-safe and slow (it waits on processes)
    GRADING_MODES = (...)  # optional: verify(text, problem, mode) gets prune.grading or
                           # eval.grading, which must be one of these; EVAL reports Pass@1
                           # under each and the prior baseline (the answer tasks: answers.py)

`task.plugin` is a path to a .py file (relative to the config file that names it) or a dotted
module name on the Python path; `task.options` (a free mapping) is passed to `problems`. Every
mistake in a plug-in (missing, failing to import, a missing function, a malformed row, a
`verify` that raises) is a one-line `tpt: error:` naming the plug-in, found before any
sampling except the last, which shows only when PRUNE or EVAL first calls it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpt_jax.errors import TptError
from tpt_jax.tasks.base import Problem, ProblemList, Verdict

__all__ = ["BUILT_IN", "Plugin", "Verdict", "load_plugin"]

# task.name -> the package module that is that task's plug-in
BUILT_IN = {name: f"tpt_jax.tasks.{name}" for name in ("arithmetic", "gsm8k", "code", "math")}


@dataclass
class Plugin:
    spec: str  # as configured
    path: str  # the file it was loaded from
    sha256: str  # of that file: a changed verifier makes every stage after it stale
    module: Any
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # rows by problem id
    # (text, id, mode) -> verdict, kept for a PARALLEL_VERIFY plug-in (its verify is slow)
    verdicts: dict[tuple[str, str, str | None], Verdict] = field(default_factory=dict)
    _background: ThreadPoolExecutor | None = field(default=None, repr=False)
    _pending: list[Future] = field(default_factory=list, repr=False)

    @property
    def instruction(self) -> str | None:
        text = getattr(self.module, "INSTRUCTION", None)
        return text if isinstance(text, str) and text.strip() else None

    @property
    def grading_modes(self) -> tuple[str, ...]:
        """The grading modes verify takes (GRADING_MODES), or () when it takes none."""
        return tuple(getattr(self.module, "GRADING_MODES", ()))

    def problems(self, split: str, options: Mapping[str, Any]) -> ProblemList:
        """The split's problems, checked row by row; the rows' extra keys are kept (`extras`)."""
        where = f"task.plugin: {self.path}: problems({split!r})"
        try:
            returned = self.module.problems(split, dict(options))
            rows = list(returned)
        except TptError:
            raise  # already one line naming what is wrong (a built-in task's loader)
        except Exception as e:  # noqa: BLE001 - the user's code: any error is one line
            raise TptError(f"{where} raised {type(e).__name__}: {e}") from None
        source = {"plugin": self.path, "sha256": self.sha256}
        skipped: list[str] = []
        if isinstance(returned, ProblemList):
            source, skipped = returned.source, returned.skip_reasons
        problems, seen = [], set()
        for i, row in enumerate(rows):
            problem = row if isinstance(row, Problem) else _problem(row, f"{where} row {i}")
            if problem.id in seen:
                raise TptError(f"{where} row {i}: duplicate id {problem.id!r}")
            seen.add(problem.id)
            problems.append(problem)
        if not problems:
            raise TptError(f"{where} returned no problems")
        self.extras.update({p.id: _row(p, r) for p, r in zip(problems, rows, strict=True)})
        return ProblemList(problems, skipped, source)

    @property
    def parallel(self) -> bool:
        """The plug-in says its verify is thread-safe (`PARALLEL_VERIFY = True`: the code
        task's only waits on sandboxed processes)."""
        return getattr(self.module, "PARALLEL_VERIFY", False) is True

    def prefetch(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Start verifying freshly sampled records in the background (a parallel plug-in only),
        so that verification overlaps with generation; `verify_all` waits for it."""
        if not self.parallel or self.grading_modes or not records:
            return  # (a plug-in with modes does not know the stage's mode yet)
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tpt-verify")
        pairs = [(r["text"], r["problem_id"]) for r in records]
        self._pending.append(self._background.submit(self._verify_now, pairs))

    def verify_all(
        self, pairs: Sequence[tuple[str, str]], mode: str | None = None
    ) -> list[Verdict]:
        """The verdicts of (text, problem id) pairs, in order; `mode` is the stage's grading
        mode, passed on to a plug-in with GRADING_MODES. A parallel plug-in runs on a thread per
        core and verifies each distinct pair once per run (EVAL grades the same samples several
        times, and `prefetch` may have verified them while they were sampled)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # a verify that raised raises here
        return self._verify_now(pairs, mode if self.grading_modes else None)

    def _verify_now(
        self, pairs: Sequence[tuple[str, str]], mode: str | None = None
    ) -> list[Verdict]:
        if not self.parallel:  # cheap and in process: nothing worth keeping
            return [self.verify(text, pid, mode) for text, pid in pairs]
        keys = [(text, pid, mode) for text, pid in pairs]
        todo = list(dict.fromkeys(k for k in keys if k not in self.verdicts))
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            done = list(pool.map(lambda key: self.verify(*key), todo))
        self.verdicts.update(zip(todo, done, strict=True))
        return [self.verdicts[k] for k in keys]

    def verify(self, text: str, problem_id: str, mode: str | None = None) -> Verdict:
        row = self.extras[problem_id]
        try:
            if mode is not None:
                got = self.module.verify(text, dict(row), mode)
            else:
                got = self.module.verify(text, dict(row))
        except Exception as e:  # noqa: BLE001
            raise TptError(
                f"task.plugin: {self.path}: verify raised {type(e).__name__}: {e} "
                f"(problem {problem_id!r})"
            ) from None
        return _verdict(got, self.path)


def load_plugin(spec: str) -> Plugin:
    """The plug-in at `spec` (a .py path or a module name), with both functions checked."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise TptError(f"task.plugin: {spec}: no such file")
        name = f"tpt_plugin_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module = _import_file(name, path, spec)
    else:
        try:
            module = importlib.import_module(spec)
        except Exception as e:  # noqa: BLE001
            raise TptError(
                f"task.plugin: {spec}: cannot import ({type(e).__name__}: {e})"
            ) from None
        path = Path(inspect.getfile(module))
    modes = getattr(module, "GRADING_MODES", ())
    if not isinstance(modes, tuple | list) or not all(isinstance(m, str) for m in modes):
        raise TptError(f"task.plugin: {path}: GRADING_MODES must be a tuple of names")
    for function, arity in (("problems", 2), ("verify", 3 if modes else 2)):
        fn = getattr(module, function, None)
        if not callable(fn):
            raise TptError(f"task.plugin: {path}: defines no function {function}(...)")
        try:
            inspect.signature(fn).bind(*range(arity))
        except TypeError:
            raise TptError(
                f"task.plugin: {path}: {function} must take {arity} arguments "
                f"({'split, options' if function == 'problems' else 'text, problem'}"
                f"{', mode' if arity == 3 else ''})"
            ) from None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Plugin(spec, str(path), sha, module)


def _import_file(name: str, path: Path, spec: str) -> Any:
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise TptError(f"task.plugin: {spec}: not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        del sys.modules[name]
        line = getattr(e, "lineno", None)
        at = f":{line}" if isinstance(e, SyntaxError) and line else ""
        raise TptError(
            f"task.plugin: {path}{at}: cannot import ({type(e).__name__}: {e})"
        ) from None
    return module


def _row(problem: Problem, row: Any) -> dict[str, Any]:
    """What verify gets for `problem`: the plug-in's row as it gave it."""
    return dataclasses.asdict(problem) if isinstance(row, Problem) else dict(row)


def _problem(row: Any, where: str) -> Problem:
    if not isinstance(row, Mapping):
        raise TptError(f"{where}: not a mapping but {type(row).__name__}")
    for key in ("id", "question", "answer"):
        if key not in row:
            raise TptError(f"{where}: missing {key!r}")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise TptError(f"{where}: 'question' must be non-empty text")
    for key in ("id", "answer"):
        if not isinstance(row[key], str | int | float) or isinstance(row[key], bool):
            raise TptError(f"{where}: {key!r} must be text or a number, got {row[key]!r}")
    solution = row.get("solution", "")
    if not isinstance(solution, str):
        raise TptError(f"{where}: 'solution' must be text")
    try:
        json.dumps(dict(row))
    except (TypeError, ValueError) as e:
        raise TptError(f"{where}: not JSON-serializable ({e})") from None
    return Problem(str(row["id"]), row["question"], str(row["answer"]), solution)


def _verdict(got: Any, path: str) -> Verdict:
    if isinstance(got, Verdict):
        return got
    if isinstance(got, bool):
        return Verdict(got, "correct" if got else "wrong")
    if isinstance(got, Mapping) and isinstance(got.get("correct"), bool):
        return Verdict(
            got["correct"], str(got.get("reason") or ("correct" if got["correct"] else "wrong"))
        )
    correct = getattr(got, "correct", None)
    if isinstance(correct, bool):
        return Verdict(
            correct, str(getattr(got, "reason", "") or ("correct" if correct else "wrong"))
        )
    raise TptError(
        f"task.plugin: {path}: verify must return a bool, or an object or mapping with a bool "
        f"'correct'; got {got!r}"
    )
