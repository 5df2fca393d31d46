"""How hard is each level of the generated arithmetic task for a model? (Pass@1 per level.)

For each level, K test-split problems from `tasks.arithmetic.generate_problems` are put to the
model zero-shot as one chat turn (`tasks.chat_messages`: the instruction, then the question),
once greedily and `--n` times at `--temperature` (default 0.8, n 4, seed 0). Each output is
graded with `tpt_jax.grading` in the `strict` (the paper's) and `normalized` modes; an output with
no `#### <number>` under strict extraction is a format failure.

    PYTHONPATH=. python bench/task_levels.py                       # smollm2, K 40, levels 1-5
    PYTHONPATH=. python bench/task_levels.py --k 30 --sample-levels 1,2,3
    PYTHONPATH=. python bench/task_levels.py --variants --variant-levels 1,2   # + other wordings
    PYTHONPATH=. python bench/task_levels.py --max-value 12 --shots 3          # easier, few-shot
    PYTHONPATH=. python bench/task_levels.py --max-value 12 --shots 1 --shot-turns  # the demo's

Per level it prints greedy pass (strict / normalized), sampled Pass@1 (strict / normalized /
lenient, mean over the n samples of every problem), pass@n (strict: the share of problems with a
correct sample among n, what a TPT round can keep), the format-failure rate, mean output tokens
and the fraction cut at --max-new-tokens, and writes everything (with a few example outputs) to
`--out` (default bench/results/task_levels.json). `--variants` also runs the other candidate
instructions in VARIANTS on `--variant-levels` (greedy and sampled), to choose INSTRUCTION.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax

import tpt_jax
from tpt_jax import grading, tasks
from tpt_jax.tasks.arithmetic import generate_problems

# Candidate wordings of the zero-shot instruction (the first is tasks.INSTRUCTION).
VARIANTS = {
    "default": tasks.INSTRUCTION,
    "short": (
        "Solve this math problem step by step. Show each calculation. "
        "End with a line '#### <number>' giving the final answer."
    ),
    "example": (
        "You are an expert mathematician. Solve the problem step by step, writing each "
        "calculation like 3 * 12 = 36. On the last line write #### followed by the final "
        "answer as a number, for example:\n#### 36"
    ),
    "question_first": (
        "{question}\n\nAs an expert mathematician, solve this step by step and show each "
        "calculation. Put the final answer, just the number, on the last line as #### <number>."
    ),
}


def user_turn(instruction: str, question: str, shots: list = ()) -> str:
    """The instruction, a blank line and the question (or the instruction's {question} slot).
    With shots: the instruction, then "Question: ...\nAnswer: ..." per shot and the question
    (tasks.plain_prompt's layout, inside the one user turn)."""
    if "{question}" in instruction:
        block = tasks.plain_prompt(question, shots)[len(tasks.INSTRUCTION) + 2 :]
        return instruction.replace("{question}", block if shots else question)
    if shots:
        return instruction + tasks.plain_prompt(question, shots)[len(tasks.INSTRUCTION) :]
    return f"{instruction}\n\n{question}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="model path or shipped name")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--k", type=int, default=40, help="problems per level")
    p.add_argument("--levels", default="1,2,3,4,5")
    p.add_argument("--sample-levels", default=None, help="levels for the sampled part (all)")
    p.add_argument("--seed", type=int, default=0, help="problem seed (sampling seed is 0)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--batch", type=int, default=20, help="prompts per generate call")
    p.add_argument("--variants", action="store_true", help="also try the VARIANTS instructions")
    p.add_argument("--variant-levels", default="1,2")
    p.add_argument("--examples", type=int, default=3, help="example outputs kept per level")
    p.add_argument("--max-value", type=int, default=999, help="largest number in a problem")
    p.add_argument(
        "--shots", type=int, default=0, help="solved train problems of the same level shown first"
    )
    p.add_argument(
        "--shot-turns",
        action="store_true",
        help="shots as earlier chat turns (tasks.chat_messages), as `task.few_shot` runs them",
    )
    p.add_argument("--out", default="bench/results/task_levels.json")
    return p.parse_args(argv)


def levels_of(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def generate(
    handle, problems, instruction: str, batch: int, shots=(), turns=False, **kw
) -> list[list]:
    out = []
    for i in range(0, len(problems), batch):
        chats = [
            tasks.chat_messages(p.question, shots)
            if turns
            else [{"role": "user", "content": user_turn(instruction, p.question, shots)}]
            for p in problems[i : i + batch]
        ]
        out += handle.generate(chats, **kw)
    return out


def n_tokens(sample) -> int:
    return len(sample.tokens) - (1 if sample.finish_reason == "stop" else 0)


def grade(problems, outputs) -> dict:
    """Pass rates over all (problem, sample) pairs: the mean of per-problem means."""
    per_problem = {k: [] for k in ("strict", "normalized", "lenient", "format_fail", "tokens")}
    per_problem["cut"] = []
    counts = []
    for p, samples in zip(problems, outputs, strict=True):
        m = len(samples)
        for mode in grading.MODES:
            right = sum(grading.is_correct(s.text, p.answer, mode) for s in samples)
            per_problem[mode].append(right / m)
            if mode == "strict":
                counts.append((m, right))
        per_problem["format_fail"].append(
            sum(grading.extract_answer(s.text, "strict") is None for s in samples) / m
        )
        per_problem["tokens"].append(sum(n_tokens(s) for s in samples) / m)
        per_problem["cut"].append(sum(s.finish_reason == "length" for s in samples) / m)
    result = {k: sum(v) / len(v) for k, v in per_problem.items()}
    result[f"pass@{len(outputs[0])}"] = grading.mean_pass_at_k(counts, len(outputs[0]))
    return result


def run_level(handle, args, level: int, instruction: str, sampled: bool) -> dict:
    problems = generate_problems("test", args.k, [level], args.seed, max_value=args.max_value)
    shots = generate_problems("train", args.shots, [level], 123, max_value=args.max_value)
    t0 = time.perf_counter()
    greedy = generate(
        handle, problems, instruction, args.batch, shots, args.shot_turns,
        max_new_tokens=args.max_new_tokens, temperature=0.0,
    )  # fmt: skip
    row = {"level": level, "k": len(problems), "greedy": grade(problems, greedy)}
    row["greedy_s"] = round(time.perf_counter() - t0, 1)
    if sampled:
        t0 = time.perf_counter()
        samples = generate(
            handle, problems, instruction, max(1, args.batch // args.n), shots, args.shot_turns,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, n=args.n, seed=0,
        )  # fmt: skip
        row["sampled"] = grade(problems, samples)
        row["sampled_s"] = round(time.perf_counter() - t0, 1)
    row["examples"] = [
        {
            "id": p.id,
            "question": p.question,
            "answer": p.answer,
            "greedy": out[0].text,
            "finish_reason": out[0].finish_reason,
            "extracted": grading.extract_answer(out[0].text, "strict"),
        }
        for p, out in list(zip(problems, greedy, strict=True))[: args.examples]
    ]
    return row


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def table(rows: list[dict], max_new: int) -> str:
    head = [
        "level", "K", "greedy strict", "greedy norm", "Pass@1 strict", "Pass@1 norm",
        "Pass@1 lenient", "pass@n strict", "format fail (greedy / sampled)", "mean tokens",
        f"cut at {max_new}",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        g, s = r["greedy"], r.get("sampled")
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["level"]),
                    str(r["k"]),
                    pct(g["strict"]),
                    pct(g["normalized"]),
                    pct(s and s["strict"]),
                    pct(s and s["normalized"]),
                    pct(s and s["lenient"]),
                    pct(s and next(v for k, v in s.items() if k.startswith("pass@"))),
                    f"{pct(g['format_fail'])} / {pct(s and s['format_fail'])}",
                    f"{g['tokens']:.0f}" + (f" / {s['tokens']:.0f}" if s else ""),
                    pct(g["cut"]) + (f" / {pct(s['cut'])}" if s else ""),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    levels = levels_of(args.levels)
    sample_levels = levels if args.sample_levels is None else levels_of(args.sample_levels)
    t0 = time.perf_counter()
    handle = tpt_jax.load(args.model, dtype=args.dtype)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s on {jax.devices()}", flush=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/task_levels.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "dtype": args.dtype,
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "jax": jax.__version__,
        "instruction": tasks.INSTRUCTION,
        "settings": {
            "k": args.k,
            "seed": args.seed,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "n": args.n,
            "top_p": 1.0,
            "max_value": args.max_value,
            "shots": args.shots,
            "shot_turns": args.shot_turns,
        },
        "levels": [],
        "variants": {},
    }
    for level in levels:
        row = run_level(handle, args, level, tasks.INSTRUCTION, level in sample_levels)
        result["levels"].append(row)
        print(table([row], args.max_new_tokens).split("\n")[-1], flush=True)
    if args.variants:
        for name, instruction in VARIANTS.items():
            if instruction == tasks.INSTRUCTION:
                continue
            rows = [
                run_level(handle, args, lv, instruction, True)
                for lv in levels_of(args.variant_levels)
            ]
            result["variants"][name] = {"instruction": instruction, "levels": rows}
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"\nINSTRUCTION (default):\n{table(result['levels'], args.max_new_tokens)}")
    for name, v in result["variants"].items():
        print(f"\n{name}: {v['instruction']!r}\n{table(v['levels'], args.max_new_tokens)}")
    print(f"\ntotal {result['total_s']}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
