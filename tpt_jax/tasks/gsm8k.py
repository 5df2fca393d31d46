"""GSM8K loading, and the data sources every loader shares (hub, directory, JSONL, Parquet).

Pure Python (no JAX): layer 0; ``datasets`` and ``pyarrow`` are imported lazily, only by the
loaders that need them. A GSM8K :class:`Problem` holds a question, its reference answer string
(what ``grading``'s strict mode compares against) and a worked solution in GSM8K format: one
calculation per line, calculator annotations ``<<...>>`` removed, and a last line
``#### <answer>``.

GSM8K
-----
:func:`load_gsm8k` reads a split from a directory holding ``{split}.jsonl`` or
``{split}.parquet``, from one ``.jsonl`` / ``.parquet`` file, or from the Hugging Face hub
(``"hf"`` or ``"hf:OWNER/NAME"``, through ``datasets.load_dataset(NAME, "main", split=split)``;
``NAME`` may also be a local dataset directory). Ids are ``gsm8k/{split}/{i}`` with ``i`` the
0-based row index in the source (a row's own ``id`` field, if it has one, is used instead of
``i``). The reference answer is ``grading.reference_answer`` of the solution, as the data writes
it (``"1,080"`` stays ``"1,080"``, as in the authors' scripts), and the solution's last line is
rewritten to ``#### <answer>`` so that the solution itself grades as correct in every mode.

Bad input raises :class:`~tpt_jax.errors.TptError` with one line naming the file and the line
(``train.jsonl:17: not valid JSON``; Parquet and hub rows are named ``train.parquet: row 16``,
0-based like the ids). With ``on_bad_line="skip"`` bad rows are left out instead; the returned
:class:`ProblemList` (a ``list``) then tells how many in ``.skipped`` and why in ``.skip_reasons``.
A split with no problems left is an error in both modes. ``.source`` says what was read, for a
run's provenance: a local file's path, size and sha256, or a hub dataset's name, split and
``datasets`` fingerprint.

The module is the `gsm8k` task's plug-in (``tasks/plugin.py``): :func:`problems` and the
answer tasks' ``verify`` (``tasks/answers.py``). Generated arithmetic word problems live in
:mod:`tpt_jax.tasks.arithmetic`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tpt_jax.errors import TptError
from tpt_jax.grading import reference_answer
from tpt_jax.tasks.answers import GRADING_MODES, verify
from tpt_jax.tasks.base import Problem, ProblemList
from tpt_jax.tasks.prompts import strip_calculator

__all__ = ["GRADING_MODES", "load_gsm8k", "problems", "source_rows", "verify"]

# A reference answer: digits with well-formed thousands separators, or plain digits; decimals.
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
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
    _, marker, tail = solution.rpartition("####")
    if marker and not tail.strip():
        raise _BadRow("reference answer after '####' is empty")
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


def _hf_rows(
    name: str, split: str, info: dict[str, Any], config: str | None = "main"
) -> Iterator[tuple[str, Any]]:
    label = f"hf:{name}"
    try:
        import datasets
    except ImportError:
        raise TptError(
            f"{label}: loading from the Hugging Face hub needs the 'datasets' package "
            "(pip install datasets)"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        of = f" of config {config!r}" if config else ""
        raise TptError(f"{label}: cannot load split {split!r}{of}: {msg}") from None
    info["fingerprint"] = getattr(ds, "_fingerprint", None)  # datasets' hash of the split
    for i, row in enumerate(ds):
        yield f"{label}[{split}]: row {i}", row


def _tfds_rows(
    name: str, config: str | None, split: str, info: dict[str, Any]
) -> Iterator[tuple[str, Any]]:
    """A prepared TensorFlow Datasets split, read with `tfds.data_source` (ArrayRecord, random
    access, no TensorFlow needed); bytes fields become text. The data directory is TFDS's own
    (`TFDS_DATA_DIR`, default ~/tensorflow_datasets): nothing is downloaded here."""
    label = f"tfds:{name}"
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise TptError(
            f"{label}: reading TensorFlow Datasets needs the 'tfds' extra "
            "(pip install -e '.[tfds]')"
        ) from None
    full = f"{name}/{config}" if config else name
    try:
        data_dir = os.environ.get("TFDS_DATA_DIR") or None
        source = tfds.data_source(full, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises many types; one line for all
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise TptError(f"{label}: cannot read split {split!r} ({msg})") from None
    info["rows"] = len(source)
    for i in range(len(source)):
        row = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in source[i].items()}
        yield f"{label}[{split}]: row {i}", row


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise TptError(f"{path}: cannot read ({e.strerror})") from None
    return digest.hexdigest()


def source_rows(
    source: str | Path, split: str, *, hf_default: str = _HF_DEFAULT, hf_config: str | None = "main"
) -> tuple[str, Iterator[tuple[str, Any]], dict[str, Any]]:
    """(label, (where, row) pairs, what is read) from `hf[:NAME]` (`datasets`, config
    `hf_config`), `tfds:NAME[:CONFIG]` (a prepared TensorFlow Datasets dataset), a directory
    holding SPLIT.jsonl or SPLIT.parquet, or one such file; a hub
    source fills in its fingerprint as it is read. Shared by the GSM8K and code loaders."""
    text = str(source)
    if text.startswith("tfds:"):
        name, _, config = text[5:].partition(":")
        info = {"tfds": name, "config": config or None, "split": split}
        return f"{text}[{split}]", _tfds_rows(name, config or None, split, info), info
    if text == "hf" or text.startswith("hf:"):
        name = text[3:] or hf_default
        info: dict[str, Any] = {"hf": name, "config": hf_config, "split": split}
        return f"hf:{name}[{split}]", _hf_rows(name, split, info, hf_config), info
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
    if path.suffix in (".jsonl", ".parquet"):
        info = {"path": str(path), "bytes": path.stat().st_size, "sha256": _file_sha256(path)}
        rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _parquet_rows(path)
        return str(path), rows, info
    raise TptError(f"{path}: unknown file type ({_expected(split)})")


def problems(split: str, options: Mapping[str, Any]) -> ProblemList:
    """The task plug-in's problems: ``options`` holds ``source`` (default the hub's
    openai/gsm8k) and ``on_bad_line``, as :func:`load_gsm8k` takes them."""
    source = options.get("source", f"hf:{_HF_DEFAULT}")
    return load_gsm8k(source, split, on_bad_line=options.get("on_bad_line", "fail"))


def load_gsm8k(source: str | Path, split: str, *, on_bad_line: str = "fail") -> ProblemList:
    """Problems of one GSM8K split (see the module docstring for sources, ids and errors).

    ``on_bad_line="fail"`` (default) raises TptError at the first bad row; ``"skip"`` leaves bad
    rows out and reports them in the result's ``.skipped`` / ``.skip_reasons``.
    """
    if on_bad_line not in _ON_BAD_LINE:
        raise TptError(f"on_bad_line must be 'fail' or 'skip', got {on_bad_line!r}")
    label, rows, info = source_rows(source, split)
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
    return ProblemList(problems, reasons, info)
