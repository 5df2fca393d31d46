"""Tests for tpt_jax.tasks: GSM8K loaders (JSONL, Parquet, the real data, the hf: path offline),
bad input and the prompts (the generator's tests are in test_arithmetic.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tpt_jax.errors import TptError
from tpt_jax.grading import is_correct, reference_answer
from tpt_jax.tasks import (
    INSTRUCTION,
    Problem,
    ProblemList,
    chat_messages,
    load_gsm8k,
    plain_prompt,
    strip_calculator,
)

REAL_GSM8K = Path("/work/shared/data/gsm8k")

ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "A shop sells 90 chairs at $12 each. How much money does it make?",
        "answer": "It makes 90 * 12 = $<<90*12=1080>>1080.\n#### 1,080",
    },
    {
        "question": "The temperature is 4 degrees and drops by 7. What is it now?",
        "answer": "It is 4 - 7 = <<4-7=-3>>-3 degrees.\n#### -3",
    },
]


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    """JSONL with one row per line; raw_lines replaces (1-based) lines by raw bytes."""
    lines = [json.dumps(r).encode() for r in rows]
    for number, raw in (raw_lines or {}).items():
        lines[number - 1] = raw
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), path)
    return path


def check_loaded(problems: list[Problem], split: str = "train") -> None:
    assert [p.id for p in problems] == [f"gsm8k/{split}/{i}" for i in range(3)]
    assert [p.answer for p in problems] == ["72", "1,080", "-3"]
    assert problems[0].question == ROWS[0]["question"]
    assert problems[0].solution == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"
    )
    assert problems[1].solution.endswith("$1080.\n#### 1,080")
    for p in problems:
        assert p.level is None and "<<" not in p.solution and ">>" not in p.solution
        assert is_correct(p.solution, p.answer, "strict")


# ------------------------------------------------------------------------------------------
# Loaders


def test_jsonl_file_and_directory(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    by_file = load_gsm8k(str(tmp_path / "train.jsonl"), "train")
    by_dir = load_gsm8k(tmp_path, "train")
    check_loaded(by_file)
    assert by_dir == by_file and isinstance(by_dir, list) and by_dir.skipped == 0
    assert [p.id for p in load_gsm8k(tmp_path, "test")] == ["gsm8k/test/0"]


def test_parquet_file_and_directory(tmp_path):
    write_parquet(tmp_path / "train.parquet", ROWS)
    check_loaded(load_gsm8k(tmp_path / "train.parquet", "train"))
    check_loaded(load_gsm8k(tmp_path, "train"))


def test_ids_from_an_id_field(tmp_path):
    rows = [dict(r, id=f"q{i}") for i, r in enumerate(ROWS)]
    problems = load_gsm8k(write_jsonl(tmp_path / "a.jsonl", rows), "train")
    assert [p.id for p in problems] == ["gsm8k/train/q0", "gsm8k/train/q1", "gsm8k/train/q2"]


def test_blank_lines_are_not_rows_but_keep_line_numbers(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + "{oops\n")
    with pytest.raises(TptError, match=re.escape(f"{path}:3: not valid JSON")):
        load_gsm8k(path, "train")


@pytest.mark.skipif(not REAL_GSM8K.is_dir(), reason=f"real GSM8K data not at {REAL_GSM8K}")
@pytest.mark.parametrize("split,count", [("train", 7473), ("test", 1319)])
def test_real_gsm8k(split, count):
    problems = load_gsm8k(REAL_GSM8K, split)
    raw = [json.loads(line) for line in (REAL_GSM8K / f"{split}.jsonl").read_text().splitlines()]
    assert len(problems) == len(raw) == count and problems.skipped == 0
    assert len({p.id for p in problems}) == count
    for p, r in zip(problems, raw, strict=True):
        assert p.question == r["question"].strip()
        assert p.answer == reference_answer(r["answer"])
        assert "<<" not in p.solution and ">>" not in p.solution
        assert p.solution.rpartition("\n")[0] == strip_calculator(r["answer"]).rpartition("\n")[0]
        assert p.solution.endswith(f"\n#### {p.answer}")
        assert is_correct(p.solution, p.answer, "strict")
    commas = [p for p, r in zip(problems, raw, strict=True) if "," in r["answer"].split("####")[-1]]
    assert commas and all("," in p.answer for p in commas)  # "1,080" stays "1,080"


def test_hf_source_offline(tmp_path, monkeypatch):
    """`hf:NAME` goes through datasets.load_dataset(NAME, "main", split=...): here NAME is a
    local dataset directory laid out as on the hub (a README.md config header + Parquet)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "gsm8k"
    (repo / "main").mkdir(parents=True)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n"
        "  - split: train\n    path: main/train-00000-of-00001.parquet\n"
        "  - split: test\n    path: main/test-00000-of-00001.parquet\n---\n# GSM8K (test copy)\n"
    )
    write_parquet(repo / "main" / "train-00000-of-00001.parquet", ROWS)
    write_parquet(repo / "main" / "test-00000-of-00001.parquet", ROWS[1:])
    check_loaded(load_gsm8k(f"hf:{repo}", "train"))
    test = load_gsm8k(f"hf:{repo}", "test")
    assert [(p.id, p.answer) for p in test] == [("gsm8k/test/0", "1,080"), ("gsm8k/test/1", "-3")]
    with pytest.raises(TptError) as e:
        load_gsm8k(f"hf:{repo}", "validation")
    assert str(e.value).startswith(f"hf:{repo}: cannot load split 'validation'")
    assert "\n" not in str(e.value)


