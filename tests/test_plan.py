"""`tpt plan`: estimates against XLA's own byte counts, the CLI's table and JSON, known answers
for the shipped configs, and `tpt run` refusing what cannot fit before loading any weights."""

import collections
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from xla_memory import SMALL, peak, sds, train_step_bytes

from tpt_jax import memory, plan
from tpt_jax.cli import main
from tpt_jax.config import EngineConfig, RunConfig, ThinkConfig, TrainConfig, load_config
from tpt_jax.engine import Engine, EngineOptions, SamplingParams
from tpt_jax.engine import slots as device
from tpt_jax.errors import TptError
from tpt_jax.models.config import PRESETS
from tpt_jax.models.transformer import SlotKV, abstract_model, init_model
from tpt_jax.sharding import make_mesh

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
MiB = 2**20


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tpt: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- (a) estimates against XLA's buffer assignment on CPU ----------------------------------------


def test_param_layout_is_the_models():
    """memory.py lists every parameter's shape and logical axes without importing the model
    (it sits below it); this keeps the two in step: tied and untied, Gemma 2's post-norms,
    Gemma 3's QK-norm."""
    for name in ("smollm2-tiny", "llama3.2-1b", "llama3.1-8b", "gemma2-2b", "gemma3-270m"):
        cfg = PRESETS[name]
        state = nnx.state(abstract_model(cfg), nnx.Param)
        variables = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        got = collections.Counter(
            (tuple(v.shape), tuple(v.get_metadata()["logical_axes"])) for v in variables
        )
        want = collections.Counter()
        for copies, shape, axes in memory.param_layout(cfg):
            want[(shape, axes)] += copies
        assert got == want, name


def test_sampling_estimate_against_xla():
    """THINK on one CPU device: the plan's weights + KV + engine workspace against the exact
    weights and cache plus what XLA's buffer assignment gives the engine's compiled functions:
    prefill outputs (they wait for free slots while decoding goes on) and the largest of the
    decode, prefill and insert temporaries.

    Tolerance +-30%. The plan comes out about 20% above XLA, on purpose: the engine sizes
    prefill work at the full cache width (prompts are rarely that long), counts 4 float32
    [slots, V] logits arrays where XLA keeps 3, and adds the extra layer of a cache resize on
    top of the decode temporaries (they never coexist)."""
    slots, prompt, new, prefill_tokens = 32, 128, 256, 2048
    run = RunConfig(
        engine=EngineConfig(slots=slots, prefill_tokens=prefill_tokens, dtype="float32"),
        think=ThinkConfig(max_prompt_tokens=prompt, max_new_tokens=new),
    )
    stage = plan.sampling_stage("think", SMALL, run, plan.devices_of("cpu", 1), 1000, new)
    length = stage.details["cache_length"]
    assert (stage.details["slots"], length) == (slots, 384)

    graphdef, params = nnx.split(abstract_model(SMALL, jnp.float32))
    layer = sds(SlotKV.shape(SMALL, slots, length), jnp.float32)
    cache = SlotKV((layer,) * SMALL.num_layers, (layer,) * SMALL.num_layers)
    state = jax.eval_shape(lambda: device.SlotState.empty(slots))
    st = device.Static.of(SamplingParams(), SMALL.eos_token_ids)
    f32, rows = sds((), jnp.float32), prefill_tokens // prompt
    decode = device.decode.lower(
        params, cache, state, f32, f32, sds((), jnp.int32), graphdef=graphdef, steps=16, st=st
    ).compile()
    prompts = (params, sds((rows, prompt), jnp.int32), sds((rows,), jnp.int32))
    prefill = device.prefill.lower(*prompts, graphdef=graphdef).compile()
    logits, ks, vs = jax.eval_shape(
        lambda *a: device.prefill(*a, graphdef=graphdef), *prompts
    )  # fmt: skip
    n = 8
    insert = device.insert.lower(
        cache, state, logits, ks, vs, sds((rows,), jnp.int32), sds((rows, n), jnp.int32),
        sds((rows, n, 2), jnp.uint32), sds((rows,), jnp.int32), f32, f32, st=st,
    ).compile()  # fmt: skip

    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    kv = 2 * SMALL.num_layers * layer.size * 4
    work = max(peak(decode.memory_analysis()), prefill.memory_analysis().temp_size_in_bytes)
    work = max(work, peak(insert.memory_analysis()))
    measured = weights + kv + prefill.memory_analysis().output_size_in_bytes + work
    assert stage.parts["weights"] == weights and stage.parts["kv_cache"] == kv
    ratio = stage.bytes_per_device / measured
    print(f"think: plan {stage.bytes_per_device / MiB:.1f} MiB, XLA {measured / MiB:.1f} MiB")
    assert 0.7 <= ratio <= 1.3, (stage.parts, measured)


