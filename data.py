"""The problems RL trains on: prompts with reference answers, from the built-in task or real data.

    load_problems("arithmetic")                    the built-in task (testbed.py), offline
    load_problems("gsm8k" | "math" | "dapo-math")  GSM8K, MATH, DAPO-Math-17k, through `datasets`
    load_problems("problems.jsonl", prompt_field="question", answer_field="solution")

Every source gives the same rows, {"prompt", "answer", "level"} (level: an integer difficulty or
None; curriculum.py uses it as a prior). A local .jsonl / .json / .parquet file is validated row
by row at the door: a missing field raises DataError naming the file, the line and the field.
`default_max_new_tokens` is the completion budget each source needs, `default_system_prompt` the
instruction it gets by default (train.py and eval_passk.py share both).

Copyable with reward.py (MATH's answers are its last \\boxed{}); `datasets` and `pandas` are
imported only when a hub set or a .parquet file is asked for.
"""
from __future__ import annotations

import json
import os

from reward import last_boxed


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
                  limit: int | None = None) -> list[dict]:
    """Problems as a list of {"prompt", "answer", "level"} dicts.

    `source` is "arithmetic" (built-in; `split` "test" gives the held-out seed), a name of
    HUB_DATASETS, or a local .jsonl / .json / .parquet file whose rows hold `prompt_field` and
    `answer_field` (and optionally `level_field`, an int). A missing or empty field raises
    DataError naming the file, the row (1-based line for .jsonl) and the field.
    """
    if source == "arithmetic":
        from testbed import arithmetic_problems  # the built-in task

        return arithmetic_problems(limit or 2000, seed=1234 if split == "test" else 0)
    if source in HUB_DATASETS:
        from datasets import load_dataset  # lazy: only real data needs it

        args, default_split, convert = HUB_DATASETS[source]
        rows = load_dataset(*args, split=split or default_split)
        problems = []
        for i, row in enumerate(rows):
            prompt, answer, level = convert(row)
            if not prompt or answer is None:
                raise DataError(f"{source}: row {i}: no prompt or no reference answer")
            problems.append({"prompt": prompt, "answer": answer, "level": level})
            if limit and len(problems) >= limit:
                break
        return problems
    if not os.path.exists(source):
        raise DataError(f"--dataset {source!r}: no such file, and not one of "
                        f"arithmetic, {', '.join(HUB_DATASETS)}")
    rows = _read_rows(source)
    problems = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{source}: {where}: expected a JSON object, got {type(row).__name__}")
        for field in (prompt_field, answer_field):
            if field not in row or row[field] is None or str(row[field]).strip() == "":
                raise DataError(f"{source}: {where}: missing field {field!r} (fields there: "
                                f"{sorted(row)}; set --prompt_field / --answer_field)")
        level = row.get(level_field) if level_field else None
        if level is not None and not isinstance(level, int):
            digits = str(level).replace("Level ", "").strip()
            if not digits.lstrip("-").isdigit():
                raise DataError(f"{source}: {where}: field {level_field!r} must be an integer "
                                f"level, got {level!r}")
            level = int(digits)
        problems.append({"prompt": str(row[prompt_field]), "answer": str(row[answer_field]),
                         "level": level})
        if limit and len(problems) >= limit:
            break
    if not problems:
        raise DataError(f"{source}: no rows")
    return problems


class DataError(ValueError):
    """A data file or data set is malformed; the message names the file, the row and the field."""


# name -> (datasets.load_dataset arguments, default split, how a row becomes prompt/answer/level)
def _gsm8k(row):
    return row["question"], row["answer"].split("####")[-1].strip(), None


def _math(row):
    level = str(row.get("level", "")).replace("Level ", "")
    return row["problem"], last_boxed(row["solution"]), int(level) if level.isdigit() else None


def _dapo(row):
    prompt = row["prompt"]
    if isinstance(prompt, list):  # chat format: the user's turn
        prompt = prompt[-1]["content"]
    return prompt, str(row["reward_model"]["ground_truth"]), None


HUB_DATASETS = {
    "gsm8k": (("openai/gsm8k", "main"), "train", _gsm8k),
    "math": (("DigitalLearningGmbH/MATH-lighteval",), "train", _math),
    "dapo-math": (("BytedTsinghua-SIA/DAPO-Math-17k",), "train", _dapo),
}


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
