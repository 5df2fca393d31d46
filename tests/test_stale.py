"""No stale data in a run: each stage records its inputs (config keys, data hashes, upstream
stages); a changed data file is refused on resume, `--force` discards exactly the stages whose
inputs changed, a partial THINK of other sampling settings is never resumed, chat-template
dates are fixed per run, and `task.instruction` is data. In-process, no model work: finished
stages are simulated by writing their INPUTS.json and DONE.json (an end-to-end `--force` run is
in tests/test_run.py)."""

import json
from pathlib import Path

import pytest

from tpt_jax.config import load_config
from tpt_jax.errors import TptError
from tpt_jax.round import Run
from tpt_jax.stages import stage_inputs
from tpt_jax.tasks import INSTRUCTION, Problem
from tpt_jax.think import prompt_for

SMOKE = Path(__file__).parents[1] / "configs" / "smoke.yaml"


def write_data(folder: Path, train_shift: int = 0, test_shift: int = 0) -> Path:
    folder.mkdir(exist_ok=True)
    for split, shift, first in (("train", train_shift, 0), ("test", test_shift, 100)):
        rows = []
        for i in range(first, first + 12):
            answer = i + 2 + (shift if i == first else 0)
            rows.append({"question": f"Tom has {i} apples and buys 2. How many?",
                         "answer": f"{i} + 2 = {answer}\n#### {answer}"})  # fmt: skip
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# These runs share the test process's 8 CPU devices: smoke's 4 decode slots must split over
# data x fsdp, so 4 of them, and tensor takes the other 2.
IN_PROCESS = "model:\n  mesh: [1, 4, 2]\n"


def run_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    data = tmp_path / "data"
    path.write_text(
        f"base: {SMOKE}\n{IN_PROCESS}rounds: 1\ntask:\n  name: gsm8k\n  source: {data}\n"
        f"  train_size: null\n  test_size: null\n{extra}"
    )
    return path


def open_run(tmp_path: Path, *sets: str, force: bool = False) -> Run:
    return Run(load_config(run_config(tmp_path), sets), tmp_path / "run", force=force)


def finish(run: Run, *stages: tuple[int, str]) -> None:
    """Pretend these stages finished: INPUTS.json as the stage writes it, an output, DONE.json."""
    for r, stage in stages:
        out = run.round_dir(r) / stage
        out.mkdir(parents=True)
        (out / "INPUTS.json").write_text(json.dumps(run._inputs(stage, r)))
        (out / "output.jsonl").write_text("{}\n")
        (out / "DONE.json").write_text("{}")


ALL = [(0, "eval"), (1, "think"), (1, "prune"), (1, "train"), (1, "eval")]


def present(run: Run) -> list[tuple[int, str]]:
    return [(r, s) for r, s in ALL if (run.round_dir(r) / s).exists()]


@pytest.fixture
def finished(tmp_path):
    write_data(tmp_path / "data")
    run = open_run(tmp_path)
    finish(run, *ALL)
    (run.round_dir(1) / "manifest.json").write_text("{}")
    run.preflight(model=False)  # everything is current: nothing happens
    assert present(run) == ALL
    run._lock.close()
    return tmp_path


def test_changed_data_file_is_refused_on_resume(finished):
    write_data(finished / "data", test_shift=5)  # one test answer changed in place
    run = open_run(finished)
    with pytest.raises(TptError) as info:
        run.preflight(model=False)
    message = str(info.value)
    assert "round 0 eval was made from other inputs (test data: " in message
    # Only the evaluations read the test split; THINK, PRUNE and TRAIN stay valid.
    assert message.endswith("--force discards round 0 eval, round 1 eval and redoes them")
    assert present(run) == ALL


def test_changed_train_data_reaches_every_stage(finished):
    write_data(finished / "data", train_shift=1)
    run = open_run(finished, force=True)
    run.preflight(model=False)
    assert present(run) == []  # train answers feed PRUNE, few-shot examples feed every prompt
    assert not (run.round_dir(1) / "manifest.json").exists()


@pytest.mark.parametrize(
    "change, kept",
    [
        ("think.temperature=0.5", [(0, "eval")]),  # THINK and all after it
        ("prune.train_budget=8", [(0, "eval"), (1, "think")]),
        ("train.lr=0.01", [(0, "eval"), (1, "think"), (1, "prune")]),
        ("eval.n=3", [(1, "think"), (1, "prune"), (1, "train")]),  # both evaluations
        ("engine.dtype=bfloat16", []),  # sampling numerics: every sampled stage and after
        ("engine.slots=8", ALL),  # traces do not depend on the slot count
        ("train.on_nan=skip", ALL),  # a policy for bad steps, not an input
    ],
)
def test_force_discards_exactly_the_stages_whose_inputs_changed(finished, change, kept, capsys):
    run = open_run(finished, change, force=True)
    run.preflight(model=False)
    assert present(run) == kept
    if kept != ALL:
        assert "discarding round" in capsys.readouterr().err
        assert not (run.round_dir(1) / "manifest.json").exists()


