"""The `tpt` command. User mistakes print one line (`tpt: error: ...`) and exit 2, never a
traceback; `--debug` shows the traceback for bug reports."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports what a command needs when it runs
    from tpt_jax.round import Run


def _convert(args: argparse.Namespace) -> None:
    from tpt_jax.api import load

    t0 = time.perf_counter()
    handle = load(args.src, dtype=args.dtype)
    if args.to == "hf":
        out = handle.save_hf(args.dst)
    else:
        out = handle.save(args.dst)
    n = sum(x.size for x in _params(handle))
    print(f"wrote {args.to} {out} ({n:,} params, {args.dtype}) in {time.perf_counter() - t0:.1f}s")


def _params(handle):
    import jax
    from flax import nnx

    return jax.tree.leaves(nnx.state(handle.model, nnx.Param))


def _top(args: argparse.Namespace) -> None:
    """Top next tokens after a prompt: the quickest check that a model loaded correctly."""
    import numpy as np

    from tpt_jax.api import load
    from tpt_jax.errors import TptError

    handle = load(args.model, dtype=args.dtype)
    tok = handle.tokenizer
    if tok is None:
        raise TptError(f"{args.model}: has no tokenizer files, so text prompts can't be encoded")
    if args.raw:
        ids = tok.encode(args.prompt)
    else:
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}])
    logits = handle.logits([ids])[0, -1]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    print(f"{handle.config.family} model, {len(ids)} prompt tokens; top next tokens:")
    for i in np.argsort(-logits)[: args.k]:
        print(f"  {int(i):>7d}  p={probs[i]:.4f}  logit={logits[i]:8.3f}  {tok.decode([int(i)])!r}")


def _generate(args: argparse.Namespace) -> None:
    """Answer one prompt; a single sample streams its text as tokens are produced."""
    from tpt_jax.api import load
    from tpt_jax.engine import SamplingParams

    handle = load(args.model, dtype=args.dtype)
    prompt = args.prompt if args.raw else [{"role": "user", "content": args.prompt}]
    ids = handle.encode_prompt(prompt)
    params = SamplingParams(
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.n, args.seed
    )
    t0 = time.perf_counter()
    if args.n == 1 and handle.tokenizer is not None:
        tokens: list[int] = []
        shown = ""
        stops = set(handle.engine.stop_ids)
        reasons = ["length"]
        for token in handle.engine.stream(ids, params):
            if token in stops:
                reasons = ["stop"]
                break
            tokens.append(token)
            text = handle.tokenizer.decode(tokens)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                print(text[len(shown) :], end="", flush=True)
                shown = text
        print(text[len(shown) :] if tokens else "", flush=True)
        counts = [len(tokens)]
    else:
        samples = handle.generate([ids], **_sampling_kwargs(args))[0]
        for i, s in enumerate(samples):
            print(f"--- sample {i} ({s.finish_reason}, {s.length} tokens)")
            print(s.text if s.text is not None else s.tokens)
        counts = [s.length for s in samples]
        reasons = [s.finish_reason for s in samples]
    seconds = time.perf_counter() - t0
    cut = reasons.count("length")
    print(
        f"[{sum(counts)} tokens in {seconds:.1f}s incl. compilation, "
        f"{sum(counts) / seconds:.1f} tok/s; {cut} of {len(reasons)} answers cut at "
        f"--max-new-tokens {args.max_new_tokens}]",
        file=sys.stderr,
    )


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    keys = ("max_new_tokens", "temperature", "top_p", "top_k", "n", "seed")
    return {k: getattr(args, k) for k in keys}


def _info(args: argparse.Namespace) -> None:
    import json

    from tpt_jax.api import detect_format, load
    from tpt_jax.hub import is_hub_id
    from tpt_jax.models.config import PRESETS
    from tpt_jax.models.transformer import param_count

    if args.model in PRESETS and not Path(args.model).exists():
        fmt, cfg = "preset", PRESETS[args.model]  # shapes only: nothing is allocated
    else:
        path = Path(args.model)
        if path.exists():
            fmt = detect_format(path)
        else:
            fmt = "hub" if is_hub_id(args.model) else "shipped"
        cfg = load(args.model).config
    print(json.dumps({"format": fmt, "params": param_count(cfg), **cfg.to_hf_config()}, indent=2))


def _run(args: argparse.Namespace) -> None:
    """`tpt run`: the whole loop; `tpt think|prune|train|eval`: one stage of one round."""
    from tpt_jax.errors import TptError
    from tpt_jax.round import Run

    if args.command != "run" and args.round < (1 if args.command != "eval" else 0):
        raise TptError(f"tpt {args.command}: --round must be >= 1 (round 0 only evaluates)")
    run = Run(
        args.config, args.run_dir, overrides=args.set or (), force=args.force,
        reuse=getattr(args, "reuse", None) or (),
    )  # fmt: skip
    try:
        _run_command(run, args)
    finally:
        run.close()


def _run_command(run: Run, args: argparse.Namespace) -> None:
    from tpt_jax import report

    run_dir = run.dir
    manifests = []
    if args.command == "run":
        manifests = run.run()
    elif args.command == "eval" and args.round == 0:
        run.preflight(stage="eval")
        run.round(0)
    else:
        run.preflight(model=False, stage=args.command)
        run.stage(args.command, args.round)
        return
    from tpt_jax.distributed import is_primary

    if not is_primary():  # process 0 reports for all
        return
    rows = run.report()
    print(report.table(rows))
    for note in report.notes(rows):
        print(note)
    chart = report.plot(rows, run_dir / "report.png", f"{run_dir.name}: Pass@k per round")
    shown = f", chart {chart}" if chart else ", no chart: pip install 'tpt-jax[plot]'"
    print(f"run directory: {run_dir} (metrics.jsonl, tb/{shown})")
    if manifests and manifests[-1].get("stopped"):  # on_empty_round: stop ends a run cleanly
        done = ", ".join(str(r["round"]) for r in rows)
        print(
            f"run stopped: {manifests[-1]['reason']} (on_empty_round: stop); finished rounds: "
            f"{done}; set on_empty_round: carry to go on with the same model"
        )


def _config(args: argparse.Namespace) -> None:
    """`tpt config`: the resolved config (bases merged, defaults filled in) of a config file,
    with --set applied, or of a run directory (the config it was started with)."""
    import json

    import yaml

    from tpt_jax.config import from_dict, load_config, to_dict
    from tpt_jax.errors import TptError

    source = Path(args.source)
    if source.is_dir():
        if args.set:
            raise TptError("tpt config: --set applies to a config file, not a run directory")
        path = source / "config.json"
        if not path.is_file():
            raise TptError(f"{source}: not a run directory (no config.json)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TptError(f"{path}: unreadable ({e})") from None
        config = from_dict(raw, str(path))
    else:
        config = load_config(source, args.set or ())
    resolved = to_dict(config)
    print(
        json.dumps(resolved, indent=2) if args.json else yaml.safe_dump(resolved, sort_keys=False)
    )


def _plan(args: argparse.Namespace) -> None:
    """`tpt plan`: memory per device and stage, before anything is loaded."""
    import json

    from tpt_jax import plan
    from tpt_jax.config import load_config

    config = load_config(args.config, args.set or ())
    model = plan.resolve_model(config.model.path, args.preset)
    devices, notes = _plan_devices(
        config.model.mesh, args.device_kind, args.devices, args.hosts, args.devices_per_host
    )
    result = plan.make_plan(config, model, devices, notes=notes)
    if args.json:
        print(json.dumps({"config": args.config, **result.to_json()}, indent=2))
    else:
        print(_plan_table(result, args.config))


def _plan_devices(
    mesh, kind: str | None, count: int | None, hosts: int | None, per_host: int | None
):
    """The devices to plan for: `kind` (default: this machine's), `count` of them in all
    (default: hosts x per_host, else model.mesh's product, else the local device count) over
    `hosts` hosts, on model.mesh when its product is the count, else all on fsdp (and a note
    saying so)."""
    import jax

    from tpt_jax import plan
    from tpt_jax.errors import TptError

    if (hosts or per_host) and kind is None:
        raise TptError("--hosts and --devices-per-host plan for other machines: add --device-kind")
    if per_host is not None:
        if count is not None and count != (hosts or 1) * per_host:
            raise TptError(
                f"--devices {count} is not --hosts {hosts or 1} x --devices-per-host {per_host}"
            )
        count = (hosts or 1) * per_host
    if count is None:
        count = math.prod(mesh) if mesh else jax.device_count()
    notes = []
    if mesh and math.prod(mesh) != count:
        notes.append(f"model.mesh {list(mesh)} needs {math.prod(mesh)} devices; planned on")
        mesh = None
    mesh = tuple(mesh) if mesh else (1, count, 1)
    if notes:
        notes[0] += f" {list(mesh)}"
    if kind is not None:
        return plan.devices_of(kind, count, mesh, hosts or 1), notes
    local = plan.local_devices()
    if local is None:
        raise TptError("this machine's devices report no memory size; pass --device-kind")
    return local.with_mesh(mesh), notes


def _plan_table(result, source: str) -> str:
    """A plan as GiB per device, part by part and stage by stage, and the verdict."""
    from tpt_jax.plan import HEADROOM, GiB, param_count, shortfall

    stages, model = list(result.stages.values()), result.model
    assumed = f" ({model.assumed})" if model.assumed else ""
    lines = [
        f"tpt plan: {source} on {result.devices.describe()}",
        f"model: {model.name}, {param_count(model.config) / 1e9:.2f}B parameters{assumed}",
        f"prompts: assumed up to {result.prompt_tokens} tokens (think.max_prompt_tokens bounds "
        "them)",
        *(f"note: {note}" for note in result.notes),
        "",
    ]

    def row(label: str, cells) -> str:
        return f"{label:18s}" + "".join(f"{c:>10s}" for c in cells)

    lines.append(row("GiB per device", [s.name for s in stages]))
    for part in dict.fromkeys(p for s in stages for p in s.parts):  # first-seen order
        cells = [f"{s.parts[part] / GiB:.2f}" if part in s.parts else "-" for s in stages]
        lines.append(row(part.replace("_", " "), cells))
    lines.append(row("total", [f"{s.bytes_per_device / GiB:.2f}" for s in stages]))
    lines.append(row("usable", [f"{s.usable / GiB:.2f}" for s in stages]))
    lines += [row("fits", ["yes" if s.fits else "NO" for s in stages]), ""]
    lines += [f"{s.name}: {_stage_line(s)}" for s in stages]
    lines.append(f"headroom: each stage leaves {HEADROOM:.0%} of what its weights leave free")
    if result.fits:
        return "\n".join([*lines, "fits: yes"])
    lines += [f"fits: no; {s.name} {shortfall(s)}" for s in stages if not s.fits]
    fix = result.suggestion.change if result.suggestion else "none found"
    return "\n".join([*lines, f"smallest change that fits: {fix}"])


def _stage_line(stage) -> str:
    d = stage.details
    if stage.name == "train":
        return (
            f"micro_batch {d['micro_batch']} x {d['max_len']} tokens "
            f"({d['tokens_per_device']:,} per device), {d['compute_dtype']} compute, "
            f"{d['master_dtype']} master weights"
        )
    return f"{d['slots']} decode slots x {d['cache_length']} positions, {d['dtype']}"


def _report(args: argparse.Namespace) -> None:
    import json

    from tpt_jax import report, storage

    rows = report.rounds(args.run_dir)
    answers = report.by_answer(args.run_dir) if args.by_answer else None
    if args.json:
        extra = {"by_answer": answers} if answers is not None else {}
        print(json.dumps({"rounds": rows, **extra}, indent=2))
        return
    print(report.table(rows))
    for note in report.notes(rows):
        print(note)
    if answers is not None:
        print(f"\nPass@1 by reference answer:\n{report.by_answer_table(answers, args.top)}")
    run_dir = storage.run_path(args.run_dir)
    title = f"{run_dir.name}: Pass@k per round"
    chart = report.plot(rows, args.png or run_dir / "report.png", title)
    print(f"chart: {chart}" if chart else "chart: none (matplotlib: pip install 'tpt-jax[plot]')")


MODEL_HELP = (
    "HF directory, .gguf file, tpt_jax checkpoint, shipped name, or Hugging Face Hub id "
    "org/name[@revision]"
)


def _prompt_command(sub, name: str, help: str, fn) -> argparse.ArgumentParser:
    """A subcommand taking MODEL and a prompt (chat-templated unless --raw)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="no chat template")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.set_defaults(fn=fn)
    return p


def _version() -> str:
    """tpt_jax's version and the versions that decide numerics (read without importing JAX)."""
    from importlib import metadata

    from tpt_jax import __version__

    parts = [f"tpt_jax {__version__}"]
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


class _PrintVersion(argparse.Action):
    """--version as one unwrapped line (argparse's own action rewraps it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpt", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action=_PrintVersion, nargs=0, help="versions, then exit")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert between HF, GGUF (source only) and Orbax")
    c.add_argument("src", help=MODEL_HELP)
    c.add_argument("dst", help="output directory")
    c.add_argument("--to", choices=["hf", "orbax"], default="hf")
    c.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    c.set_defaults(fn=_convert)

    t = _prompt_command(sub, "top", "print the most likely next tokens after a prompt", _top)
    t.add_argument("-k", type=int, default=5)

    g = _prompt_command(sub, "generate", "answer a prompt (one sample streams as made)", _generate)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--n", type=int, default=1, help="samples")
    g.add_argument("--seed", type=int, default=0)

    for name, help in (
        ("run", "a whole TPT run: base evaluation, then think, prune, train, eval per round"),
        ("think", "one round's THINK stage (sample solutions to train problems)"),
        ("prune", "one round's PRUNE stage (keep verified solutions)"),
        ("train", "one round's TRAIN stage (SFT on the kept solutions)"),
        ("eval", "evaluate one round's model (round 0: the base model)"),
    ):
        r = sub.add_parser(name, help=help)
        r.add_argument("config", help="run config YAML (see configs/)")
        r.add_argument("--run-dir", help="default: runs/<config name>")
        r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
        r.add_argument(
            "--force",
            action="store_true",
            help="accept a changed config or data: discard the stages the change reaches",
        )
        if name == "run":
            r.add_argument(
                "--reuse",
                action="append",
                metavar="RUN_DIR",
                help="copy the finished stages of another run whose inputs equal this run's",
            )
        if name != "run":
            r.add_argument("--round", type=int, required=True)
        r.set_defaults(fn=_run)

    cf = sub.add_parser("config", help="the resolved config of a config file or run directory")
    cf.add_argument("source", help="run config YAML, or a run directory")
    cf.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    cf.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    cf.set_defaults(fn=_config)

    rep = sub.add_parser("report", help="table, JSON and chart of a run's rounds")
    rep.add_argument("run_dir")
    rep.add_argument("--json", action="store_true", help="print JSON instead of the table")
    rep.add_argument("--png", help="where to write the chart (default RUN_DIR/report.png)")
    rep.add_argument(
        "--by-answer",
        action="store_true",
        help="also break Pass@1 down by reference answer, per round (with --json: by_answer)",
    )
    rep.add_argument(
        "--top",
        type=int,
        default=20,
        metavar="N",
        help="--by-answer table: the N answers with most problems, the rest in one line (0: all)",
    )
    rep.set_defaults(fn=_report)

    pl = sub.add_parser("plan", help="memory per device and stage; whether the run fits")
    pl.add_argument("config", help="run config YAML (see configs/)")
    pl.add_argument(
        "--devices", type=int, help="in all (default: model.mesh's size, else local devices)"
    )
    pl.add_argument("--hosts", type=int, help="hosts (processes) the devices are spread over")
    pl.add_argument("--devices-per-host", type=int, help="with --hosts: --devices is the product")
    kinds = "cpu, h100, h200, v5e, v5p, v6e"
    pl.add_argument("--device-kind", help=f"{kinds} (default: this machine's)")
    pl.add_argument("--preset", help="the model's architecture, when its path does not tell")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    pl.add_argument("--json", action="store_true", help="print JSON instead of the table")
    pl.set_defaults(fn=_plan)

    i = sub.add_parser("info", help="architecture and parameter count of a model or preset")
    i.add_argument("model")
    i.set_defaults(fn=_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tpt_jax.errors import TptError

    if os.environ.get("TPT_MULTIHOST") == "1":  # set by launch/*.sh on every host of a slice
        from tpt_jax import distributed

        distributed.initialize()

    if args.fn not in (_plan, _info):  # commands that compile: reuse programs across runs
        from tpt_jax import compile_cache

        compile_cache.enable()
    try:
        args.fn(args)
    except (TptError, KeyError, OSError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"tpt: error: {msg}", file=sys.stderr)
        # A write that failed inside Orbax's async writers can leave a coroutine that Python
        # reports at exit ("never awaited"): noise after the one line that says what happened.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
