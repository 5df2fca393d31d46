"""A user's own task (task.name: plugin): the example plug-in end to end, and every way a
plug-in can be wrong as a one-line error naming it, before any sampling."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from tiny import run_tiny

from tpt_jax.config import PruneConfig, load_config
from tpt_jax.errors import TptError
from tpt_jax.evaluate import grade
from tpt_jax.prune import prune
from tpt_jax.tasks.plugin import Verdict, load_plugin

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "list_sum_task.py"


def plugin_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


GOOD = """
    def problems(split, options):
        return [{"id": i, "question": f"q{i}?", "answer": i} for i in range(3)]

    def verify(text, problem):
        return text.strip() == str(problem["answer"])
"""


def test_the_example_plugin() -> None:
    plugin = load_plugin(str(EXAMPLE))
    train = plugin.problems("train", {"train": 20, "seed": 3})
    assert len(train) == 20 and len({p.id for p in train}) == 20
    assert train.source == {"plugin": str(EXAMPLE), "sha256": plugin.sha256}
    first = train[0]
    assert plugin.verify(f"so\n#### {first.answer}", first.id) == Verdict(True, "correct")
    assert plugin.verify("#### 100000", first.id) == Verdict(False, "wrong")
    assert plugin.verify("no idea", first.id) == Verdict(False, "no_answer")
    assert plugin.instruction.startswith("Add up the numbers")


def test_a_module_name_works_too(tmp_path: Path, monkeypatch) -> None:
    plugin_file(tmp_path, GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = load_plugin("my_task")
    assert [p.answer for p in plugin.problems("test", {})] == ["0", "1", "2"]
    assert plugin.verify("2", "2").correct and plugin.instruction is None
    calls = []
    real = plugin.module.verify
    plugin.module.verify = lambda text, problem: calls.append(text) or real(text, problem)
    got = plugin.verify_all([("2", "2"), ("1", "2"), ("2", "2")])  # cheap: nothing is kept
    assert [v.correct for v in got] == [True, False, True] and calls == ["2", "1", "2"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("def problems(:\n", "my_task.py:1: cannot import (SyntaxError"),
        ("import no_such_module\n", "cannot import (ModuleNotFoundError"),
        ("def problems(split, options):\n    return []\n", "defines no function verify"),
        ("def problems(split):\n    return []\ndef verify(t, p):\n    return True\n",
         "problems must take 2 arguments (split, options)"),
    ],
)  # fmt: skip
def test_a_broken_plugin_is_one_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(TptError) as info:
        load_plugin(plugin_file(tmp_path, body))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "my_task.py" in str(info.value)


@pytest.mark.parametrize(
    "rows, message",
    [
        ('[{"id": 1, "question": "q?"}]', "problems('train') row 0: missing 'answer'"),
        ('[{"id": 1, "question": "", "answer": 2}]', "row 0: 'question' must be non-empty"),
        ('["q?"]', "row 0: not a mapping but str"),
        ('[{"id": 1, "question": "q?", "answer": [2]}]', "'answer' must be text or a number"),
        ('[{"id": 1, "question": "q", "answer": 2}] * 2', "row 1: duplicate id '1'"),
        ("[]", "problems('train') returned no problems"),
        ("1 / 0", "problems('train') raised ZeroDivisionError"),
    ],
)
def test_malformed_rows_are_one_line(tmp_path: Path, rows: str, message: str) -> None:
    body = f"def problems(split, options):\n    return {rows}\ndef verify(t, p):\n    return 1\n"
    plugin = load_plugin(plugin_file(tmp_path, body))
    with pytest.raises(TptError) as info:
        plugin.problems("train", {})
    assert message in str(info.value) and "my_task.py" in str(info.value)


def test_a_verify_that_raises_or_returns_junk_is_one_line(tmp_path: Path) -> None:
    body = GOOD.replace('return text.strip() == str(problem["answer"])', "return {'x': 1}")
    plugin = load_plugin(plugin_file(tmp_path, body))
    plugin.problems("train", {})
    with pytest.raises(TptError, match="verify must return a bool"):
        plugin.verify("1", "1")
    plugin.module.verify = lambda text, problem: problem["nope"]
    with pytest.raises(TptError, match=r"verify raised KeyError: 'nope' \(problem '1'\)"):
        plugin.verify("1", "1")


def test_config_keys(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    plugin_file(tmp_path / "tasks", GOOD)
    config = tmp_path / "run.yaml"
    config.write_text("task: {name: plugin, plugin: tasks/my_task.py, options: {n: 3}}\n")
    task = load_config(config).task
    assert task.plugin == str(tmp_path / "tasks" / "my_task.py") and task.options == {"n": 3}
    for text, message in [
        ("task: {name: plugin}\n", "task.plugin is set exactly when task.name is plugin"),
        ("task: {name: gsm8k, plugin: x.py}\n", "task.plugin is set exactly when"),
        ("task: {name: plugin, plugin: x.py, options: 3}\n", "task.options must be a mapping"),
    ]:
        config.write_text(text)
        with pytest.raises(TptError, match=message):
            load_config(config)


def test_a_plugin_task_runs_the_loop(tmp_path: Path) -> None:
    """One round of `tpt run` on configs/plugin_demo.yaml (the example plug-in) shrunk to the
    smoke config's tiny random model: PRUNE and EVAL go through the plug-in's verify, the
    manifest records its path and hash, and there is no prior baseline (the task defines its
    own right answers)."""
    run_dir = run_tiny(
        "plugin_demo.yaml",
        tmp_path,
        {"options": {"train": 12, "test": 6}, "train_size": None, "test_size": None},
    )
    manifest = json.loads((run_dir / "round_1" / "manifest.json").read_text())
    source = manifest["data"]["train_source"]
    assert source == {"plugin": str(EXAMPLE), "sha256": load_plugin(str(EXAMPLE)).sha256}
    assert manifest["instruction"].startswith("Add up the numbers")
    summary = json.loads((run_dir / "round_1" / "eval" / "summary.json").read_text())
    assert summary["problems"] == 6 and "prior_baseline" not in summary
    traces = [json.loads(t) for t in (run_dir / "round_1" / "think" / "traces.jsonl").open()]
    # the plug-in's ids; train/0 is the worked example (few_shot: 1), the rest are THINK's
    assert len(traces) == 11 * 2 and traces[0]["problem_id"] == "train/1"


def test_prune_and_eval_grade_with_the_plugins_verify() -> None:
    """`verify` decides, not the #### grader: a trace with a right `####` line is wrong when
    the verifier says so, and the verdict's no_answer counts as an extraction failure."""
    traces = [
        {"problem_id": "a", "sample": i, "text": text, "finish_reason": "stop", "n_tokens": 3}
        for i, text in enumerate(["#### 4", "yes", "nothing"])
    ]
    verdicts = {"#### 4": Verdict(False, "wrong"), "yes": Verdict(True, "correct"),
                "nothing": Verdict(False, "no_answer")}  # fmt: skip
    verify = lambda pairs, mode: [verdicts[text] for text, _ in pairs]  # noqa: E731
    result = prune(
        traces,
        {"a": "4"},
        PruneConfig(strategy="none", max_per_problem=3, val_budget=0),
        seed=0,
        verify=verify,
    )
    assert [t["correct"] for t in sorted(result.train + result.val, key=lambda t: t["sample"])] == [
        False, True, False
    ]  # fmt: skip
    assert result.stats["correct"] == 1 and result.stats["extraction_failures"] == 1
    graded = grade(traces, {"a": "4"}, "strict", verify)
    assert graded["counts"] == {"a": (3, 1)} and graded["extraction_failure_rate"] == 1 / 3
    assert grade(traces, {"a": "4"}, "strict")["counts"] == {"a": (3, 1)}  # "#### 4" alone


