"""Training-step throughput of tpt_jax against transformers + a plain torch AdamW step, in one run.

Two workloads:

- `full` (default): a preset (default SmolLM2-135M's shape, random weights) at `--batch` rows x
  `--seq` tokens, every token a real completion token (pad fraction 0). tpt_jax runs its real
  training loop (`tpt_jax.train.train`: float32 masters, `--compute-dtype` matmuls, packing,
  prefetch, metrics one step late); the baseline is the same weights in transformers, float32
  master, `torch.autocast(bfloat16)` on GPU (float32 on CPU), loss over every token,
  `torch.optim.AdamW`, one optimizer step per batch.
- `recipe`: the recipe's settings (global batch 8, micro_batch 8, max_len 1,600) on GSM8K
  reference solutions (`--gsm8k DIR`, the SmolLM2 chat template), which pack into far fewer
  tokens than 8 x 1,600. Reports the pad fraction of the computed slots and the step time per
  real token; with `--before DIR` (a checkout of an older tpt_jax, e.g. a git worktree) the same
  steps also run on that code in a subprocess, so the gain is a ratio measured in one run.

Reported per row: tokens/s (real tokens; median step after `--warmup` steps), MFU = 6 N
tokens/s / peak (N = parameters; peak = the card's dense bf16 peak on GPU/TPU, on CPU the
float32 matmul rate measured in this run, said so in the row), pad fraction and compile time.

    python bench/train_step.py --baseline torch                       # SmolLM2-135M, 8 x 512
    python bench/train_step.py --workload recipe --gsm8k ../shared/data/gsm8k --before /tmp/old
    python bench/train_step.py --preset gemma2-2b --batch 8 --seq 1024 --baseline torch  # GPU

`--out FILE` writes JSON rows with `tpt_tokens_per_s`, `torch_tokens_per_s`, `ratio`, `mfu` and
`pad_fraction` (default bench/results/train_step-<device>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tpt_jax.config import TrainConfig
from tpt_jax.data import SFTExample
from tpt_jax.models.attention import self_attention_kernel
from tpt_jax.models.config import preset
from tpt_jax.models.transformer import init_model, param_count
from tpt_jax.sharding import make_mesh
from tpt_jax.train import train

# Dense bf16 peak per chip (FLOP/s), vendors' data sheets.
PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "TPU v5e": 197e12, "TPU v5p": 459e12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=("full", "recipe"), default="full")
    p.add_argument("--preset", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=6, help="steps per side (the first are warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compute-dtype", default=None, help="default: bfloat16 on GPU/TPU, else f32")
    p.add_argument("--remat", default="none", choices=("none", "minimal", "full"))
    p.add_argument("--scan", action="store_true", help="train.scan_layers")
    p.add_argument(
        "--attention", default="auto", choices=("auto", "xla", "cudnn", "splash"),
        help="self-attention kernel in training (auto: splash on TPU, cuDNN on GPU, else XLA)",
    )  # fmt: skip
    p.add_argument("--baseline", choices=("torch", "none"), default="none")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--gsm8k", default="../shared/data/gsm8k", help="recipe: GSM8K directory")
    p.add_argument("--before", default=None, help="recipe: an older checkout to compare with")
    p.add_argument("--out", default=None)
    p.add_argument("--before-micro-batch", type=int, default=8, help="recipe: the older run's")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- tpt_jax side -----------------------------------------------------------------------------


def tpt_steps(model, examples, cfg: TrainConfig) -> list[dict]:
    """The step records of a real `train()` call (one device), in order."""
    records: list[dict] = []
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    with tempfile.TemporaryDirectory() as work:
        train(model, mesh, examples, [], cfg, seed=0, work_dir=work, log=records.append)
    return [r for r in records if "loss" in r]


def summarize(records: list[dict], warmup: int) -> dict:
    """Median real tokens/s over the steps after `warmup`. Older code logs no step_s: there
    tokens / tokens_per_s is the step time (its first step also holds the compile)."""
    timed = records[warmup:]
    seconds = [r.get("step_s") or r["tokens"] / r["tokens_per_s"] for r in timed]
    tokens = [r["tokens"] for r in timed]
    per_token = statistics.median(s / t for s, t in zip(seconds, tokens, strict=True))
    compile_s = sum(r.get("compile_s", 0.0) for r in records)
    pads = [r["pad_fraction"] for r in timed if "pad_fraction" in r]
    return {
        "tokens_per_s": 1.0 / per_token,
        "step_s": statistics.median(seconds),
        "tokens_per_step": statistics.mean(tokens),
        "pad_fraction": statistics.mean(pads) if pads else None,
        "compile_s": compile_s if compile_s else None,
        "losses": [r["loss"] for r in records],
    }


def full_examples(cfg, batch: int, seq: int, steps: int, seed: int = 0) -> list[SFTExample]:
    """batch x steps rows of exactly `seq` tokens: a 1-token prompt and seq - 1 completion."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (batch * steps, seq))
    return [SFTExample((int(r[0]),), tuple(int(t) for t in r[1:])) for r in ids]