def test_without_force_a_changed_config_is_refused_before_anything_is_discarded(finished):
    with pytest.raises(TptError, match=r"different config \(think.temperature: 0.8 then"):
        open_run(finished, "think.temperature=0.5")
    assert present(open_run(finished)) == ALL


def test_partial_think_of_other_sampling_settings_is_not_resumed(tmp_path):
    write_data(tmp_path / "data")
    run = open_run(tmp_path)
    finish(run, (0, "eval"))
    think = run.round_dir(1) / "think"
    think.mkdir(parents=True)
    (think / "INPUTS.json").write_text(json.dumps(run._inputs("think", 1)))
    (think / "traces.jsonl").write_text('{"problem_id": "gsm8k/train/0"}\n')  # no DONE.json
    run._lock.close()
    run = open_run(tmp_path, "think.top_k=5", force=True)
    run.preflight(model=False)
    assert not think.exists() and present(run) == [(0, "eval")]
    # And the safety net when a stage is started without preflight: it refuses to mix.
    think.mkdir(parents=True)
    (think / "INPUTS.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(TptError, match="partial output of other inputs"):
        run.stage("think", 1)


def test_template_time_is_fixed_per_run_and_recorded(tmp_path):
    write_data(tmp_path / "data")
    first = open_run(tmp_path)
    first._lock.close()
    later = open_run(tmp_path)
    assert later.template_time == first.template_time
    assert json.loads((tmp_path / "run" / "started.json").read_text())["time"].startswith(
        first.template_time.date().isoformat()
    )
    later.problems("train")
    manifest = later._manifest(0, {}, {})
    assert manifest["template_time"] == first.template_time.isoformat()
    assert manifest["instruction"] == INSTRUCTION


def test_instruction_from_text_or_file(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "authors.txt").write_text("Solve it. End with #### <n>.\n")
    write_data(tmp_path / "data")
    from_file = load_config(run_config(tmp_path, "  instruction: file:prompts/authors.txt\n"))
    assert from_file.task.instruction == "Solve it. End with #### <n>."
    inline = load_config(run_config(tmp_path), ["task.instruction=Think, then #### <n>."])
    problem = Problem("p", "What is 2 + 2?", "4", "#### 4")
    assert prompt_for(problem, inline.task)[-1]["content"] == (
        "Think, then #### <n>.\n\nWhat is 2 + 2?"
    )
    plain = load_config(run_config(tmp_path), ["task.instruction=Go.", "task.prompt=plain"])
    assert prompt_for(problem, plain.task).startswith("Go.\n\nQuestion: What is 2 + 2?")
    # The instruction is an input of every prompt: THINK and EVAL see it.
    default = load_config(run_config(tmp_path))
    data = {"train": "a", "test": "b"}
    for stage in ("think", "eval"):
        assert stage_inputs(inline, stage, 1, data) != stage_inputs(default, stage, 1, data)
    with pytest.raises(TptError, match=r"run.yaml: task.instruction: cannot read .*nope.txt"):
        load_config(run_config(tmp_path, "  instruction: file:nope.txt\n"))
    with pytest.raises(TptError, match="task.instruction is empty"):
        load_config(run_config(tmp_path), ["task.instruction= "])


@pytest.mark.parametrize(
    "change, adopted",
    [
        ("train.init=base", ALL),  # restart-from-base: round 1 is the same run
        ("prune.strategy=correct", [(0, "eval"), (1, "think")]),  # smoke prunes nothing
        ("seed=1", []),
    ],
)
def test_reuse_adopts_the_finished_stages_whose_inputs_are_equal(finished, change, adopted):
    main = Run(load_config(run_config(finished)), finished / "run")
    model = main.round_dir(1) / "model"
    model.mkdir()
    (model / "weights").write_text("w")
    train_done = main.round_dir(1) / "train" / "DONE.json"
    train_done.write_text(json.dumps({"model": str(model), "carried": False}))
    main._lock.close()
    config = load_config(run_config(finished), [change])
    other = Run(config, finished / "other", reuse=(finished / "run",))
    other.preflight(model=False)
    assert present(other) == adopted
    if (1, "train") in adopted:
        assert other.model_path(1) == str(other.round_dir(1) / "model")
        assert (other.round_dir(1) / "model" / "weights").read_text() == "w"
        done = json.loads((other.round_dir(1) / "train" / "DONE.json").read_text())
        assert done["reused_from"] == str(finished / "run" / "round_1" / "train")
    other.preflight(model=False)  # adopted stages are valid stages of the new run
    assert present(other) == adopted