def test_hf_source_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(TptError, match=r"hf:openai/gsm8k: .*needs the 'datasets' package"):
        load_gsm8k("hf", "train")


GOOD = json.dumps(ROWS[0]).encode()

# (name, raw JSONL lines, bad line number, message part)
BAD_JSONL = [
    ("malformed JSON", [GOOD, b'{"question": "x", "answer": '], 2, "not valid JSON"),
    ("not an object", [GOOD, GOOD, b'["q", "a"]'], 3, "expected a JSON object"),
    (
        "missing question",
        [json.dumps({"answer": "#### 3"}).encode()],
        1,
        "missing field 'question'",
    ),
    ("missing answer", [GOOD, json.dumps({"question": "q"}).encode()], 2, "missing field 'answer'"),
    ("null answer", [json.dumps({"question": "q", "answer": None}).encode()], 1, "'answer'"),
    ("empty question", [json.dumps({"question": " ", "answer": "#### 3"}).encode()], 1, "empty"),
    ("number question", [json.dumps({"question": 7, "answer": "#### 3"}).encode()], 1, "string"),
    ("no ####", [GOOD, json.dumps({"question": "q", "answer": "it is 3"}).encode()], 2, "####"),
    ("empty answer", [json.dumps({"question": "q", "answer": "so\n#### "}).encode()], 1, "####"),
    ("word answer", [json.dumps({"question": "q", "answer": "#### three"}).encode()], 1, "number"),
    ("two numbers", [json.dumps({"question": "q", "answer": "#### 3 4"}).encode()], 1, "number"),
    ("non-UTF-8", [GOOD, GOOD, b'{"question": "caf\xe9", "answer": "#### 1"}'], 3, "UTF-8"),
    (
        "duplicate id",
        [json.dumps(dict(ROWS[0], id=1)).encode(), json.dumps(dict(ROWS[1], id=1)).encode()],
        2,
        "duplicate id 'gsm8k/train/1'",
    ),
]


@pytest.mark.parametrize(
    "lines,number,part", [c[1:] for c in BAD_JSONL], ids=[c[0] for c in BAD_JSONL]
)
def test_bad_jsonl_names_file_and_line(tmp_path, lines, number, part):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(TptError) as e:
        load_gsm8k(path, "train")
    msg = str(e.value)
    assert msg.startswith(f"{path}:{number}: ") and part in msg and "\n" not in msg
    # Skip mode drops exactly that line and keeps the others.
    kept = load_gsm8k(path, "train", on_bad_line="skip") if len(lines) > 1 else None
    if kept is not None:
        assert kept.skipped == 1 and kept.skip_reasons[0].startswith(f"{path}:{number}: ")
        assert len(kept) == len(lines) - 1


def test_duplicate_questions_are_fine(tmp_path):
    problems = load_gsm8k(write_jsonl(tmp_path / "train.jsonl", [ROWS[0], ROWS[0]]), "train")
    assert [p.id for p in problems] == ["gsm8k/train/0", "gsm8k/train/1"]