def test_a_parallel_plugin_verifies_while_sampling_goes_on(tmp_path: Path) -> None:
    """`prefetch` (called with each chunk of fresh samples) verifies in the background; the
    stage's `verify_all` then waits for it and verifies nothing twice. A verify that raised
    in the background raises there, as one line."""
    body = GOOD + "\n    PARALLEL_VERIFY = True\n"  # GOOD is indented (dedented when written)
    plugin = load_plugin(plugin_file(tmp_path, body))
    plugin.problems("train", {})
    calls = []
    real = plugin.module.verify
    plugin.module.verify = lambda text, problem: calls.append(text) or real(text, problem)
    chunk = [{"text": str(i), "problem_id": str(i)} for i in range(3)]
    plugin.prefetch(chunk)
    verdicts = plugin.verify_all([(r["text"], r["problem_id"]) for r in chunk] + [("9", "1")])
    assert [v.correct for v in verdicts] == [True, True, True, False]
    assert sorted(calls) == ["0", "1", "2", "9"]  # each once: the prefetched ones not again
    plugin.module.verify = lambda text, problem: 1 / 0
    plugin.prefetch([{"text": "x", "problem_id": "0"}])
    with pytest.raises(TptError, match="verify raised ZeroDivisionError"):
        plugin.verify_all([("y", "0")])