@pytest.mark.parametrize(
    "mesh, compute, remat, scan",
    [
        ((1, 1, 1), "float32", "none", False),
        ((1, 8, 1), "bfloat16", "none", False),
        ((1, 2, 4), "float32", "none", False),
        ((1, 1, 1), "float32", "full", True),
        ((1, 1, 1), "float32", "none", True),
    ],
)
def test_train_estimate_against_xla(mesh, compute, remat, scan):
    """TRAIN per device against XLA's buffer assignment of train.py's compiled steps: the
    larger of a micro-step (its arguments, temporaries and non-aliased outputs, plus the Adam
    moments that stay alive beside it) and the apply-step.

    Tolerance +-25%. The coefficients in plan.py were fitted on 63 shapes (llama and gemma,
    tied and untied, float32 and bfloat16 compute and masters, 1 to 8 devices on every axis)
    and land within -12%/+14% of XLA; at full size, Gemma-2-2B's step at 8 x 1600 tokens is
    239.8 GiB planned against XLA's 239.5 GiB. What is left is XLA's scheduling: which
    activation and gradient buffers happen to share memory."""
    devices = jax.devices()[: math.prod(mesh)]
    cfg = TrainConfig(
        micro_batch=8, global_batch=8, max_len=256, compute_dtype=compute, remat=remat,
        scan_layers=scan,
    )  # fmt: skip
    measured = train_step_bytes(cfg, make_mesh(mesh, devices))
    stage = plan.train_stage(SMALL, RunConfig(train=cfg), plan.Devices("cpu", 8, 2**40, mesh))
    ratio = stage.bytes_per_device / measured
    print(f"train {mesh} {compute} remat {remat} scan {scan}: plan "
          f"{stage.bytes_per_device / MiB:.1f} MiB, XLA {measured / MiB:.1f} MiB")  # fmt: skip
    assert 0.75 <= ratio <= 1.25, (stage.parts, measured)


def test_multi_host_train_estimate_against_xla_across_processes():
    """2 processes x 2 CPU devices (launch/local.sh): XLA's bytes per device for TRAIN's steps
    on a mesh over both processes, against `tpt plan --hosts 2 --devices-per-host 2`'s
    estimate; the same +-25% as on one host (the program each process compiles is the same
    SPMD program over 4 devices)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "local.sh"), "2", "--devices", "2", "--",
         sys.executable, "tests/mp_plan.py", "1,4,1"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["processes"] == 2
    cfg = TrainConfig(micro_batch=8, global_batch=8, max_len=256)
    devices = plan.devices_of("cpu", 4, (1, 4, 1), hosts=2)
    stage = plan.train_stage(SMALL, RunConfig(train=cfg), devices)
    ratio = stage.bytes_per_device / out["bytes"]
    print(f"train 2 hosts x 2: plan {stage.bytes_per_device / MiB:.1f} MiB, "
          f"XLA {out['bytes'] / MiB:.1f} MiB")  # fmt: skip
    assert 0.75 <= ratio <= 1.25, (stage.parts, out["bytes"])


def test_engine_slots_match_the_engine():
    """memory.engine_slots is the engine's own rule (Engine.plan_slots), so plan and run agree;
    0 slots is the engine's one-line error."""
    cfg = PRESETS["smollm2-tiny"]
    model = init_model(cfg, 0, jnp.float32)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    for budget, rows, length in [(2**27, 100, 384), (2**27, 5, 256), (2**31, 999, 1024)]:
        engine = Engine(model, mesh, options=EngineOptions(memory_budget=budget))
        per_slot = memory.engine_bytes_per_slot(cfg, length, jnp.float32)
        fixed = memory.engine_fixed_bytes(cfg, 8192, length, jnp.float32)
        want = memory.engine_slots(budget, fixed, per_slot, rows, 64)
        assert engine.plan_slots(rows, length) == want > 0
    engine = Engine(model, mesh, options=EngineOptions(memory_budget=2**26))
    assert memory.engine_slots(2**26, fixed, per_slot, 10, 64) == 0
    with pytest.raises(TptError, match="holds no decode slot"):
        engine.plan_slots(10, length)
    # Slots split over data x fsdp: a multiple of it, or an error naming both numbers.
    mesh = make_mesh((2, 3, 1), jax.devices()[:6])
    engine = Engine(model, mesh, options=EngineOptions(memory_budget=2**31))
    assert engine.plan_slots(999, length) == memory.engine_slots(
        2**31, fixed, per_slot, 999, 64, 6
    ) == 60  # fmt: skip
    engine = Engine(model, mesh, options=EngineOptions(memory_budget=2**31, slots=8))
    with pytest.raises(TptError, match="engine.slots: 8 slots do not split .* = 6 devices"):
        engine.plan_slots(999, length)


