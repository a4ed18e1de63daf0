"""The problems RL trains on: prompts with reference answers, from the built-in task or real data.

    load_problems("arithmetic")                    the built-in task (testbed.py), offline
    load_problems("gsm8k" | "math" | "dapo-math")  GSM8K, MATH, DAPO-Math-17k, through `datasets`
    load_problems("problems.jsonl", prompt_field="question", answer_field="solution")

Every source gives the same rows, {"prompt", "answer", "level"} (level: an integer difficulty or
None; curriculum.py uses it as a prior). Rows are validated at the door: a missing, empty or null
prompt or answer raises DataError naming the file or set, the row and the field. A prompt that
comes again is dropped. A held-out set of N problems is a seeded random sample (HELD_OUT_SEED),
the same for every run. `default_max_new_tokens` is the completion budget each source needs,
`default_system_prompt` the instruction it gets by default (train.py and eval_passk.py share both).

Copyable with reward.py (MATH's answers are its \\boxed{} ones); `datasets` and `pandas` are
imported only when a hub set or a .parquet file is asked for.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import random

from reward import all_boxed


def default_max_new_tokens(source: str) -> int:
    """Completion budget in tokens: the built-in task's answers are short; real problems need room
    to reason.

    >>> default_max_new_tokens("arithmetic"), default_max_new_tokens("gsm8k")
    (4, 1024)
    """
    if source == "arithmetic":
        from testbed import MAX_NEW_TOKENS

        return MAX_NEW_TOKENS
    return 1024


def default_system_prompt(source: str) -> str | None:
    """The instruction put before each problem when --system_prompt is not given, the same for
    training and evaluation: ask for \\boxed{} on real data (what the verifier reads first); nothing
    on the built-in task (a plain number) and on DAPO-Math (its prompts carry their own).

    >>> default_system_prompt("arithmetic"), "boxed" in default_system_prompt("problems.jsonl")
    (None, True)
    """
    if source in ("arithmetic", "dapo-math"):
        return None
    return "Please reason step by step, and put your final answer within \\boxed{}."


def load_problems(source: str, split: str | None = None, prompt_field: str = "prompt",
                  answer_field: str = "answer", level_field: str | None = "level",
                  limit: int | None = None, sample_seed: int | None = None) -> list[dict]:
    """Problems as a list of {"prompt", "answer", "level"} dicts.

    `source` is "arithmetic" (built-in; `split` "test" gives its held-out part), a name of
    HUB_DATASETS, or a local .jsonl / .json / .parquet file whose rows hold `prompt_field` and
    `answer_field` (and optionally `level_field`, an integer). A missing, empty or null field
    raises DataError naming the file, the row (1-based line for .jsonl) and the field.

    A hub set or file is read whole, and a prompt that comes again is dropped (its first row
    stays): DAPO-Math-17k's hub copy holds each of its ~17.9k prompts about 100 times. `limit`
    keeps that many problems: with `sample_seed`, a seeded random sample (those first in one
    seeded shuffle, so a smaller sample is part of a larger one), in the rows' order, for held-out
    sets whose rows are ordered (by subject, by level); without, the first `limit`.
    """
    if source == "arithmetic":
        from testbed import arithmetic_problems  # the built-in task

        held_out = split == "test"  # its own part of the task, never trained on (is_held_out)
        return arithmetic_problems(limit or 2000, seed=1234 if held_out else 0,
                                   split="test" if held_out else "train")
    if source in HUB_DATASETS:
        from datasets import load_dataset  # lazy: only real data needs it

        args, default_split, convert, (prompt_name, answer_name) = HUB_DATASETS[source]
        rows = load_dataset(*args, split=split or default_split)
        problems = []
        for i, row in enumerate(_hub_rows(rows)):
            prompt, answer, level = convert(row)
            for name, value in ((prompt_name, prompt), (answer_name, answer)):
                if _missing(value):
                    raise DataError(f"{source}: row {i}: no {name} (empty or null)")
            problems.append({"prompt": str(prompt), "answer": str(answer), "level": level})
        return _take(_unique_prompts(problems), limit, sample_seed)
    if not os.path.exists(source):
        raise DataError(f"--dataset {source!r}: no such file, and not one of "
                        f"arithmetic, {', '.join(HUB_DATASETS)}")
    problems = []
    for where, row in _read_rows(source):
        if not isinstance(row, dict):
            raise DataError(f"{source}: {where}: expected a JSON object, got {type(row).__name__}")
        for field in (prompt_field, answer_field):
            if field not in row or _missing(row[field]):
                state = "missing field" if field not in row else "empty or null field"
                raise DataError(f"{source}: {where}: {state} {field!r} (fields there: "
                                f"{sorted(row)}; set --prompt_field / --answer_field)")
        level = _level(row.get(level_field) if level_field else None,
                       f"{source}: {where}: field {level_field!r}")
        problems.append({"prompt": str(row[prompt_field]), "answer": str(row[answer_field]),
                         "level": level})
    if not problems:
        raise DataError(f"{source}: no rows")
    return _take(_unique_prompts(problems), limit, sample_seed)


HELD_OUT_SEED = 0  # the seed of every held-out sample (train.py, eval_passk.py): one set for all runs


class DataError(ValueError):
    """A data file or data set is malformed; the message names the file, the row and the field."""


# name -> (datasets.load_dataset arguments, default split, how a row becomes prompt/answer/level,
#          the names of its prompt and answer for error messages)
def _gsm8k(row):
    answer = row["answer"]
    return row["question"], answer.split("####")[-1].strip() if isinstance(answer, str) else None, None


def _math(row):
    """Every \\boxed{} of the solution, once each: "3, 5" when it boxes 3 and 5 (reward.py then
    takes them as a list in any order)."""
    boxes = dict.fromkeys(box.strip() for box in all_boxed(row["solution"] or ""))
    level = str(row.get("level", "")).replace("Level ", "")
    return (row["problem"], ", ".join(box for box in boxes if box) or None,
            int(level) if level.isdigit() else None)


def _dapo(row):
    prompt = row["prompt"]
    if isinstance(prompt, list):  # chat format: the user's turn
        prompt = prompt[-1]["content"]
    return prompt, row["reward_model"]["ground_truth"], None


HUB_DATASETS = {
    "gsm8k": (("openai/gsm8k", "main"), "train", _gsm8k, ("question", "answer after '####'")),
    "math": (("DigitalLearningGmbH/MATH-lighteval",), "train", _math,
             ("problem", "\\boxed{} answer in 'solution'")),
    "dapo-math": (("BytedTsinghua-SIA/DAPO-Math-17k",), "train", _dapo,
                  ("prompt", "reward_model.ground_truth")),
}


def _missing(value) -> bool:
    """None, NaN (a null of a numeric column in pandas), pandas' NA, or blank text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, str) and value.strip() == ""