# --- torch baseline ---------------------------------------------------------------------------


def torch_steps(model, examples, batch: int, seq: int, threads: int | None) -> tuple[list, dict]:
    """Seconds per step of transformers + torch AdamW on the same weights and rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from tpt_jax.hf_io import save_hf_dir

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_dir(model, tmp)
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, weight_decay=0.0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    times = []
    for start in range(0, len(examples), batch):
        rows = [list(ex.prompt + ex.completion) for ex in examples[start : start + batch]]
        ids = torch.tensor(rows, device=device)
        began = time.perf_counter()
        with autocast:
            loss = hf(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return times, info


# --- peak and MFU -----------------------------------------------------------------------------


def peak_flops(device) -> tuple[float, str]:
    """(FLOP/s, where it came from): the data-sheet bf16 peak of a known card; on CPU the
    float32 rate of a 2048^3 matmul measured now (what this CPU can do, not a data sheet)."""
    kind = getattr(device, "device_kind", "")
    known = next((v for k, v in PEAK.items() if k in kind), None)
    if known:
        return known, f"{kind} dense bf16 data sheet"
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    began = time.perf_counter()
    for _ in range(5):
        mm(a).block_until_ready()
    rate = 5 * 2 * n**3 / (time.perf_counter() - began)
    return rate, f"measured float32 matmul on {kind or device.platform}"


# --- workloads --------------------------------------------------------------------------------


def full_row(args, device) -> dict:
    cfg = preset(args.preset)
    dtype = args.compute_dtype or ("float32" if device.platform == "cpu" else "bfloat16")
    train_cfg = TrainConfig(
        lr=1e-5, warmup_ratio=0.0, global_batch=args.batch, micro_batch=args.batch,
        max_len=args.seq, length_step=args.seq, epochs=1, eval_every=10**9,
        compute_dtype=dtype, select="last", remat=args.remat, scan_layers=args.scan,
    )  # fmt: skip
    examples = full_examples(cfg, args.batch, args.seq, args.steps)
    model = init_model(cfg, seed=0)
    row = {"workload": "full", "preset": args.preset, "batch": args.batch, "seq": args.seq}
    row |= {"compute_dtype": dtype, "remat": args.remat, "scan_layers": args.scan}
    row["attention"] = args.attention
    torch_times = None
    if args.baseline == "torch":  # in a process of its own: the two never share memory
        cmd = [sys.executable, __file__, "--torch-child", "--preset", args.preset]
        cmd += ["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
        if args.torch_threads:
            cmd += ["--torch-threads", str(args.torch_threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        torch_times, row["torch_info"] = json.loads(out.stdout.strip().splitlines()[-1])
    kernel = None if args.attention == "auto" else args.attention
    with self_attention_kernel(kernel):  # read while the step is traced
        tpt = summarize(tpt_steps(model, examples, train_cfg), args.warmup)
    row |= {f"tpt_{k}": v for k, v in tpt.items() if k != "losses"}
    row["pad_fraction"] = tpt["pad_fraction"]
    if torch_times is not None:
        seconds = statistics.median(torch_times[args.warmup :])
        row["torch_tokens_per_s"] = args.batch * args.seq / seconds
        row["torch_step_s"] = seconds
        row["ratio"] = tpt["tokens_per_s"] / row["torch_tokens_per_s"]
    peak, source = peak_flops(device)
    n = param_count(cfg)
    row |= {"params": n, "peak_flops": peak, "peak_source": source}
    row["mfu"] = 6 * n * tpt["tokens_per_s"] / peak
    if torch_times is not None:
        row["torch_mfu"] = 6 * n * row["torch_tokens_per_s"] / peak
    return row


def recipe_examples(gsm8k: Path, count: int) -> list[SFTExample]:
    from tpt_jax.data import encode_example
    from tpt_jax.gguf_io import find_smollm2_gguf, read_gguf_tokenizer

    tokenizer = read_gguf_tokenizer(find_smollm2_gguf())
    lines = (gsm8k / "train.jsonl").read_text("utf-8").splitlines()[:count]
    records = [json.loads(line) for line in lines]
    return [
        encode_example(tokenizer, [{"role": "user", "content": r["question"]}], r["answer"])
        for r in records
    ]


def recipe_records(args) -> dict:
    """The recipe workload on the code this process imports: summary of its steps."""
    examples = recipe_examples(Path(args.gsm8k), 8 * args.steps)
    micro = args.before_micro_batch if args.child else 8
    train_cfg = TrainConfig(
        lr=1e-6, global_batch=8, micro_batch=micro, max_len=1600, epochs=1, eval_every=10**9,
        compute_dtype=args.compute_dtype or "float32", select="last",
    )  # fmt: skip
    model = init_model(preset(args.preset), seed=0)
    return summarize(tpt_steps(model, examples, train_cfg), args.warmup)


def recipe_row(args, device) -> dict:
    row = {"workload": "recipe", "preset": args.preset, "global_batch": 8, "max_len": 1600}
    now = recipe_records(args)
    row |= {f"tpt_{k}": v for k, v in now.items() if k != "losses"}
    row["pad_fraction"] = now["pad_fraction"]
    if args.before:
        cmd = [sys.executable, __file__, "--child", "--workload", "recipe"]
        cmd += ["--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--gsm8k", str(Path(args.gsm8k).resolve())]
        cmd += ["--before-micro-batch", str(args.before_micro_batch)]
        row["before_micro_batch"] = args.before_micro_batch
        if args.compute_dtype:
            cmd += ["--compute-dtype", args.compute_dtype]
        env = {**os.environ, "PYTHONPATH": str(Path(args.before).resolve())}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        before = json.loads(out.stdout.strip().splitlines()[-1])
        row |= {f"before_{k}": v for k, v in before.items() if k != "losses"}
        row["before_commit"] = _commit(Path(args.before))
        # Time per real token, before / now: >1 is faster now. Losses: the same rows, so the
        # same values up to float rounding (packing changes summation order only).
        row["ratio"] = now["tokens_per_s"] / before["tokens_per_s"]
        row["max_loss_difference"] = max(
            abs(a - b) for a, b in zip(now["losses"], before["losses"], strict=True)
        )
    return row


# --- main -------------------------------------------------------------------------------------


def _commit(path: Path) -> str | None:
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def device_slug(device) -> str:
    name = "cpu" if device.platform == "cpu" else device.device_kind
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:  # the --before side of the recipe workload: one JSON line
        print(json.dumps(recipe_records(args)))
        return
    if args.torch_child:  # the torch baseline of the full workload: one JSON line
        cfg = preset(args.preset)  # the same seed-0 weights as the tpt_jax side
        examples = full_examples(cfg, args.batch, args.seq, args.steps)
        times = torch_steps(init_model(cfg, seed=0), examples, args.batch, args.seq,
                            args.torch_threads)  # fmt: skip
        print(json.dumps(times))
        return
    if args.baseline == "torch":  # read when JAX first touches the GPU
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    device = jax.devices()[0]
    print(f"jax {jax.__version__}: {jax.devices()}; cpu count {os.cpu_count()}", flush=True)
    row = full_row(args, device) if args.workload == "full" else recipe_row(args, device)
    row["commit"] = _commit(Path(__file__).resolve().parents[1])
    row["date"] = datetime.date.today().isoformat()
    row["device"] = getattr(device, "device_kind", device.platform)
    row["versions"] = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": _version("flax"),
        "transformers": _version("transformers") if args.baseline == "torch" else None,
    }
    row["command"] = "python bench/train_step.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(json.dumps(row, indent=2), flush=True)
    out = Path(args.out or f"bench/results/train_step-{args.workload}-{device_slug(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([row], indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
