"""Verifiable rewards: did the completion reach the reference answer?

RL with verifiable rewards (RLVR, as in DeepSeek-R1, DAPO and the Entropy Scheduling paper) scores a
completion with a rule, not a learned reward model:

    R(completion, answer) = 1  if extract_answer(completion) equals answer mathematically, else 0.

This file holds that rule and the tasks it scores:
  * `extract_answer`: the last \\boxed{...}, else GSM8K's "#### 42", else "... answer is 42" or
    "Answer: 42", else a completion that is just a number (the built-in task answers that way).
  * `math_reward`: equality that is mathematical, not textual: 1,000 = 1000, $18 = 18,
    0.5 = 1/2 = \\frac{1}{2} = \\dfrac12, 50\\% = 50, -3 = - 3, trailing "." and unit words dropped.
  * `overlong_penalty`: DAPO's soft length penalty (Yu et al. 2025, Eq. 13).
  * `arithmetic_problems`: the built-in offline task of the embedded default: sums of single digits,
    "3+5+2=" -> "10", whose level is the number of "+" signs.
  * `load_problems`: GSM8K, MATH, DAPO-Math-17k (through `datasets`, imported lazily) or a local
    .jsonl / .json / .parquet file, validated row by row.

Model output is adversarial: the verifier never raises and never hangs. Inputs are cut to their last
`MAX_CHARS` characters, the brace matcher is a linear scan (no recursion, no backtracking regex), and a
number longer than `MAX_NUMBER_CHARS` is never converted. tests/test_reward.py pins the time bound.

Left out: learned reward models and LLM judges (RLVR's point is a rule that cannot be gamed by
style), code-execution rewards, and symbolic algebra by default (sympy-level equivalence is what
`math_verify` adds when installed; our rule covers the numeric forms math data sets use).

Copyable alone: standard library only (`datasets` / `pandas` only inside `load_problems`, and
`math_verify` only when asked for and installed).
"""
from __future__ import annotations

import json
import os
import random
import re
from fractions import Fraction

MAX_CHARS = 10_000  # only the tail of a completion can hold its final answer
MAX_NUMBER_CHARS = 64  # no reference answer is longer; longer "numbers" are junk


