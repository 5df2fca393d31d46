"""An example task plug-in: add up a short list of numbers.

    task:
      name: plugin
      plugin: ../examples/list_sum_task.py   # relative to the config file
      options: {train: 200, test: 50, length: 3, max: 20, seed: 0}

`problems` makes the splits from `options` (seeded, so every run sees the same problems); `verify`
reads the last number in a completion. The other keys of a row (here `numbers`) reach `verify`
unchanged, the way a code task's tests would.
"""

import random
import re

INSTRUCTION = (
    "Add up the numbers. Show your work, then write the total on its own last line in the form "
    "#### <number>."
)
_NUMBER = re.compile(r"-?\d+")


def problems(split, options):
    count = int(options.get(split, 50))
    rng = random.Random(f"{options.get('seed', 0)}/{split}")
    for i in range(count):
        numbers = [
            rng.randint(1, int(options.get("max", 20))) for _ in range(options.get("length", 3))
        ]
        yield {
            "id": f"{split}/{i}",
            "question": "What is " + " + ".join(map(str, numbers)) + "?",
            "answer": sum(numbers),
            "solution": " + ".join(map(str, numbers)) + f" = {sum(numbers)}\n#### {sum(numbers)}",
            "numbers": numbers,
        }


def verify(text, problem):
    found = _NUMBER.findall(text.replace(",", ""))
    if not found:
        return {"correct": False, "reason": "no_answer"}
    return int(found[-1]) == sum(problem["numbers"])