def _level(value, where: str) -> int | None:
    """An integer level from 3, 3.0 (an integer column with nulls, read by pandas), "3" or
    "Level 3"; None when null."""
    if _missing(value):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    digits = str(value).replace("Level ", "").strip()
    if not digits.lstrip("-").isdigit():
        raise DataError(f"{where} must be an integer level, got {value!r}")
    return int(digits)


def _unique_prompts(problems: list[dict]) -> list[dict]:
    """The first problem of each prompt, in order."""
    first = {}
    for problem in problems:
        first.setdefault(problem["prompt"], problem)
    return list(first.values())


def _take(problems: list[dict], limit: int | None, sample_seed: int | None) -> list[dict]:
    """The first `limit` problems, or with `sample_seed` the `limit` that come first in a seeded
    shuffle, kept in their own order; all of them, in order, when `limit` is None or too large."""
    if not limit or limit >= len(problems):
        return problems
    if sample_seed is None:
        return problems[:limit]
    order = list(range(len(problems)))
    random.Random(sample_seed).shuffle(order)
    return [problems[i] for i in sorted(order[:limit])]


def _hub_rows(rows):
    """The rows of a `datasets.Dataset` as dicts, read 10,000 at a time (row by row takes several
    times as long: tens of seconds on DAPO-Math-17k's 1.79M rows)."""
    for batch in rows.iter(batch_size=10_000):
        for values in zip(*batch.values()):
            yield dict(zip(batch, values))


def _read_rows(path: str) -> list[tuple[str, object]]:
    """(where, row) pairs of a local file; `where` is "line N" or "row N" for error messages."""
    if path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((f"line {number}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {number}: not valid JSON ({e.msg})") from None
        return rows
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        return [(f"row {i}", row) for i, row in enumerate(data, 1)]
    if path.endswith(".parquet"):
        import pandas as pd  # lazy: parquet needs pandas + pyarrow (both come with `datasets`)

        return [(f"row {i}", row) for i, row in enumerate(pd.read_parquet(path).to_dict("records"), 1)]
    raise DataError(f"{path}: unknown file type; use .jsonl, .json or .parquet")
