"""Run configs: strict loading, overrides, and one-line errors naming the key."""

from pathlib import Path

import pytest

from tpt_jax.config import RunConfig, config_hash, load_config, to_dict
from tpt_jax.errors import TptError

CONFIGS = Path(__file__).parents[1] / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_recipe():
    cfg = load_config(None, ["task.train_size=10"])
    assert (cfg.think.n, cfg.think.temperature, cfg.think.max_new_tokens) == (8, 0.8, 1500)
    p = cfg.prune
    assert (p.train_budget, p.val_budget, p.grading) == (2000, 200, "strict")
    t = cfg.train
    assert (t.lr, t.warmup_ratio, t.weight_decay, t.clip, t.global_batch) == (1e-6, 0.1, 0, 1, 8)
    assert (t.b1, t.b2, t.eps, t.max_len, t.eval_every, t.init) == (
        0.9, 0.999, 1e-8, 1600, 50, "previous"
    )  # fmt: skip
    assert (cfg.eval.n, cfg.eval.temperature) == (20, 0.7)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "rounds: 3\ntask: {train_size: 40, levels: [2, 3]}\ntrain: {lr: 1e-5}\n")
    cfg = load_config(path, ["think.n=4", "model.mesh=[1,8,1]", "train.pack=false"])
    assert cfg.rounds == 3 and cfg.task.levels == (2, 3)
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads 1e-5 as str
    assert cfg.think.n == 4 and cfg.model.mesh == (1, 8, 1) and cfg.train.pack is False
    assert to_dict(cfg)["task"]["levels"] == [2, 3]
    assert config_hash(cfg) != config_hash(load_config(path))


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("trian: {lr: 1}\n", [], "unknown key trian; did you mean train?"),
        ("train: {lrr: 1}\n", [], "unknown key train.lrr; did you mean train.lr?"),
        ("train: {lr: fast}\n", [], "train.lr must be float, got 'fast'"),
        ("think: {n: 2.5}\n", [], "think.n must be int, got 2.5"),
        ("train: {lr: -1.0}\n", [], "train.lr must be >= 0.0, got -1.0"),
        ("think: {n: 0}\n", [], "think.n must be >= 1, got 0"),
        ("train: 3\n", [], "train must be a mapping"),
        ("prune: {strategy: best}\n", [], "prune.strategy must be one of correct, none"),
        ("model: {mesh: [1, 2]}\n", [], "model.mesh must be three positive sizes"),
        ("model: {dcn_mesh: [2, 1, 1]}\n", [], "model.dcn_mesh needs model.mesh"),
        ("engine: {mesh: [2, 2, 2], dcn_mesh: [1, 1, 4]}\n", [], "must divide engine.mesh"),
        ("rounds: 1\n", ["train.lr"], "expected key=value"),
        ("a: [1\n", [], "not valid YAML"),
        ("- 1\n", [], "a config must be a mapping"),
        ("train: {lr: .nan}\n", [], "train.lr must be a finite number, got nan"),
        ("think: {temperature: .inf}\n", [], "think.temperature must be a finite number"),
        ("eval: {top_p: -.inf}\n", [], "eval.top_p must be a finite number"),
        ("engine: {memory_gb: .nan}\n", [], "engine.memory_gb must be a finite number"),
        ("eval: {n: 4, k: [1, 50]}\n", [], "eval.k [50] above eval.n 4"),
        ("train: {select: best}\n", [], "best_val, best_val_or_start, last"),
        ("prune: {on_empty_val: ignore}\n", [], "prune.on_empty_val must be one of fail, warn"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, overrides, message):
    path = write(tmp_path, "task: {train_size: 5}\n" + text if text[0] != "-" else text)
    with pytest.raises(TptError) as info:
        load_config(path, overrides)
    assert message in str(info.value)
    where = "--set" if overrides else str(path)
    assert where in str(info.value) and "\n" not in str(info.value)


def test_default_pass_at_k_follows_eval_n(tmp_path):
    assert load_config(write(tmp_path, "task: {train_size: 5}\n")).eval.ks == (1, 5, 10, 20)
    cfg = load_config(write(tmp_path, "task: {train_size: 5}\neval: {n: 6}\n"))
    assert cfg.eval.k is None and cfg.eval.ks == (1, 5)


def test_missing_file_and_arithmetic_needs_a_size(tmp_path):
    with pytest.raises(TptError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(TptError, match="task.train_size is required"):
        load_config(None)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), RunConfig)


def test_paper_configs_and_ablations_differ_only_where_they_say():
    base = load_config(CONFIGS / "gemma2_2b_gsm8k.yaml")
    assert (base.rounds, base.task.name, base.think.n, base.train.lr) == (4, "gsm8k", 8, 1e-6)
    changed = {  # name: (section, the keys it changes)
        "gemma2_2b_data_1k": ("prune", {"train_budget": 1000}),
        "gemma2_2b_data_6k": ("prune", {"train_budget": 6000, "on_empty_val": "warn"}),
        "gemma2_2b_no_pruning": ("prune", {"strategy": "none"}),
        "gemma2_2b_restart_from_base": ("train", {"init": "base"}),
        "gemma2_2b_cross_model_9b": ("think", {"traces_from": "runs/gemma2_9b_gsm8k"}),
    }
    for name, (section, keys) in changed.items():
        cfg = load_config(CONFIGS / "ablations" / f"{name}.yaml")
        a, b = to_dict(cfg), to_dict(base)
        for key, value in keys.items():
            assert getattr(getattr(cfg, section), key) == value
            a[section].pop(key), b[section].pop(key)
        assert a == b, name


def test_base_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("rounds: 3\ntask: {train_size: 9, levels: [1]}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntask: {levels: [2]}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.rounds, cfg.task.train_size, cfg.task.levels) == (3, 9, (2,))
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(TptError, match="loops back"):
        load_config(tmp_path / "b.yaml")