def test_a_plugin_with_grading_modes_gets_the_stages_mode(tmp_path: Path) -> None:
    """GRADING_MODES: verify takes the mode as a third argument (checked when loading), gets the
    stage's mode, and a parallel one keeps verdicts per mode."""
    body = GOOD.replace("def verify(text, problem):", "def verify(text, problem, mode):")
    body += "\n    GRADING_MODES = ('exact', 'loose')\n    PARALLEL_VERIFY = True\n"
    plugin = load_plugin(plugin_file(tmp_path, body))
    assert plugin.grading_modes == ("exact", "loose")
    plugin.problems("train", {})
    seen = []
    plugin.module.verify = lambda text, problem, mode: seen.append(mode) or mode == "loose"
    assert [v.correct for v in plugin.verify_all([("1", "1")], "exact")] == [False]
    assert [v.correct for v in plugin.verify_all([("1", "1")], "loose")] == [True]
    assert seen == ["exact", "loose"]
    with pytest.raises(TptError, match=r"verify must take 3 arguments \(text, problem, mode\)"):
        load_plugin(plugin_file(tmp_path, GOOD + "\n    GRADING_MODES = ('exact',)\n"))


@pytest.mark.parametrize("name", ["arithmetic", "gsm8k"])
def test_the_answer_tasks_are_plugins(name: str, tmp_path: Path) -> None:
    """The built-in answer tasks go through the plug-in protocol: `task.name: X` and
    `task.name: plugin` naming the package's module load the same problems, and verify is
    the grading of `tpt_jax.grading` in every mode (GSM8K's own solutions all right)."""
    from tpt_jax.grading import MODES, extract_answer, is_correct
    from tpt_jax.round import Run

    if name == "arithmetic":
        section = "{name: arithmetic, levels: [1, 3], max_value: 50, test_size: 40, train_size: 30}"
        options = "{levels: [1, 3], max_value: 50, test_size: 40, train_size: 30, seed: 0}"
    else:  # GSM8K's layout, answers with thousands separators among them
        gsm8k = tmp_path / "gsm8k"
        gsm8k.mkdir()
        for split in ("train", "test"):
            rows = [
                {"question": f"{split}: what is {i} + 995?",
                 "answer": f"{i} + 995 = <<{i}+995={i + 995}>>{i + 995}\n#### {i + 995:,}"}
                for i in range(50)
            ]  # fmt: skip
            (gsm8k / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        section = f"{{name: gsm8k, source: {gsm8k}, test_size: 40, train_size: 30}}"
        options = f"{{source: {gsm8k}}}"
    runs = []
    for task in (section, f"{{name: plugin, plugin: tpt_jax.tasks.{name}, options: {options},"
                          " test_size: 40, train_size: 30}"):  # fmt: skip
        config = tmp_path / f"{len(runs)}.yaml"
        config.write_text(f"base: {ROOT / 'configs' / 'smoke.yaml'}\nseed: 0\ntask: {task}\n")
        runs.append(Run(load_config(config), tmp_path / f"run{len(runs)}"))
    builtin, plugin = runs
    assert builtin.plugin.grading_modes == MODES == plugin.plugin.grading_modes
    for split in ("train", "test"):
        assert builtin.problems(split) == plugin.problems(split) and builtin.problems(split)
    assert builtin._data["test_sha256"] != plugin._data["test_sha256"]  # + the module's hash
    problems = builtin.problems("test")
    texts = [p.solution for p in problems] + ["#### 1,000", "The answer is 3.", "####\n7"]
    pairs = [(t, p.id) for t in texts for p in problems[:5]] + [
        (p.solution, p.id) for p in problems
    ]
    answers = {p.id: p.answer for p in problems}
    for mode in MODES:
        verdicts = builtin.plugin.verify_all(pairs, mode)
        assert [v.correct for v in verdicts] == [is_correct(t, answers[i], mode) for t, i in pairs]
        assert [v.unanswered for v in verdicts] == [
            extract_answer(t, mode) is None for t, _ in pairs
        ]
        assert all(v.correct for v in verdicts[-len(problems) :])  # every solution is right