# --- (b) the command ----------------------------------------------------------------------------


def test_plan_json_shape(capsys):
    config = CONFIGS / "gemma2_2b_gsm8k.yaml"
    code, out, _ = run_cli(
        ["plan", config, "--device-kind", "h200", "--devices", "1", "--json"], capsys
    )
    assert code == 0
    got = json.loads(out)
    assert isinstance(got["fits"], bool)
    for name in ("think", "eval", "train"):
        stage = got["stages"][name]
        assert isinstance(stage["bytes_per_device"], int) and stage["bytes_per_device"] > 0
        assert sum(stage["parts"].values()) == stage["bytes_per_device"]
    assert (got["device_kind"], got["devices"], got["mesh"]) == ("h200", 1, [1, 1, 1])
    assert got["model"]["name"] == "gemma2-2b" and "assumed" in got["model"]["assumed"]
    assert got["memory_per_device"] == int(139.8 * 2**30)


def test_plan_for_several_hosts(capsys):
    """--hosts x --devices-per-host: the 70B config's layout on a v5p-64 slice (8 hosts of 4
    chips) fits with float32 master weights; mistakes are one line."""
    config = CONFIGS / "llama3_1_70b_gsm8k.yaml"
    slice_ = ["--device-kind", "v5p", "--hosts", "8", "--devices-per-host", "4"]
    code, out, _ = run_cli(["plan", config, *slice_, "--json"], capsys)
    got = json.loads(out)
    assert code == 0 and got["fits"] and (got["hosts"], got["devices"]) == (8, 32)
    assert got["mesh"] == [1, 4, 8] and got["stages"]["train"]["master_dtype"] == "float32"
    code, out, _ = run_cli(["plan", config, *slice_], capsys)
    assert "on 8 hosts x 4 = 32 x v5p" in out and out.strip().endswith("fits: yes")
    # Gemma-2-9B's shipped layout on a v5p-16 slice and on one node of 8 H100s.
    nine = CONFIGS / "gemma2_9b_gsm8k.yaml"
    for where in (["v5p", "--hosts", "2", "--devices-per-host", "4"], ["h100", "--devices", "8"]):
        code, out, _ = run_cli(["plan", nine, "--device-kind", *where, "--json"], capsys)
        assert json.loads(out)["fits"] and json.loads(out)["mesh"] == [1, 4, 2], where
    code, _, err = run_cli(["plan", config, "--hosts", "8", "--devices-per-host", "4"], capsys)
    one_line_error(code, err, "--hosts and --devices-per-host", "add --device-kind")
    code, _, err = run_cli(["plan", config, *slice_, "--devices", "16"], capsys)
    one_line_error(code, err, "--devices 16 is not --hosts 8 x --devices-per-host 4")
    code, _, err = run_cli(["plan", config, "--device-kind", "v5p", "--hosts", "3"], capsys)
    one_line_error(code, err, "--hosts 3 does not divide --devices 32")


