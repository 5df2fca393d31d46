"""User mistakes and run-level faults through the real `tpt` command, each in a fresh process on
one CPU device (as a user runs it): every mistake is one line `tpt: error: ...` naming the file,
line or key at fault, exit code 2, no traceback; bad data lines can be skipped and counted; an
empty round stops cleanly or carries the model forward; two processes never share a run
directory, and a killed one does not leave it locked; equal configs give equal runs; manifests
record what was read."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tpt_jax.checkpoint import read_train_state_meta
from tpt_jax.config import load_config
from tpt_jax.errors import TptError
from tpt_jax.round import Run

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# Runs made in this process share its 8 CPU devices: smoke's 4 decode slots must split over
# data x fsdp, so 4 of them, and tensor takes the other 2.
IN_PROCESS = "model.mesh=[1,4,2]"


def env() -> dict:
    full = {k: v for k, v in os.environ.items() if k != "TPT_KILL_AT"}
    full.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    return full


def tpt(*args) -> subprocess.CompletedProcess:
    """The `tpt` command in a fresh process on one CPU device (as in tests/test_run.py)."""
    return subprocess.run(
        [sys.executable, "-m", "tpt_jax.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=600,
    )


def one_line_error(proc: subprocess.CompletedProcess, *needles) -> str:
    """The process failed with exactly one stderr line `tpt: error: ...` holding every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpt: error: "), proc.stderr[-3000:]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def config(tmp_path: Path, text: str = "", name: str = "run.yaml") -> Path:
    """A config over configs/smoke.yaml (2 rounds, tiny random model, 12 THINK problems)."""
    path = tmp_path / name
    path.write_text(f"base: {SMOKE}\n{text}")
    return path


def row(i: int, question: str | None = None, **extra) -> bytes:
    question = question or f"Tom has {i} apples and buys 2 more. How many apples does he have?"
    answer = f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}"
    return json.dumps({"question": question, "answer": answer, **extra}).encode()


GOOD_TRAIN = [row(i) for i in range(12)]
GOOD_TEST = [row(100 + i) for i in range(6)]


