"""The MATH task: \\boxed{} extraction, equivalence with math-verify and with the fallback,
MATH-layout loading (local files and the hub path offline), and a `tpt run` round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import run_tiny

from tpt_jax.errors import TptError
from tpt_jax.tasks import math as math_task

ROOT = Path(__file__).parents[1]
ROWS = [
    {"problem": "What is $1/2 + 1/4$?", "solution": "We get $\\boxed{\\frac{3}{4}}$.",
     "level": "Level 1", "type": "Prealgebra"},
    {"problem": "Solve $x^2 = 4$ for $x > 0$.", "solution": "So $x = \\boxed{2}$.",
     "answer": "2", "unique_id": "test/algebra/1.json"},
]  # fmt: skip


@pytest.mark.parametrize(
    "text, boxed",
    [
        ("so \\boxed{5}.", "5"),
        ("first \\boxed{1}, finally \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last box
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # nested braces
        ("\\fbox{7}", "7"),
        ("no box here", None),
        ("\\boxed{\\frac{1}{2", None),  # cut off inside the box
    ],
)
def test_last_boxed(text: str, boxed: str | None) -> None:
    assert math_task.last_boxed(text) == boxed


EQUIVALENT = [("\\frac{3}{4}", "0.75"), ("\\dfrac{3}{4}", "\\frac34"), ("2", "2.0"),
              ("90^\\circ", "90"), ("\\text{(A)}", "(A)"), ("1,000", "1000")]  # fmt: skip
DIFFERENT = [("\\frac{3}{4}", "\\frac{4}{3}"), ("2", "-2"), ("x+1", "x+2")]


@pytest.mark.parametrize("a, b", EQUIVALENT)
def test_equivalent_answers(a: str, b: str) -> None:
    assert math_task.equivalent(a, b) and math_task._fallback_equal(a, b)


@pytest.mark.parametrize("a, b", DIFFERENT)
def test_different_answers(a: str, b: str) -> None:
    assert not math_task.equivalent(a, b) and not math_task._fallback_equal(a, b)


def test_math_verify_knows_more_than_the_fallback() -> None:
    """With the `math` extra (a test dependency), algebraic equivalence; the fallback misses it."""
    assert math_task.equivalent("2\\sqrt{2}", "\\sqrt{8}")
    assert not math_task._fallback_equal("2\\sqrt{2}", "\\sqrt{8}")


def test_loading_and_verifying_math_rows(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    first, second = math_task.problems("test", {"source": str(tmp_path)})
    assert (first["id"], first["answer"]) == ("test/0", "\\frac{3}{4}")  # from the box
    assert (second["id"], second["answer"]) == ("test/algebra/1.json", "2")  # `answer` field
    assert math_task.verify("... = 0.75, so \\boxed{0.75}", first)["correct"]
    assert math_task.verify("\\boxed{3/4}", first)["correct"]
    assert math_task.verify("\\boxed{4}", second) == {"correct": False, "reason": "checked"}
    assert math_task.verify("x is 2", second) == {"correct": False, "reason": "no_answer"}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"solution": "\\boxed{1}"}, "a MATH row needs 'problem' and 'solution'"),
        ({"problem": "p", "solution": "no box"}, "no 'answer' and no \\\\boxed"),
    ],
)
def test_bad_rows_are_one_line(tmp_path: Path, row: dict, message: str) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(TptError, match=f"train.jsonl:1: {message}"):
        list(math_task.problems("train", {"source": str(tmp_path / "train.jsonl")}))
    with pytest.raises(TptError, match="task.options.source is required"):
        list(math_task.problems("train", {}))


def test_the_hub_layout_offline(tmp_path: Path, monkeypatch) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "math" / "data"
    repo.mkdir(parents=True)
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(ROWS), repo / f"{split}-00000-of-00001.parquet")
    rows = list(math_task.problems("test", {"source": f"hf:{tmp_path / 'math'}"}))
    assert [r["answer"] for r in rows] == ["\\frac{3}{4}", "2"]


def test_a_math_round_runs_the_loop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 12), ("test", 6)):
        rows = [{"problem": f"What is {i} + 1?", "solution": f"\\boxed{{{i + 1}}}"}
                for i in range(count)]  # fmt: skip
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = run_tiny(
        "math_gemma2_2b.yaml",
        tmp_path,
        {"options": {"source": str(data)}, "train_size": None, "test_size": None},
    )
    stats = json.loads((run_dir / "round_1" / "prune" / "DONE.json").read_text())
    assert stats["traces"] == 24 and stats["extraction_failures"] == 24  # no box from noise
    manifest = json.loads((run_dir / "round_1" / "manifest.json").read_text())
    assert manifest["instruction"] == math_task.INSTRUCTION
    assert manifest["data"]["test_source"]["plugin"] == math_task.__file__
