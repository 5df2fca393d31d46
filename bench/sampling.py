"""Generation throughput of `tpt_jax.sampler.Sampler`, optionally against transformers.

Generated tokens per second (batch x new tokens / wall time of one `generate` call, prefill
included) for a preset with random weights or a real checkpoint, at several batch sizes. Every
row generates exactly `--new-tokens` tokens (the stop id is -1, which no token can equal), and
this is checked. The first call per shape compiles; "compile s" is its time minus the mean of
the timed calls.

    PYTHONPATH=. python bench/sampling.py                        # smollm2-135m, random weights
    PYTHONPATH=. python bench/sampling.py --baseline hf --batch-sizes 1,8 --new-tokens 64
    PYTHONPATH=. python bench/sampling.py --model smollm2 --dtype bfloat16 --temperature 0.7
    PYTHONPATH=. python bench/sampling.py --model out/smollm2-hf --prompt-len 512 --repeats 3

`--baseline hf` exports the same weights with `save_hf_dir` (any `--model`), loads them with
`transformers.AutoModelForCausalLM` on the same device (CUDA if torch sees it, else CPU), and
times `generate(max_new_tokens=N, min_new_tokens=N)` on the same prompts with the KV cache on.
On a GPU, torch and JAX then share the card: this script sets XLA_PYTHON_CLIENT_PREALLOCATE=false
for such runs (unless already set) so JAX does not take 75% of its memory up front; export it
yourself, e.g. `XLA_PYTHON_CLIENT_PREALLOCATE=false python bench/sampling.py --baseline hf`,
when running JAX next to torch in any other way. Do not set the tests' fake-device XLA_FLAGS.
On a CPU shared with other work, torch's OpenMP threads slow down far more than JAX's when
cores are oversubscribed; `--torch-threads 1` shows how much (the JSON records the count).

Results print as a markdown table and go to `--out` as JSON
(default `bench/results/sampling-<device>.json`).
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
from tpt_jax.hf_io import save_hf_dir
from tpt_jax.models.config import PRESETS
from tpt_jax.models.transformer import Transformer, init_model
from tpt_jax.sampler import Sampler, SamplingParams
from tpt_jax.sharding import make_mesh

NEVER = -1  # a stop id no sampled token equals, so every row runs to max_new_tokens
COLUMNS = ["model", "device", "dtype", "batch", "prompt", "new tokens", "tpt tok/s", "hf tok/s"]
COLUMNS += ["ratio", "compile s"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="a preset (random weights), or a path or shipped name for tpt_jax.load (smollm2)",
    )
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--baseline", choices=["none", "hf"], default="none")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/...)")
    return p.parse_args(argv)


def load_model(name: str, dtype: str, mesh) -> Transformer:
    if name in PRESETS:  # random weights, on the default device (the mesh's one device)
        return init_model(PRESETS[name], seed=0, dtype=getattr(jnp, dtype))
    return tpt_jax.load(name, dtype=dtype, mesh=mesh).model


def run_tpt(sampler: Sampler, prompts: np.ndarray, params: SamplingParams, repeats: int):
    """(first-call seconds, timed seconds, tokens [B, N]) for one batch of prompts."""
    rows = prompts.tolist()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = sampler.generate(rows, params)  # ends with a device_get: the work is done
        times.append(time.perf_counter() - start)
        lengths, reasons = {len(s[0].tokens) for s in out}, {s[0].finish_reason for s in out}
        assert lengths == {params.max_new_tokens} and reasons == {"length"}, (lengths, reasons)
    return times[0], times[1:], np.array([s[0].tokens for s in out])


class HFBaseline:
    """The same weights in transformers, on CUDA when torch sees it, else CPU."""

    def __init__(self, model: Transformer, dtype: str, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory() as tmp:
            save_hf_dir(model, tmp)
            hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=getattr(torch, dtype))
        self.model = hf.to(self.device).eval()
        self.pad_id = model.config.pad_token_id or 0
        self.versions = {"torch": torch.__version__, "transformers": _version("transformers")}
        self.versions["torch_threads"] = torch.get_num_threads()
        if self.device == "cuda":
            self.versions["cuda_device"] = torch.cuda.get_device_name(0)

    def generate(self, prompts: np.ndarray, new_tokens: int, temperature: float):
        torch = self.torch
        ids = torch.as_tensor(prompts, dtype=torch.long, device=self.device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                use_cache=True,
                pad_token_id=self.pad_id,
                **(sampling if temperature > 0 else dict(do_sample=False)),
            )
            if self.device == "cuda":
                torch.cuda.synchronize()
        return out[:, prompts.shape[1] :].cpu().numpy()

    def run(self, prompts: np.ndarray, new_tokens: int, temperature: float, repeats: int):
        self.generate(prompts, min(new_tokens, 4), temperature)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = self.generate(prompts, new_tokens, temperature)
            times.append(time.perf_counter() - start)
            assert tokens.shape == (len(prompts), new_tokens), tokens.shape
        return times, tokens


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def device_slug(device) -> str:
    name = "cpu" if device.platform == "cpu" else device.device_kind
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def markdown(rows: list[dict]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}" if v < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.baseline == "hf":  # read when JAX first touches the GPU, so not too late here
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    device = jax.devices()[0]
    print(f"jax {jax.__version__}: {jax.devices()}; cpu count {os.cpu_count()}", flush=True)
    mesh = make_mesh((1, 1, 1), [device])  # one device, like the transformers baseline
    t0 = time.perf_counter()
    model = load_model(args.model, args.dtype, mesh)
    print(f"loaded {args.model} ({args.dtype}) in {time.perf_counter() - t0:.1f}s", flush=True)
    sampler = Sampler(model, mesh, stop_ids=[NEVER])
    hf = HFBaseline(model, args.dtype, args.torch_threads) if args.baseline == "hf" else None
    if hf:
        print(f"transformers baseline on {hf.device}: {hf.versions}", flush=True)
    params = SamplingParams(
        max_new_tokens=args.new_tokens, temperature=args.temperature, seed=args.seed
    )
    vocab = model.config.vocab_size
    rng = np.random.default_rng(args.seed)
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = rng.integers(0, vocab, (batch, args.prompt_len), dtype=np.int64)
        first, times, ours = run_tpt(sampler, prompts, params, args.repeats)
        generated = batch * args.new_tokens
        row = {
            "model": args.model,
            "device": device.device_kind,
            "dtype": args.dtype,
            "batch": batch,
            "prompt": args.prompt_len,
            "new tokens": args.new_tokens,
            "tpt tok/s": generated / float(np.mean(times)),
            "hf tok/s": None,
            "ratio": None,
            "compile s": max(first - float(np.mean(times)), 0.0),
            "tpt_seconds": times,
            "tpt_first_call_seconds": first,
        }
        if hf:
            hf_times, theirs = hf.run(prompts, args.new_tokens, args.temperature, args.repeats)
            row["hf tok/s"] = generated / float(np.mean(hf_times))
            row["ratio"] = row["tpt tok/s"] / row["hf tok/s"]
            row["hf_seconds"] = hf_times
            if args.temperature == 0:  # same weights, same prompts: greedy should agree
                row["same_tokens_as_hf"] = float(np.mean(ours == theirs))
        rows.append(row)
        print(markdown([row]).splitlines()[-1], flush=True)
    print("\n" + markdown(rows))
    if hf and args.temperature == 0:
        print(
            "greedy tokens equal to transformers':", [f"{r['same_tokens_as_hf']:.0%}" for r in rows]
        )
    out = Path(args.out or f"bench/results/sampling-{device_slug(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "compilations": sampler.compilations,
        **(hf.versions if hf else {}),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