# ----------------------------------------------------------------------------- extraction
def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces handled, else None.

    >>> last_boxed(r"so \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if boxed < 0 and fbox < 0:
        return None
    i = boxed + len("\\boxed") if boxed > fbox else fbox + len("\\fbox")
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":  # "\boxed 5": the answer is the next token
        token = text[i:].split("$")[0].split()
        return token[0] if token else None
    depth = 0
    for j in range(i, len(text)):  # linear scan: no recursion on 10k nested braces
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced


def extract_answer(text: str) -> str | None:
    """The final answer a completion states, or None when it states none.

    Order: the last \\boxed{...}; else the last "#### ..." line (GSM8K); else what follows the last
    "answer is" or "Answer:" (DAPO-Math) on its line; else the whole completion when it is a plain
    number.

    >>> extract_answer("6 * 7 = 42. #### 42")
    '42'
    """
    if not isinstance(text, str) or not text:
        return None
    text = text[-MAX_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    hashes = text.rfind("####")
    if hashes >= 0:
        return text[hashes + 4 :].strip().split("\n")[0].strip() or None
    lower = text.lower()
    said = max((lower.rfind(cue), cue) for cue in ("answer is", "answer:"))  # DAPO: "Answer: 42"
    if said[0] >= 0:
        answer = text[said[0] + len(said[1]) :].split("\n")[0].strip(" :*$")
        return answer or None
    stripped = text.strip()
    if stripped and to_number(normalize(stripped)) is not None:
        return stripped
    return None


# ----------------------------------------------------------------------------- equivalence
_FRAC = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")  # \frac12
_TEXT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_UNIT_SUFFIX = re.compile(r"(-?[\d./]*\d)\s*[a-zA-Z][a-zA-Z ]*")
_VARIABLE = re.compile(r"[a-zA-Z]\w{0,3}\s*=")  # "x=5"
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def normalize(answer: str) -> str:
    """Canonical text of an answer: LaTeX spacing, $, %, degrees, units, "x=", commas and
    trailing "." removed; \\dfrac, \\tfrac and \\frac{a}{b} written as a/b.

    >>> normalize(r"\\$1,000.")
    '1000'
    """
    s = answer.strip()[:MAX_CHARS]
    for old in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "$", "\\%", "%",
                "^{\\circ}", "^\\circ", "°", "\\dfrac", "\\tfrac", "\\displaystyle"):
        s = s.replace(old, "\\frac" if old in ("\\dfrac", "\\tfrac") else "")
    s = _TEXT.sub(r"\1", s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    for _ in range(8):  # nested fractions, innermost first; bounded
        new = _FRAC.sub(r"(\1)/(\2)", s)
        if new == s:
            break
        s = new
    s = s.strip().rstrip(".").strip()
    if _VARIABLE.match(s):
        s = s[s.index("=") + 1 :]
    unit = _UNIT_SUFFIX.fullmatch(s.strip())
    if unit:  # "18 dollars", "5 cm"
        s = unit.group(1)
    s = s.replace(" ", "")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = s.lstrip("+")
    if s.startswith("(") and s.endswith(")") and s.count("(") == 1:
        s = s[1:-1]
    return s


def to_number(s: str) -> Fraction | None:
    """Exact value of an integer, decimal or a/b fraction (as written by `normalize`), else None."""
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    parts = s.split("/")
    if len(parts) > 2:
        return None
    values = []
    for part in parts:
        sign = -1 if part.startswith("-") else 1
        part = part.lstrip("-")
        if part.startswith("(") and part.endswith(")"):
            part = part[1:-1]
        if not _NUMBER.fullmatch(part):
            return None
        values.append(sign * Fraction(part))
    if len(values) == 2:
        return None if values[1] == 0 else values[0] / values[1]
    return values[0]


def answers_match(predicted: str, reference: str) -> bool:
    """True when two answers are the same number, or the same text once normalised."""
    a, b = normalize(predicted), normalize(reference)
    if a == b:
        return bool(a)
    x, y = to_number(a), to_number(b)
    return x is not None and y is not None and x == y


def math_reward(completion: str, answer: str, use_math_verify: bool = False) -> float:
    """1.0 when the completion's final answer equals `answer`, else 0.0. Never raises.

    `use_math_verify=True` asks the optional `math_verify` package (when installed) for a second
    opinion on answers our rule calls different (symbolic forms such as sqrt(2)/2 = 1/sqrt(2)).

    >>> math_reward(r"... so the total is \\boxed{\\dfrac12}", "0.5")
    1.0
    """
    try:
        predicted = extract_answer(completion)
        if predicted is None:
            return 0.0
        if answers_match(predicted, str(answer)):
            return 1.0
        if use_math_verify:
            try:
                from math_verify import parse, verify  # optional dependency
            except ImportError:
                return 0.0
            return float(verify(parse(f"${answer}$"), parse(f"${predicted}$")))
        return 0.0
    except Exception:  # noqa: BLE001 - model output must never crash training
        return 0.0


def format_reward(completion: str) -> float:
    """1.0 when the completion states a final answer in a form `extract_answer` finds, else 0.0."""
    try:
        return float(extract_answer(completion) is not None)
    except Exception:  # noqa: BLE001
        return 0.0


def overlong_penalty(length: int, max_length: int, buffer: int, penalty: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), added to the reward:

        R_length(L) = min(-(L - (L_max - L_buf)) / L_buf * penalty, 0)

    0 up to L_max - L_buf tokens, then a linear ramp down to -penalty at L_max.

    >>> overlong_penalty(90, max_length=100, buffer=20)
    -0.5
    """
    if buffer <= 0:
        return 0.0
    return min(-(length - (max_length - buffer)) / buffer * penalty, 0.0)


# ----------------------------------------------------------------------------- the built-in task
def arithmetic_problems(n: int, seed: int, levels: tuple[int, ...] = (1, 2, 3, 4)) -> list[dict]:
    """The embedded default's task: sums of single digits; level L has L + 1 terms.

    Deterministic in `seed`; use different seeds for training and held-out sets (level 1 has only
    100 distinct prompts, so the two can share some: the task tests a skill, not recall).

    >>> arithmetic_problems(1, seed=0, levels=(2,))
    [{'prompt': '6+0+4=', 'answer': '10', 'level': 2}]
    """
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        level = rng.choice(levels)
        terms = [rng.randrange(10) for _ in range(level + 1)]
        problems.append({"prompt": "+".join(map(str, terms)) + "=", "answer": str(sum(terms)),
                         "level": level})
    return problems


# ----------------------------------------------------------------------------- real data sets
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


class DataError(ValueError):
    """A data file or data set is malformed; the message names the file, the row and the field."""


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