def gsm8k(tmp_path: Path, train=GOOD_TRAIN, test=GOOD_TEST, task: str = "", extra: str = ""):
    """A GSM8K directory (train.jsonl, test.jsonl) and a smoke config reading it; `task` adds
    lines to the task section, `extra` other sections."""
    data = tmp_path / "data"
    data.mkdir()
    for split, lines in (("train", train), ("test", test)):
        (data / f"{split}.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    text = f"task:\n  name: gsm8k\n  source: {data}\n  train_size: null\n  test_size: null\n"
    return config(tmp_path, text + task + extra)


# --- data -----------------------------------------------------------------------------------

BAD_DATA = [
    # (id, train lines, test lines, needles in the message)
    ("malformed JSON", [*GOOD_TRAIN[:2], b"{not json", *GOOD_TRAIN[2:]], GOOD_TEST,
     ["train.jsonl:3: not valid JSON"]),
    ("missing field", [*GOOD_TRAIN, b'{"question": "How many?"}'], GOOD_TEST,
     ["train.jsonl:13: missing field 'answer'"]),
    ("empty answer", GOOD_TRAIN, [GOOD_TEST[0], b'{"question": "q", "answer": "so\\n#### "}'],
     ["test.jsonl:2: reference answer after '####' is empty"]),
    ("non-numeric answer", [*GOOD_TRAIN, b'{"question": "q", "answer": "#### many"}'], GOOD_TEST,
     ["train.jsonl:13: reference answer 'many' after '####' is not a number"]),
    ("duplicate id", [*GOOD_TRAIN, row(1, id="x"), row(2, id="x")], GOOD_TEST,
     ["train.jsonl:14: duplicate id 'gsm8k/train/x' (first at ", "train.jsonl:13)"]),
    ("non-UTF-8", [*GOOD_TRAIN[:4], b'{"question": "caf\xe9?", "answer": "#### 1"}'], GOOD_TEST,
     ["train.jsonl:5: not valid UTF-8"]),
    ("empty split", GOOD_TRAIN, [b""], ["test.jsonl: split 'test' has no problems"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "train,test,needles", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA]
)
def test_bad_data_names_file_and_line(tmp_path, train, test, needles):
    proc = tpt("run", gsm8k(tmp_path, train, test), "--run-dir", tmp_path / "run")
    one_line_error(proc, tmp_path / "data", *needles)
    assert not list((tmp_path / "run").glob("round_*"))  # failed before any model work


def test_missing_data_source(tmp_path):
    cfg = config(tmp_path, f"task:\n  name: gsm8k\n  source: {tmp_path / 'nowhere'}\n")
    one_line_error(tpt("run", cfg, "--run-dir", tmp_path / "run"), "nowhere: no such file")
    (tmp_path / "empty").mkdir()
    cfg = config(tmp_path, f"task:\n  name: gsm8k\n  source: {tmp_path / 'empty'}\n")
    proc = tpt("run", cfg, "--run-dir", tmp_path / "run")  # the old config never made anything
    one_line_error(proc, "empty: no train.jsonl or train.parquet in this directory")


# --- config ---------------------------------------------------------------------------------

BAD_CONFIG = [
    ("unknown key", "think:\n  nn: 3\n", "unknown key think.nn; did you mean think.n?"),
    ("wrong type", "think:\n  n: two\n", "think.n must be int, got 'two'"),
    ("negative lr", "train:\n  lr: -1.0e-5\n", "train.lr must be >= 0.0, got -1e-05"),
    ("zero samples", "think:\n  n: 0\n", "think.n must be >= 1, got 0"),
    ("bad choice", "on_empty_round: skip\n", "on_empty_round must be one of stop, carry"),
    ("duplicate key", "think:\n  n: 3\nthink:\n  n: 4\n", ":4: duplicate key think"),
]


@pytest.mark.parametrize("text,needle", [c[1:] for c in BAD_CONFIG], ids=[c[0] for c in BAD_CONFIG])
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    cfg = config(tmp_path, text)
    one_line_error(tpt("run", cfg, "--run-dir", tmp_path / "run"), str(cfg), needle)
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_bad_set(tmp_path):
    one_line_error(tpt("run", tmp_path / "nope.yaml"), "nope.yaml: config file not found")
    proc = tpt("run", SMOKE, "--run-dir", tmp_path / "run", "--set", "train.lr")
    one_line_error(proc, "--set 'train.lr': expected key=value")


def test_mesh_that_does_not_match_the_devices(tmp_path):
    proc = tpt("run", config(tmp_path, "model:\n  mesh: [1, 3, 1]\n"), "--run-dir", tmp_path / "r")
    one_line_error(proc, "model.mesh: [1, 3, 1] needs 3 devices, but 1 is available")
    assert not (tmp_path / "r").exists()


def test_budget_larger_than_the_data(tmp_path):
    """smoke: 12 THINK problems, at most 2 examples each (max_per_problem 2, think.n 2)."""
    proc = tpt("run", config(tmp_path, "prune:\n  train_budget: 25\n"), "--run-dir", tmp_path / "r")
    one_line_error(proc, "prune.train_budget: 25 is more than the 24 training examples", "12 THINK")
    assert not (tmp_path / "r" / "base_model").exists()  # before any model work


def test_budget_that_leaves_no_validation_set(tmp_path):
    """24 possible examples and a budget of 24: validation would be empty. Refused before any
    model work, unless prune.on_empty_val is warn (or nothing needs a validation set)."""
    cfg = config(tmp_path, "prune:\n  train_budget: 24\n")
    proc = tpt("run", cfg, "--run-dir", tmp_path / "r")
    one_line_error(
        proc, "prune.train_budget 24 takes all (12 THINK problems", "no problem is left for "
        "validation (train.select best_val)", "prune.on_empty_val: warn",
    )  # fmt: skip
    assert not (tmp_path / "r" / "base_model").exists()
    for fine in ("prune.on_empty_val=warn", "train.select=last", "prune.val_budget=0"):
        run_config = load_config(cfg, [fine, IN_PROCESS])
        Run(run_config, tmp_path / fine).preflight(model=False)  # no error


@pytest.mark.parametrize("policy", ["fail", "warn"])
def test_prune_that_finds_too_few_candidates_for_validation(tmp_path, policy):
    """The 6k-ablation case: the budget is reachable on paper, but PRUNE finds fewer candidates
    than it, so all go to training. fail: one-line error, THINK's traces kept; warn: recorded."""
    (tmp_path / policy).mkdir()
    cfg = load_config(
        gsm8k(tmp_path / policy, extra=f"prune:\n  strategy: correct\n  on_empty_val: {policy}\n"),
        [IN_PROCESS],
    )
    run = Run(cfg, tmp_path / policy / "run")
    think = run.round_dir(1) / "think"
    think.mkdir(parents=True)
    traces = [  # two of the 12 problems solved: 2 candidates for a budget of 16
        {"problem_id": f"gsm8k/train/{i}", "sample": 0, "text": f"#### {i + 2}", "n_tokens": 3}
        for i in (0, 1)
    ]
    (think / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    prune_dir = run.round_dir(1) / "prune"
    prune_dir.mkdir()
    if policy == "fail":
        with pytest.raises(
            TptError,
            match="round 1: the 2 candidates PRUNE found all fit "
            "prune.train_budget 16, so no problem is left for validation",
        ):
            run._prune(1, prune_dir)
        assert (think / "traces.jsonl").exists() and not (prune_dir / "selected.jsonl").exists()
    else:
        stats = run._prune(1, prune_dir)
        assert stats["val_empty"] is True and stats["kept_train"] == 2 and stats["kept_val"] == 0


def test_max_len_shorter_than_a_prompt(tmp_path):
    proc = tpt("run", config(tmp_path, "train:\n  max_len: 40\n"), "--run-dir", tmp_path / "r")
    line = one_line_error(proc, "train.max_len: 40 is not longer than the prompt of THINK problem")
    assert "tokens)" in line and not (tmp_path / "r" / "round_0").exists()  # before any sampling


# --- models ---------------------------------------------------------------------------------


def test_missing_model_path(tmp_path):
    cfg = config(tmp_path, f"model:\n  path: {tmp_path / 'no-model'}\n")
    proc = tpt("run", cfg, "--run-dir", tmp_path / "run")
    one_line_error(proc, f"model.path: {tmp_path / 'no-model'}: no such file or directory")


def test_bad_model_directories(tmp_path):
    """A truncated safetensors file, then a config.json of an architecture we don't implement."""
    import numpy as np

    from tpt_jax.models.config import preset
    from tpt_jax.safetensors_io import write_safetensors

    model = tmp_path / "model"
    model.mkdir()
    hf_config = preset("smollm2-tiny").to_hf_config()
    (model / "config.json").write_text(json.dumps(hf_config))
    write_safetensors(model / "model.safetensors", {"lm_head.weight": np.ones((64, 64), "f4")})
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    cfg = config(tmp_path, f"model:\n  path: {model}\n")
    proc = tpt("run", cfg, "--run-dir", tmp_path / "run")
    one_line_error(proc, f"model.path: {model / 'model.safetensors'}: truncated")

    (model / "config.json").write_text(json.dumps({**hf_config, "model_type": "mixtral"}))
    proc = tpt("run", cfg, "--run-dir", tmp_path / "run")
    one_line_error(
        proc, f"model.path: {model / 'config.json'}: model_type 'mixtral' is not supported"
    )


def test_chat_prompt_needs_a_chat_template(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok_dir = tmp_path / "tokenizer"
    tok_dir.mkdir()
    vocab = {"[UNK]": 0, "[EOS]": 1, "apples": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "[EOS]"}))
    cfg = config(tmp_path, f"model:\n  tokenizer: {tok_dir}\n")
    proc = tpt("run", cfg, "--run-dir", tmp_path / "run")
    one_line_error(proc, f"model.tokenizer {tok_dir} has none", "use task.prompt: plain")


# --- long prompts, skipped lines, provenance, carry -----------------------------------------

LONG = " ".join(["The farmer counts his apples again."] * 40) + " How many apples?"


def test_long_prompt_fail_names_the_problem(tmp_path):
    train = [*GOOD_TRAIN[:5], row(5, LONG), *GOOD_TRAIN[6:]]
    extra = "think:\n  max_prompt_tokens: 200\n"
    cfg = gsm8k(tmp_path, train, task="  on_long_prompt: fail\n", extra=extra)
    proc = tpt("run", cfg, "--run-dir", tmp_path / "run")
    one_line_error(proc, "problem gsm8k/train/5: its prompt has ", "over the limit of 200")
    assert not (tmp_path / "run" / "round_0").exists()  # before any sampling


def test_skipped_lines_long_prompts_and_carry(tmp_path):
    """One gsm8k run: 2 bad train lines and 1 bad test line skipped, 2 THINK prompts over
    think.max_prompt_tokens skipped; pruning correct traces of a random model keeps nothing,
    so round 1 carries round 0's model and its eval equals round 0's."""
    import hashlib

    train = [*GOOD_TRAIN[:3], b"{oops", row(3, LONG), *GOOD_TRAIN[4:10], row(10, LONG)]
    train += [b'{"question": "q", "answer": "#### x"}', GOOD_TRAIN[11]]
    test = [*GOOD_TEST[:3], b'{"answer": "#### 3"}', *GOOD_TEST[3:]]
    extra = (
        "rounds: 1\non_empty_round: carry\nthink:\n  max_prompt_tokens: 200\n"
        "prune:\n  strategy: correct\n"
    )
    cfg = gsm8k(tmp_path, train, test, task="  on_bad_line: skip\n", extra=extra)
    run = tmp_path / "run"
    proc = tpt("run", cfg, "--run-dir", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = tmp_path / "data"
    first_bad = f"first: {data / 'train.jsonl'}:4: not valid JSON"
    assert f"skipped 2 bad lines of the train split (task.on_bad_line: skip); {first_bad}" in (
        proc.stderr
    )
    assert "skipped 1 bad line of the test split" in proc.stderr
    assert "skipped 2 of 12 THINK problems whose prompt does not fit" in proc.stderr
    assert "PRUNE kept no training examples (0 of 20 traces correct)" in proc.stderr
    assert "round 1: PRUNE kept no training examples, so this is round 0's model" in proc.stdout

    for r in (0, 1):
        manifest = json.loads((run / f"round_{r}" / "manifest.json").read_text())
        d = manifest["data"]
        assert (d["train_skipped"], d["test_skipped"]) == (2, 1)
        assert (d["train_problems"], d["test_problems"]) == (12, 6)
        for split in ("train", "test"):
            path = data / f"{split}.jsonl"
            source = d[f"{split}_source"]
            assert source["path"] == str(path) and source["bytes"] == path.stat().st_size
            assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["think"]["skipped_too_long"] == 2 and manifest["think"]["problems"] == 10
    assert manifest["train"]["carried"] is True
    assert manifest["model"] == json.loads((run / "round_0" / "manifest.json").read_text())["model"]
    for name in ("summary.json", "samples.jsonl", "greedy.jsonl"):
        assert (run / "round_1/eval" / name).read_text() == (
            run / "round_0/eval" / name
        ).read_text()
    rows = json.loads(tpt("report", run, "--json").stdout)["rounds"]
    assert [r["carried_from"] for r in rows] == [None, 0]
    assert "round 0's model carried forward" in tpt("report", run).stdout


def test_empty_round_stops_cleanly(tmp_path):
    """Pruning for correct traces of a random model keeps nothing: the run ends with exit code
    0, the table of what finished, and the reason; running it again changes nothing."""
    cfg = config(tmp_path, "prune:\n  strategy: correct\n")
    run = tmp_path / "run"
    proc = tpt("run", cfg, "--run-dir", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run stopped: round 1: PRUNE kept no training examples (0 of 24")
    assert "finished rounds: 0;" in last and "on_empty_round: carry" in last
    assert "stopping the run (on_empty_round: stop)" in proc.stderr
    assert (run / "round_0" / "manifest.json").exists()
    assert (
        not (run / "round_1" / "manifest.json").exists()
        and not (run / "round_1" / "train").exists()
    )
    assert not (run / "round_2").exists()
    again = tpt("run", cfg, "--run-dir", run)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == last
    assert not (run / "round_1" / "train").exists()


# --- locking, determinism, provenance -------------------------------------------------------

SHORT = ("--set", "rounds=1")  # round 0 and one full round: every stage, half the time
# On 2 devices: TRAIN shards over fsdp, THINK and EVAL sample over tensor; the trained model
# goes from one layout to the other on device; the last round is exported as a HF directory.
TWO = (*SHORT, "--set", "engine.mesh=[1,1,2]", "--set", "export=final")
TIME_FIELDS = {
    "wall_seconds",
    "time",
    "seconds",
    "tokens_per_s",
    "samples_per_s",
    "examples_per_s",
    "eta_s",
    "step_s",
    "compile_s",
    "template_time",  # the run's start, to the second: two runs side by side may straddle one
}


def untimed(value):
    """`value` without wall-clock fields (at any depth)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIME_FIELDS}
    return value


def outputs(run: Path, metrics: bool = True) -> dict:
    """Everything a run decides: traces, selected data, stats, samples, summaries, manifests
    and metrics, without wall times and the run directory's own path."""
    out = {}
    for pattern in ("round_*/*/*.jsonl", "round_*/*/*.json", "round_*/manifest.json"):
        for path in sorted(run.glob(pattern)):
            text = path.read_text().replace(str(run), "RUN")
            out[str(path.relative_to(run))] = (
                text if path.suffix == ".jsonl" else untimed(json.loads(text))
            )
    if metrics:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        out["metrics"] = [untimed(json.loads(x)) for x in lines]
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Two runs of the same config side by side, on 2 CPU devices each: the first in one
    process; the second in 2 processes of one device (launch/local.sh, jax.distributed with
    gloo collectives), as a pod slice runs it, and killed on the way: process 1 dies by SIGKILL
    in round 1's TRAIN (logging step 3, after the train state both processes saved at step 2),
    the launcher stops process 0, and the same command launched again finishes the run. The
    third item says what the kill left."""
    runs = [tmp_path_factory.mktemp(name) / "run" for name in ("first", "second")]
    run = [sys.executable, "-m", "tpt_jax.cli", "run", str(SMOKE), *TWO]
    two_devices = {**env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    first = subprocess.Popen(
        [*run, "--run-dir", str(runs[0])], env=two_devices, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = ["bash", str(ROOT / "launch" / "local.sh"), "2", "--", *run, "--run-dir", str(runs[1])]
    kill = {**env(), "TPT_KILL_AT": "train.step:5", "TPT_KILL_PROCESS": "1"}  # step 3 logged
    killed = subprocess.run(second, env=kill, cwd=ROOT, capture_output=True, text=True)
    train = runs[1] / "round_1" / "train"
    left = {"killed": killed, "state": read_train_state_meta(train / "state") is not None,
            "done": (train / "DONE.json").exists()}  # fmt: skip
    resumed = subprocess.run(second, env=env(), cwd=ROOT, capture_output=True, text=True)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return runs[0], runs[1], left


def latest(records: list[dict]) -> list[dict]:
    """Metrics records without those a later record of the same tag, step and fields replaced
    (a killed attempt logged them before the resumed one logged them again)."""
    last = {(r["tag"], r["step"], tuple(sorted(r))): i for i, r in enumerate(records)}
    return [records[i] for i in sorted(last.values())]


@pytest.fixture(scope="module")
def first(pair) -> Path:
    return pair[0]


def test_same_config_same_run(pair):
    """Every decision, number and file of the two runs agrees: a run is reproducible, one
    split over processes is the same run (only process 0 wrote the second one's files), and a
    host lost mid-TRAIN then relaunched changes nothing."""
    a, b = outputs(pair[0]), outputs(pair[1])
    for name in ("round_1/think/traces.jsonl", "round_1/prune/selected.jsonl"):
        assert a[name] and a[name] == b[name], name
    assert a["round_1/eval/summary.json"] == b["round_1/eval/summary.json"]
    assert len(a["metrics"]) > 10 and latest(a["metrics"]) == a["metrics"]
    assert latest(b.pop("metrics")) == a.pop("metrics")
    assert a == b
    assert files(pair[0]) == files(pair[1])  # no file from process 1, no leftover
    exported = [run / "export" / "model.safetensors" for run in pair[:2]]
    assert exported[0].read_bytes() == exported[1].read_bytes()  # gathered from 2 processes


def test_kill_9_of_one_process_stops_the_others_and_keeps_the_saved_step(pair):
    """What the kill in `pair` left before the relaunch: launch/local.sh exited with the
    killed process's status after stopping process 0; TRAIN's state saved at step 2 was
    committed, TRAIN itself not done (the relaunch resumed from there: see above)."""
    killed = pair[2]["killed"]
    assert killed.returncode == 128 + signal.SIGKILL, killed.stderr[-3000:]
    assert "process 1 exited with 137" in killed.stderr
    assert pair[2]["state"] and not pair[2]["done"]


def test_eval_of_a_model_loaded_from_disk_equals_the_one_resharded_on_device(pair, tmp_path):
    """The run hands round 1's trained model to EVAL on device (fsdp to tensor); a new process
    that redoes that EVAL loads it from the round's checkpoint instead: the same samples."""
    run = tmp_path / "run"
    shutil.copytree(pair[0], run)
    shutil.rmtree(run / "round_1" / "eval")
    (run / "round_1" / "manifest.json").unlink()
    two_devices = {**env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    argv = [sys.executable, "-m", "tpt_jax.cli", "run", str(SMOKE), "--run-dir", str(run), *TWO]
    proc = subprocess.run(argv, env=two_devices, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[round 1] eval" in proc.stderr and "[round 1] train" not in proc.stderr
    again, first = outputs(run, metrics=False), outputs(pair[0], metrics=False)
    for name in ("samples.jsonl", "greedy.jsonl", "summary.json"):
        assert again[f"round_1/eval/{name}"] == first[f"round_1/eval/{name}"], name


def files(run: Path) -> list[str]:
    """The run directory's files, outside TensorBoard's (host-named) event files and Orbax's
    trees (whose internals name the processes that wrote them)."""
    names = (str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    return sorted(n for n in names if not {"tb", "params", "arrays"} & set(Path(n).parts))


def test_manifest_provenance(first):
    import hashlib

    from tpt_jax.config import config_hash, load_config
    from tpt_jax.tasks.arithmetic import generate_problems

    config = load_config(SMOKE, TWO[1::2])
    for r, stages in ((0, {"eval"}), (1, {"think", "prune", "train", "eval"})):
        m = json.loads((first / f"round_{r}" / "manifest.json").read_text())
        assert m["round"] == r and m["seed"] == 0 and m["config_hash"] == config_hash(config)
        assert {"python", "jax", "jaxlib", "flax", "numpy"} <= set(m["versions"])
        assert m["devices"] == {"kind": "cpu", "count": 2}
        assert set(m["wall_seconds"]) == stages and all(t >= 0 for t in m["wall_seconds"].values())
        d = m["data"]
        assert d["task"] == "arithmetic" and (d["train_skipped"], d["test_skipped"]) == (0, 0)
        assert (d["train_problems"], d["test_problems"]) == (12, 6)
        assert d["train_source"] == {
            "generator": "arithmetic",
            "levels": [1, 2],
            "max_value": 999,
            "seed": 0,
        }
        problems = generate_problems("train", 12, (1, 2), 0, max_value=999)
        rows = [(p.id, p.question, p.answer, p.solution) for p in problems]
        digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
        assert d["train_sha256"] == digest
        assert len(m["data_hash"]) == 16


def test_one_process_per_run_dir_and_kill_9_frees_it(tmp_path):
    """A second `tpt run` on a run directory in use is refused; after SIGKILL of the first, the
    directory is free again (the lock is the kernel's and dies with the process)."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "tpt_jax.cli", "run", str(SMOKE), "--run-dir", str(run), *SHORT]
    holder = subprocess.Popen(argv, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run / "round_0" / "eval").exists():  # past the lock and the model load
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = tpt("run", SMOKE, "--run-dir", run, *SHORT)
        assert holder.poll() is None, "the first run ended before the second one tried"
        one_line_error(second, f"{run}: another tpt process is using this run directory")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert not (run / "round_1" / "manifest.json").exists()
    proc = tpt("eval", SMOKE, "--run-dir", run, "--round", "0", *SHORT)  # resumes round 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "round_0" / "manifest.json").exists()
