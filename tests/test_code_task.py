"""The code task: the offline generator's tests agree with its statements, the CodeContests and
MBPP layouts load from local files and their reference solutions pass, bad rows are one line,
and a `tpt run` round goes through the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import run_tiny

from tpt_jax.errors import TptError
from tpt_jax.tasks import code as code_task
from tpt_jax.tasks.plugin import load_plugin

ROOT = Path(__file__).parents[1]
SUM = "```python\nn = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs))\n```"

CODECONTESTS = {
    "name": "add_two",
    "description": "Read two integers a and b on one line and print a + b.",
    "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
    "private_tests": {"input": ["-5 5\n"], "output": ["0\n"]},
    "generated_tests": {"input": ["100 23\n"], "output": ["123\n"]},
    "solutions": {
        "language": [2, 3],
        "solution": ["int main() {}", "a, b = map(int, input().split())\nprint(a + b)"],
    },
}
MBPP = {
    "task_id": 7,
    "text": "Write a function to double a number.",
    "code": "def double(x):\n    return 2 * x",
    "test_list": ["assert double(2) == 4", "assert double(-3) == -6"],
    "test_setup_code": "",
}


def rows(split: str = "train", **options) -> list[dict]:
    return list(code_task.problems(split, options))


def test_the_generator_is_seeded_and_its_tests_match_the_statements() -> None:
    train = rows(train=40, levels=[1, 2, 3], seed=5)
    assert train == rows(train=40, levels=[1, 2, 3], seed=5)
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in rows("test", test=40, seed=5)})
    assert {r["level"] for r in train} == {1, 2, 3}
    sums = [r for r in train if r["question"].endswith("Print the sum of the numbers.")]
    others = [r for r in train if "sum" not in r["question"] and "how many" not in r["question"]]
    assert sums and others
    assert all(code_task.verify(SUM, r).correct for r in sums)
    assert not any(code_task.verify(SUM, r).correct for r in others[:5])


def test_codecontests_and_mbpp_layouts_from_local_files(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps(CODECONTESTS) + "\n" + json.dumps(MBPP) + "\n")
    contest, mbpp = rows(source=str(tmp_path))
    assert contest["id"] == "train/add_two" and len(contest["tests"]) == 3
    assert [t["input"] for t in rows(source=str(tmp_path), tests="public")[0]["tests"]] == ["1 2\n"]
    for row in (contest, mbpp):  # each reference solution passes its own tests
        verdict = code_task.verify(f"```python\n{row['answer']}\n```", row)
        assert verdict.correct, verdict
    assert "assert double(2) == 4" in mbpp["question"]
    wrong = code_task.verify("```python\nprint(3)\n```", contest)
    assert (wrong.correct, wrong.reason) == (False, "wrong")
    # Through the plug-in, many programs are verified on threads, in order.
    plugin = load_plugin("tpt_jax.tasks.code")
    plugin.extras.update({"train/add_two": contest})
    texts = [f"```python\n{contest['answer']}\n```", "```python\nprint(3)\n```"] * 4
    verdicts = plugin.verify_all([(t, "train/add_two") for t in texts])
    assert [v.reason for v in verdicts] == ["correct", "wrong"] * 4
    assert mbpp["timeout_s"] == 4.0 and rows(source=str(tmp_path), timeout_s=1)[0]["timeout_s"] == 1


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "train.jsonl:1: not valid JSON"),
        ('{"title": "x"}', "train.jsonl:1: neither CodeContests"),
        ('{"description": "d", "public_tests": {"input": [], "output": []}}', "no public"),
        ('{"text": "t", "test_list": []}', "train.jsonl:1: empty test_list"),
    ],
)
def test_bad_rows_are_one_line(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "train.jsonl").write_text(line + "\n")
    with pytest.raises(TptError, match=message):
        rows(source=str(tmp_path / "train.jsonl"), tests="public")


def test_a_code_round_runs_the_loop(tmp_path: Path) -> None:
    """One round of `tpt run` on configs/code_demo.yaml (the generated code task) shrunk to the
    smoke config's tiny random model: THINK samples, PRUNE and EVAL verify in the sandbox (a
    random model writes no program: every verdict is no_program, an extraction failure)."""
    run_dir = run_tiny(
        "code_demo.yaml",
        tmp_path,
        {"options": {"train": 12, "test": 6}, "train_size": None, "test_size": None},
    )
    stats = json.loads((run_dir / "round_1" / "prune" / "DONE.json").read_text())
    assert stats["traces"] == 24 and stats["extraction_failures"] == 24
    manifest = json.loads((run_dir / "round_1" / "manifest.json").read_text())
    source = manifest["data"]["train_source"]
    assert source == {
        "plugin": code_task.__file__,
        "sha256": load_plugin("tpt_jax.tasks.code").sha256,
    }
    assert manifest["instruction"] == code_task.INSTRUCTION


def test_codecontests_through_datasets_offline(tmp_path: Path, monkeypatch) -> None:
    """`source: hf:NAME` goes through datasets.load_dataset(NAME, split=...); NAME is a local
    directory laid out as on the hub (Parquet files per split, as deepmind/code_contests)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "code_contests" / "data"
    repo.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([CODECONTESTS]), repo / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([CODECONTESTS]), repo / "test-00000-of-00001.parquet")
    (row,) = rows(source=f"hf:{tmp_path / 'code_contests'}")
    assert row["id"] == "train/add_two" and len(row["tests"]) == 3
    assert code_task.verify(f"```python\n{row['answer']}\n```", row).correct