def test_plan_table(capsys):
    argv = ["plan", CONFIGS / "smoke.yaml", "--device-kind", "h100", "--devices", "4"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert "GiB per device" in out and "kv cache" in out and "optimizer" in out
    assert out.strip().endswith("fits: yes")


# --- (d) known answers ---------------------------------------------------------------------------


def plan_for(name: str, kind: str, count: int, *overrides: str) -> plan.Plan:
    run = load_config(CONFIGS / name, overrides)
    mesh = run.model.mesh if run.model.mesh and math.prod(run.model.mesh) == count else None
    devices = plan.devices_of(kind, count, mesh)
    return plan.make_plan(run, plan.resolve_model(run.model.path), devices)


def test_known_answers():
    # Gemma-2-2B samples on one H200 with the engine's full 512 slots. Its TRAIN step at
    # micro_batch 8 x 1600 tokens (the worst case: every example 1600 tokens) does not fit:
    # without rematerialization the step keeps 26 layers of float32 [8, 8, 1600, 1600]
    # attention scores (~64 GiB). Halving the micro-batch fits, the plan says so, and the
    # shipped config does it (global batch still 8).
    eight = plan_for("gemma2_2b_gsm8k.yaml", "h200", 1, "train.micro_batch=8")
    assert eight.stages["think"].fits and eight.stages["think"].details["slots"] == 512
    assert not eight.stages["train"].fits
    assert eight.suggestion.overrides == {"train.micro_batch": 4}
    assert plan_for("gemma2_2b_gsm8k.yaml", "h200", 1).fits
    # 70B: 131 GiB of bf16 weights leave no room for one decode slot on one H200.
    llama = plan_for("llama3_1_70b_gsm8k.yaml", "h200", 1)
    assert not llama.fits and "holds 0 decode slots" in llama.stages["think"].problem
    assert llama.suggestion.devices.count > 1
    bigger = llama.suggestion.devices
    mesh = f"model.mesh={list(bigger.mesh)}"
    assert plan_for("llama3_1_70b_gsm8k.yaml", "h200", bigger.count, mesh).fits
    assert plan_for("smollm2_135m_gsm8k.yaml", "h200", 1).fits
    # 16 devices and micro_batch 4: the trainer packs a microbatch of 16 rows (never fewer
    # rows than data x fsdp devices, data.pack_step), one row of 1600 tokens per chip.
    small = plan_for("smollm2_135m_gsm8k.yaml", "v5e", 16)
    assert small.stages["train"].details["tokens_per_device"] == 1600


def test_only_the_stages_a_run_executes_count():
    """A rounds: 0 run only evaluates (its TRAIN would not fit one H200); a cross-model run
    copies its traces and never samples THINK."""
    eval_only = plan_for("../bench/configs/gemma2_2b_round0_eval.yaml", "h200", 1)
    assert list(eval_only.stages) == ["eval"] and eval_only.fits
    cross = plan_for("ablations/gemma2_2b_cross_model_9b.yaml", "h200", 1)
    assert list(cross.stages) == ["eval", "train"]


def test_fewer_slots_and_bf16_are_suggested_first():
    run = RunConfig(
        engine=EngineConfig(slots=512, memory_gb=1000),
        task=dataclasses.replace(RunConfig().task, train_size=100),
    )
    model = plan.resolve_model("preset:llama3.1-8b")
    got = plan.make_plan(run, model, plan.devices_of("h100", 1), stages=["think"])
    assert not got.stages["think"].fits and "engine.slots" in got.suggestion.overrides
    cpu = dataclasses.replace(run, engine=EngineConfig(dtype="float32"))
    got = plan.make_plan(cpu, model, plan.devices_of("v6e", 1), stages=["think"])
    assert got.suggestion.overrides == {"engine.dtype": "bfloat16"}


def test_model_resolution(tmp_path):
    assert plan.preset_for_name("Llama-3.1-70B-Instruct") == "llama3.1-70b"
    assert plan.preset_for_name("gemma-2-27b-it") == "gemma2-27b"
    assert plan.preset_for_name("gemma-2-2b-it") == "gemma2-2b"
    assert plan.preset_for_name("SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m"
    assert plan.preset_for_name("mystery-7b") is None
    assert plan.resolve_model("smollm2").name == "smollm2-135m"
    assert plan.resolve_model("x", preset_name="gemma3-1b").config == PRESETS["gemma3-1b"]
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["gemma3-270m"].to_hf_config()))
    got = plan.resolve_model(str(tmp_path))
    assert got.config.num_layers == 18 and got.assumed is None


# --- (c) tpt run refuses, before loading weights -------------------------------------------------


def test_run_refuses_what_cannot_fit_before_loading(tmp_path, capsys):
    config = tmp_path / "big.yaml"
    config.write_text(f"base: {CONFIGS / 'smoke.yaml'}\nmodel:\n  path: preset:llama3.1-70b\n")
    t0 = time.perf_counter()
    code, _, err = run_cli(["run", config, "--run-dir", tmp_path / "run"], capsys)
    line = one_line_error(code, err, "GiB per device", "GiB usable", "holds 0 decode slots")
    assert time.perf_counter() - t0 < 10 and line.startswith("tpt: error: think on ")
    assert not (tmp_path / "run" / "base_model").exists()  # the 70B preset never materialized
    code, _, err = run_cli(["train", config, "--run-dir", tmp_path / "run", "--round", "1"], capsys)
    one_line_error(code, err, "train on ", "needs", "no single change makes it fit")


# --- (e) bad input -------------------------------------------------------------------------------


def test_bad_input_is_one_line(tmp_path, capsys):
    demo = CONFIGS / "demo.yaml"
    code, _, err = run_cli(["plan", demo, "--device-kind", "a100"], capsys)
    one_line_error(code, err, "unknown device kind 'a100'", "h200")
    code, _, err = run_cli(["plan", demo, "--preset", "gpt5"], capsys)
    one_line_error(code, err, "unknown preset 'gpt5'")
    code, _, err = run_cli(["plan", demo, "--set", "model.path=checkpoints/mystery"], capsys)
    one_line_error(code, err, "checkpoints/mystery", "--preset")
    code, _, err = run_cli(["plan", demo, "--devices", "0", "--device-kind", "h100"], capsys)
    one_line_error(code, err, "--devices")
    with pytest.raises(TptError):
        plan.devices_of("v5e", 4, (1, 2, 1))