def test_bad_parquet_names_file_and_row(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", [ROWS[0], {"question": "q", "answer": None}])
    with pytest.raises(TptError, match=re.escape(f"{path}: row 1: missing field 'answer'")):
        load_gsm8k(path, "train")
    rows = [ROWS[0], ROWS[1], {"question": "q", "answer": "#### x"}]
    path = write_parquet(tmp_path / "a.parquet", rows)
    with pytest.raises(TptError, match=re.escape(f"{path}: row 2: reference answer 'x'")):
        load_gsm8k(path, "train")
    path = write_parquet(tmp_path / "b.parquet", [{"question": "q", "solution": "#### 1"}])
    with pytest.raises(TptError, match=re.escape(f"{path}: missing column 'answer'")):
        load_gsm8k(path, "train")
    junk = tmp_path / "c.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(TptError, match=re.escape(f"{junk}: not a readable Parquet file")):
        load_gsm8k(junk, "train")


def test_non_utf8_in_a_parquet_binary_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "train.parquet"
    table = pa.table(
        {
            "question": pa.array([b"fine", b"caf\xe9"], pa.binary()),
            "answer": pa.array([b"#### 1", b"#### 2"], pa.binary()),
        }
    )
    pq.write_table(table, path)
    with pytest.raises(TptError, match=re.escape(f"{path}: row 1: field 'question'") + ".*UTF-8"):
        load_gsm8k(path, "train")
    assert [p.answer for p in load_gsm8k(path, "train", on_bad_line="skip")] == ["1"]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(TptError) as e:
        load_gsm8k(tmp_path / "nope.jsonl", "train")
    assert str(e.value).startswith(f"{tmp_path / 'nope.jsonl'}: no such file or directory")
    assert "train.jsonl or train.parquet" in str(e.value)
    with pytest.raises(TptError, match=re.escape(f"{tmp_path}: no test.jsonl or test.parquet")):
        load_gsm8k(tmp_path, "test")
    (tmp_path / "train.jsonl").write_text("\n\n")
    with pytest.raises(TptError, match=re.escape(f"{tmp_path / 'train.jsonl'}") + ".*no problems"):
        load_gsm8k(tmp_path, "train")
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(TptError, match="unknown file type"):
        load_gsm8k(tmp_path / "data.csv", "train")
    with pytest.raises(TptError, match="on_bad_line"):
        load_gsm8k(tmp_path, "train", on_bad_line="ignore")


def test_skip_mode_counts_and_keeps_stable_ids(tmp_path):
    bad = {2: b"{broken", 4: json.dumps({"question": "q"}).encode(), 6: b"\xff\xfe"}
    rows = [ROWS[0], {}, ROWS[1], {}, ROWS[2], {}]
    path = write_jsonl(tmp_path / "train.jsonl", rows, raw_lines=bad)
    with pytest.raises(TptError, match=re.escape(f"{path}:2: not valid JSON")):
        load_gsm8k(path, "train")
    kept = load_gsm8k(path, "train", on_bad_line="skip")
    assert isinstance(kept, ProblemList) and isinstance(kept, list)
    assert kept.skipped == 3 and len(kept) == 3
    assert [r.split(": ")[0] for r in kept.skip_reasons] == [f"{path}:{i}" for i in (2, 4, 6)]
    assert [p.id for p in kept] == ["gsm8k/train/0", "gsm8k/train/2", "gsm8k/train/4"]
    assert [p.answer for p in kept] == ["72", "1,080", "-3"]
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [{}], raw_lines={1: b"{"})
    with pytest.raises(TptError, match=r"has no problems \(1 bad rows skipped\)"):
        load_gsm8k(only_bad, "train", on_bad_line="skip")


# ------------------------------------------------------------------------------------------
# Prompts


def test_instruction_and_chat_messages():
    for part in ("expert mathematician", "step by step", "calculation", "#### <number>"):
        assert part in INSTRUCTION
    q = "Tom has 3 bags of 12 apples. How many apples does he have?"
    messages = chat_messages(q)
    assert messages == [{"role": "user", "content": messages[0]["content"]}]
    assert messages[0]["content"].startswith(INSTRUCTION) and messages[0]["content"].endswith(q)


def test_plain_prompt_with_and_without_shots(tmp_path):
    shots = load_gsm8k(write_jsonl(tmp_path / "train.jsonl", ROWS), "train")[:2]
    raw_shot = Problem("x/0", ROWS[0]["question"], "72", ROWS[0]["answer"])  # annotations kept
    q = "Ann has 5 pens and buys 3 more. How many pens does she have?"
    zero = plain_prompt(q)
    assert zero.startswith(INSTRUCTION) and zero.endswith(f"Question: {q}\nAnswer:")
    assert zero.count("Question:") == 1
    few = plain_prompt(q, [raw_shot, shots[1]])
    assert f"Question: {ROWS[0]['question']}\nAnswer: {shots[0].solution}\n\n" in few
    assert f"Question: {ROWS[1]['question']}\nAnswer: {shots[1].solution}\n\n" in few
    assert "<<" not in few and few.count("####") == 3 and few.endswith(f"Question: {q}\nAnswer:")


def test_strip_calculator():
    assert strip_calculator("48/2 = <<48/2=24>>24 and $<<90*12=1080>>1080") == "48/2 = 24 and $1080"
    assert strip_calculator("no annotations") == "no annotations"


TFDS_BUILDER = """
import tensorflow_datasets as tfds


class TinyGsm8k(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"question": text, "answer": text})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(ROWS), "test": self._generate_examples(ROWS[1:])}

    def _generate_examples(self, rows):
        for i, row in enumerate(rows):
            yield i, row
"""


def test_tfds_source_offline(tmp_path, monkeypatch):
    """`tfds:NAME` reads a prepared TensorFlow Datasets split with `tfds.data_source`
    (ArrayRecord, no TensorFlow): here a tiny GSM8K-layout dataset built locally."""
    import importlib

    package = tmp_path / "pkgs" / "tiny_gsm8k"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"ROWS = {ROWS!r}\n" + TFDS_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    builder = importlib.import_module("tiny_gsm8k").TinyGsm8k
    builder(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    check_loaded(load_gsm8k("tfds:tiny_gsm8k", "train"))
    test = load_gsm8k("tfds:tiny_gsm8k", "test")
    # Ids are positions in the prepared split (TFDS orders records by its own key hash).
    assert sorted(p.answer for p in test) == ["-3", "1,080"]
    assert [p.id for p in test] == ["gsm8k/test/0", "gsm8k/test/1"]
    assert test.source == {"tfds": "tiny_gsm8k", "config": None, "split": "test", "rows": 2}
    with pytest.raises(TptError, match=r"^tfds:nope: cannot read split 'train'"):
        load_gsm8k("tfds:nope", "train")
