"""Verifiable rewards: did the completion reach the reference answer?

    R(completion, answer) = 1  if extract_answer(completion) equals answer mathematically, else 0

RL with verifiable rewards (DeepSeek-R1, DAPO, the Entropy Scheduling paper) scores a completion
with a rule, not a learned reward model. The rule is what RL optimises, so a false positive is a
reward hack the policy will find: this file is long because its parser is hardened against wrong
answers that look right, and every branch is pinned by the adversarial tables of
tests/test_reward_tables.py. Read the public API (first ~130 lines); skip the parser below its
banner unless you are changing what counts as equal.

The public API:
  * `math_reward(completion, answer)`: 1.0 / 0.0. Several boxed answers count together only when
    the reference lists that many values without order (\\boxed{3} and \\boxed{5} for "3, 5").
  * `make_verifier(name)`: the reward function `--verifier` names: the built-in rule, or the rule
    with the optional `math_verify` package (HuggingFace) deciding what the rule cannot (symbolic
    forms: \\sqrt{8} = 2\\sqrt{2}). The rule's "different" is final, so math-verify only adds
    correct positives: alone it would accept "3 \\text{ or more}" for 3, 1011 for 1011_2,
    \\ge 6 for 6, x^2 = 25 for 25 and 7 \\lor 8 for 8.
  * `overlong_penalty`: DAPO's soft length penalty (Yu et al. 2025, Eq. 13).
  * `extract_answer`: the last \\boxed{...}, else GSM8K's "#### 42", else "... answer is 42" or
    "Answer: 42", else a completion that is just a number (the built-in task answers that way);
    as chat models write them too: "The answer is **7**.", "**Answer:**" or "### Final Answer"
    with the answer on the next line, $\\$1,000$ and \\(...\\).
  * `answers_match`: equality that is mathematical, not textual:
      - numbers: 1,000 = 1{,}000 = 1\\,000 = 1000; $18 = 18 dollars = 18; 50\\% = 50;
        0.5 = 1/2 = \\frac{1}{2} = \\dfrac12 = \\left( \\frac12 \\right); -3 = - 3; 2 million = 2000000;
        x = 5 is 5 (but \\pi = 3 and x^2 = 25 name no variable); a trailing "." and unit words
        (`UNITS`) are dropped, and so is a \\text{} word naming what is counted: 12 \\text{ cats};
      - a decimal with at least 6 significant digits equals a fraction with no finite decimal
        expansion within one unit of its last digit: 0.0833333 = 1/12, 0.08 != 1/12;
      - tuples and intervals element by element, brackets kept: (1,\\frac92) = (1,4.5), [1,2) != (1,2);
        sets \\{1,2\\} and bare lists "3, 5" in any order; unions of intervals;
      - other LaTeX as text once normalised: \\sqrt3 = \\sqrt{3}, \\frac{\\pi}{2} = \\pi/2.
    A relation, connective or arrow is not a value: \\ge 6, \\neq 6, 2+1=4, 7 \\lor 8, 7 \\to 8 are
    not 6, 4 or 8. A word glued to a number that is not a unit (2x, 5i, 3n, 4k, "3 or more") voids
    it; a comma is a thousands separator only in the pattern 1-3 digits then groups of 3, with no
    space and no leading 0, and only in a lone number (inside brackets a comma always separates
    elements).

Model output is adversarial: the verifier never raises and never hangs. Inputs are cut to their last
`MAX_CHARS` characters, brackets are matched by linear scans (no backtracking regex; recursion only
into tuples and sets, at most `MAX_DEPTH` deep), a number longer than `MAX_NUMBER_CHARS` is never
converted, and a tuple, set or list holds at most `MAX_ELEMENTS`. tests/test_reward.py pins the
time bound.

Left out: learned reward models and LLM judges (RLVR's point is a rule that cannot be gamed by
style), code-execution rewards, symbolic algebra in the built-in rule (math-verify's job), decimals
standing for irrationals (0.866025 is not \\frac{\\sqrt3}{2}), 50\\% = 0.5 (a percentage is its
number, as GSM8K writes it), bare letters as units (5m is 5 times m; 5\\text{ m} is 5), matrices.

Copyable alone: standard library only (`math_verify` only inside `make_verifier`, when installed).
"""
from __future__ import annotations

import functools
import math
import re
import threading
from fractions import Fraction
from typing import Callable

MAX_CHARS = 10_000  # only the tail of a completion can hold its final answer
MAX_NUMBER_CHARS = 64  # no reference answer is longer; longer "numbers" are junk
MAX_ELEMENTS = 32  # elements of one tuple, set or list; more is junk, compared as text
MAX_DEPTH = 4  # nesting of tuples / sets; deeper parts are compared as text
MAX_MATH_VERIFY_CHARS = 1_000  # longer answers are not sent to math-verify (its parser is slow)


# ============================================================================ the public API

def math_reward(completion: str, answer: str, use_math_verify: bool = False,
                timeout_s: float = 5.0) -> float:
    """1.0 when the completion's final answer equals `answer`, else 0.0. Never raises.

    `use_math_verify=True` asks the optional `math_verify` package (when installed) about answers the
    built-in rule cannot decide (symbolic forms: \\sqrt{8} = 2\\sqrt{2}); the rule's own "equal" and
    "different" are final. `timeout_s` bounds each of math-verify's steps (see `make_verifier`).

    >>> math_reward(r"... so the total is \\boxed{\\dfrac12}", "0.5")
    1.0
    """
    try:
        reference = str(answer)
        candidates = _candidates(completion, reference)
        verdicts = [_verdict(candidate, reference) for candidate in candidates]
        if True in verdicts:
            return 1.0
        if use_math_verify and verdicts and verdicts[0] is None:
            return float(_math_verify_equal(candidates[0], reference, timeout_s))
        return 0.0
    except Exception:  # noqa: BLE001 - model output must never crash training
        return 0.0

VERIFIERS = ("builtin", "math-verify", "auto")


def make_verifier(name: str = "auto", timeout_s: float = 5.0) -> tuple[Callable[[str, str], float], str]:
    """The reward function `--verifier` names, and a one-line description to log.

        builtin      the rule of this file alone (standard library).
        math-verify  the rule first; what it cannot decide (symbolic forms), HuggingFace's
                     math-verify decides, each parse / comparison limited to timeout_s.
                     ValueError when math-verify is not installed.
        auto         math-verify when it is installed, else builtin.

    The rule's "different" is final: math-verify only adds positives the rule cannot see, and cannot
    accept what the rule rejects (math-verify alone says "3 \\text{ or more}" = 3 and 1011 = 1011_2).
    math-verify's timeouts use SIGALRM: whole seconds (timeout_s is rounded up), main thread only
    (from another thread it is not asked, and the undecided answer scores 0).

    >>> reward_fn, description = make_verifier("builtin")
    >>> reward_fn(r"\\boxed{\\frac{1}{2}}", "0.5"), description
    (1.0, 'built-in rule')
    """
    if name not in VERIFIERS:
        raise ValueError(f"--verifier {name!r}: choose one of {', '.join(VERIFIERS)}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"verifier timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    if name == "builtin":
        return math_reward, "built-in rule"
    version = _math_verify_version()
    if version is None:
        if name == "math-verify":
            raise ValueError("--verifier math-verify: the math-verify package is not installed; "
                             "fix: pip install math-verify (or pass --verifier builtin)")
        return math_reward, "built-in rule (math-verify not installed)"
    seconds = _whole_seconds(timeout_s)
    reward_fn = functools.partial(math_reward, use_math_verify=True, timeout_s=seconds)
    return reward_fn, f"math-verify {version} (timeout {seconds} s), built-in rule first"

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

def format_reward(completion: str) -> float:
    """1.0 when the completion states a final answer in a form `extract_answer` finds, else 0.0."""
    try:
        return float(extract_answer(completion) is not None)
    except Exception:  # noqa: BLE001
        return 0.0

def extract_answer(text: str) -> str | None:
    """The final answer a completion states, or None when it states none.

    Order: the last \\boxed{...}; else what follows the last "####" (GSM8K; a Markdown heading
    "#### Final Answer" is not one); else what follows the last "answer is", "Answer:" (DAPO-Math)
    or a line that is only a heading "Final Answer": the rest of its line, or the next line with
    text when the cue ends its line, up to the end of its $...$ or \\(...\\) or of its sentence,
    Markdown emphasis dropped; else the whole completion when it is a plain number.

    >>> extract_answer("6 * 7 = 42. #### 42")
    '42'
    >>> extract_answer("The final answer is $\\\\frac{1}{2}$. I hope it is correct.")
    '\\\\frac{1}{2}'
    >>> extract_answer("### Final Answer\\n\\n**7**")
    '7'
    """
    if not isinstance(text, str) or not text:
        return None
    text = text[-MAX_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    marks = [mark.end() for mark in _GSM8K.finditer(text)]
    if marks:
        return _stated_after(text, marks[-1])
    cues = [cue.end() for pattern in (_SAID, _ANSWER_HEADING) for cue in pattern.finditer(text)]
    if cues:
        return _stated_after(text, max(cues))
    stripped = text.strip()
    if stripped and to_number(normalize(stripped)) is not None:
        return stripped
    return None

def answers_match(predicted: str, reference: str) -> bool:
    """True when the built-in rule finds two answers equal (see the module docstring).

    >>> answers_match(r"\\left( 1, \\frac{9}{2} \\right)", "(1, 4.5)"), answers_match("2x", "2")
    (True, False)
    """
    return _verdict(predicted, reference) is True


# ============================================================================ the hardened parser
# Everything below serves `extract_answer` and `answers_match`, and is pinned by the adversarial
# tables of tests/test_reward_tables.py: change a line only with a test that shows why.
# ----------------------------------------------------------------------------- extraction
def _box_at(text: str, start: int) -> tuple[str | None, int]:
    """(content, end) of the \\boxed{...} or \\fbox{...} starting at `start`; content None if unbalanced."""
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":  # "\boxed 5": the answer is the next token
        token = text[i:].split("$")[0].split()
        return (token[0] if token else None), i + 1
    depth = 0
    for j in range(i, len(text)):  # linear scan: no recursion on 10k nested braces
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
    return None, len(text)  # unbalanced


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces handled, else None.

    >>> last_boxed(r"so \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    return None if start < 0 else _box_at(text, start)[0]


def all_boxed(text: str) -> list[str]:
    """Contents of every balanced \\boxed{...} / \\fbox{...}, in order.

    >>> all_boxed(r"x = \\boxed{3} or x = \\boxed{-5}")
    ['3', '-5']
    """
    found, i = [], 0
    while True:
        starts = [j for j in (text.find("\\boxed", i), text.find("\\fbox", i)) if j >= 0]
        if not starts:
            return found
        content, i = _box_at(text, min(starts))
        if content is None:
            return found
        found.append(content)


_GSM8K = re.compile(r"(?<!#)####(?!#)(?![ \t]*[a-zA-Z])")  # "#### 42"; not "#### Final Answer"
_SAID = re.compile(r"answer(?:\*\*|__)?[ \t]*(?:is\b[ \t]*:?|:)", re.IGNORECASE)  # "**Answer:**"
_ANSWER_HEADING = re.compile(r"^[ \t#*_]*(?:final[ \t]+)?answer[ \t*_:]*$",  # "### Final Answer"
                             re.IGNORECASE | re.MULTILINE)
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _stated_after(text: str, end: int) -> str | None:
    """The answer a cue ending at `end` introduces: the rest of its line, or, when that is empty
    ("**Answer:**", "The final answer is:", "### Final Answer"), the next line with text."""
    lines = text[end:].split("\n")
    answer = _clean_stated(lines[0])
    if not answer:
        answer = next((_clean_stated(line) for line in lines[1:] if line.strip()), "")
    return answer or None


def _clean_stated(line: str) -> str:
    """The answer at the start of `line`: the content of a leading $...$, $$...$$, \\(...\\) or
    \\[...\\] (an escaped \\$ inside is a dollar sign), else its first sentence (3.5 stays 3.5);
    without **bold** or __bold__.

    >>> _clean_stated(r" **$\\$1,000$**. So"), _clean_stated(" 18. So"), _clean_stated(":** 3.5")
    ('\\\\$1,000', '18', '3.5')
    """
    answer = line.strip(" \t:*_")
    for opener, closer in _MATH_DELIMITERS:
        if answer.startswith(opener):
            end = answer.find(closer, len(opener))
            while end > 0 and closer == "$" and answer[end - 1] == "\\":  # \$: a dollar sign
                end = answer.find(closer, end + 1)
            if end >= 0:
                return answer[len(opener) : end].strip()
            break
    answer = answer.split(". ")[0].strip(" *_$")
    return re.sub(r"[*_$]+(?=\.$)", "", answer)  # "7**." -> "7."


# ----------------------------------------------------------------------------- normalisation
# Words that name a unit: "18 dollars", "5\text{ cm}^2" and "3 km/h" are the numbers 18, 5 and 3.
# Any other word glued to a number changes or voids it: 2x, 5i, 3n, 4k, "3 or more" are not numbers.
# The one-letter abbreviations (m, g, s, h) count only inside \text{...} / \mathrm{...}: a bare
# letter is a variable, and "5m" is 5 times m.
UNITS = frozenset("""
    dollar dollars cent cents usd euro euros percent
    mm cm m km meter meters metre metres millimeter millimeters centimeter centimeters kilometer
    kilometers inch inches ft foot feet yd yard yards mi mile miles
    s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week weeks
    month months year years
    mg g gram grams kg kilogram kilograms lb lbs pound pounds oz ounce ounces ton tons
    ml liter liters litre litres gallon gallons cup cups
    mph degree degrees radian radians unit units square sq cubic per
""".split())
MULTIPLIERS = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9,
               "trillion": 10**12}  # "2 million" is 2000000, so it is not 2

_REWRITES = [  # (LaTeX or Unicode, what it means here); order matters: \$ before $
    ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("{,}", ","),
    ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("~", " "),
    ("\\$", ""), ("$", ""), ("€", ""), ("£", ""), ("\\%", ""), ("%", ""),
    ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""), ("\\degree", ""),
    ("−", "-"), ("∞", "\\infty"), ("\\leq", "\\le"), ("\\geq", "\\ge"),
]
_SIZING = re.compile(r"\\(?:left|right|displaystyle|bigl|bigr|Bigl|Bigr)(?![a-zA-Z])")
_TEXT = re.compile(r"\\(?:text|textnormal|textrm|textbf|textit|mbox|mathrm|mathbf|operatorname)"
                   r"\s*\{([^{}]*)\}")
_TEXT_AT_END = re.compile(_TEXT.pattern + r"\s*(?:\^\{?[23]\}?)?\s*$")  # "5\text{ cm}^2"
_ARG = r"\{((?:[^{}]|\{[^{}]*\})*)\}"  # {...} holding at most one level of braces: {\sqrt{3}}
_SHORT_FIRST = re.compile(r"\\(frac|sqrt)\s*([0-9a-zA-Z])")  # \frac12, \sqrt3 -> \frac{1}2, \sqrt{3}
_SHORT_SECOND = re.compile(r"\\frac\s*" + _ARG + r"\s*([0-9a-zA-Z])")  # \frac{1}2 -> \frac{1}{2}
_SCRIPT = re.compile(r"_\{(\w+)\}|\^\{(\w)\}")  # 1011_{2} -> 1011_2, x^{2} -> x^2
_FRAC = re.compile(r"\\frac\s*" + _ARG + r"\s*" + _ARG)
_NUMERATOR = re.compile(r"-?(?:[\w.]|\\[a-zA-Z]+|\\sqrt\{\w+\})+")  # 3, -1, 2\pi, \sqrt{3}: no ( ) needed
_DENOMINATOR = re.compile(r"\d+(?:\.\d+)?|[a-zA-Z]|\\[a-zA-Z]+|\\sqrt\{\w+\}")  # one token: 2, x, \pi
# The name on the left of "x = 5": a letter or a word, a Greek letter (not \\pi: \\pi = 3 is a false
# statement), AB with a bar, each with an optional subscript, primes and arguments (a_1, x_{n+1},
# f'(x)); or a tuple of names ((p, q) = (3, 2)). \\sqrt{2} = 5, \\not= 7 and x^2 = 25 name nothing.
_GREEK = (r"\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|"
          r"lambda|mu|nu|xi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|"
          r"Lambda|Xi|Sigma|Upsilon|Phi|Psi|Omega)(?![a-zA-Z])")
_NAME = (rf"(?:[a-zA-Z][a-zA-Z0-9]{{0,20}}|{_GREEK}|\\(?:overline|bar|hat|vec|tilde)"  # one parse
         r"\{\w{1,5}\})(?:_[a-zA-Z0-9]{1,10}|_\{[\w+-]{1,10}\})?'{0,3}(?:\([\w\\, ]{1,20}\))?")
_ASSIGNED = re.compile(rf"{_NAME}|\(\s*{_NAME}(?:\s*,\s*{_NAME}){{0,8}}\s*\)")


def normalize(answer: str) -> str:
    """Canonical text of an answer: the same answer written two ways gives the same text.

    Drops LaTeX sizing and spacing, $, %, degrees, \\text{...} wrappers (and a trailing \\text{unit}),
    "x =" and wrapping {..} or (..) around one value; writes \\dfrac/\\cfrac/\\frac{a}{b}/\\frac12 as
    a/b (parentheses only around a compound part) and \\sqrt3 as \\sqrt{3}. Commas and spaces stay:
    `parse_value` decides what they mean.

    >>> normalize(r"x = \\left( \\dfrac{1}{3} \\right) \\text{ m}")
    '1/3'
    >>> normalize(r"\\$1{,}000.")
    '1,000'
    """
    s = answer.strip()[:MAX_CHARS]
    for old, new in _REWRITES:
        s = s.replace(old, new)
    s = _SIZING.sub("", s)
    unit = _TEXT_AT_END.search(s)
    if unit and unit.start() > 0 and (_is_units(unit.group(1), letters=True)
                                      or _is_label(s[: unit.start()], unit.group(1))):
        s = s[: unit.start()]
    s = _TEXT.sub(r"\1", _TEXT.sub(r"\1", s))  # two levels: \text{\textbf{A}}
    s = _SHORT_SECOND.sub(r"\\frac{\1}{\2}", _SHORT_FIRST.sub(r"\\\1{\2}", s))
    s = _SCRIPT.sub(lambda m: "_" + m.group(1) if m.group(1) else "^" + m.group(2), s)
    for _ in range(8):  # nested fractions; bounded
        new = _FRAC.sub(_division, s)
        if new == s:
            break
        s = new
    s = " ".join(s.split()).rstrip(".").strip()
    if s.count("=") == 1 and _ASSIGNED.fullmatch(s.split("=")[0].strip()):
        s = s.split("=")[1].strip()  # "x = 5", "(p, q) = (3, 2)"
    for _ in range(5):  # {{2}}, (3), ((1/3)); bounded
        if s[:1] == "{" and _wraps(s) or s[:1] == "(" and _wraps(s) and len(_top_level(s[1:-1])) == 1:
            s = s[1:-1].strip()
    return s


def _division(frac: re.Match) -> str:
    """\\frac{a}{b} as a/b, with parentheses around a compound part, and around the whole after a
    digit or letter (2\\frac{1}{2} is 2(1/2), not 21/2)."""
    a, b = frac.group(1).strip(), frac.group(2).strip()
    a = a if _NUMERATOR.fullmatch(a.replace(" ", "")) else f"({a})"
    b = b if _DENOMINATOR.fullmatch(b.replace(" ", "")) else f"({b})"
    before = frac.string[frac.start() - 1 : frac.start()]
    return f"({a}/{b})" if before and (before.isalnum() or before in ")}") else f"{a}/{b}"


def _is_units(text: str, letters: bool = False) -> bool:
    """True when `text` is one or more unit words ("cm", "km/h", "sq. ft", "cm^2"); one-letter units
    (m, g, s, h) only in a rate (m/s) or when `letters` (inside \\text{...}, where a letter is not a
    variable).

    >>> _is_units(" square meters"), _is_units("x"), _is_units("m"), _is_units("m", letters=True)
    (True, False, False, True)
    """
    letters = letters or "/" in text
    words = re.sub(r"(?<=[a-zA-Z])(?:\^\{?[23]\}?|[./])", " ", text).split()
    return bool(words) and all(w.isalpha() and w.lower() in UNITS and (letters or len(w) > 1)
                               for w in words)


# Words that change or hedge the number before them: "12 \\text{ dozen}" is not 12. Any other single
# lower-case word in \\text{} after a number only names what is counted: 12 \\text{ apples} is 12.
NOT_LABELS = frozenset("""
    more less fewer over under above below least most plus minus approximately approx about around
    roughly nearly almost circa ish dozen dozens score gross grand half halves third thirds quarter
    quarters squared cubed factorial negative mod modulo lakh crore
""".split()) | {word + "s" for word in MULTIPLIERS} | set(MULTIPLIERS)


def _is_label(number: str, text: str) -> bool:
    """True when `text` (the content of a trailing \\text{}) is one lower-case word that names what
    a plain `number` counts: "apples" yes; "dozen", "tenths", "or more", "C" no.

    >>> _is_label("12 ", " apples"), _is_label("12", "dozen"), _is_label("3", "fifths")
    (True, False, False)
    >>> _is_label("x", "apples"), _is_label("3", "or more"), _is_label("3", "C")
    (False, False, False)
    """
    word = text.strip()
    return (re.fullmatch(r"[a-z]{3,}", word) is not None and word not in NOT_LABELS
            and not word.endswith(("th", "ths")) and _NUMBER.fullmatch(number.strip()) is not None)


def _wraps(s: str) -> bool:
    """True when s[0] is an opening bracket whose partner is s[-1]: "(1, 2)" yes, "(1)+(2)" no."""
    depth = 0
    for i, ch in enumerate(s):  # linear scan; ( [ { all count, so [1, 2) is one pair
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if depth == 0:
            return i == len(s) - 1
    return False


def _top_level(s: str, sep: str = ",") -> list[str]:
    """`s` split at each `sep` outside brackets: "1, (2, 3)" -> ["1", " (2, 3)"]."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    return parts + [s[start:]]


# ----------------------------------------------------------------------------- values
# A number, at the start of an answer: sign, digits (1-3 then ",ddd" groups, the first not 0), an
# optional decimal part, an optional "/ denominator". Whatever follows must be units or multipliers.
_NUMBER = re.compile(r"([-+]?)\s*([1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)"
                     r"(?:\s*/\s*([-+]?)\s*(\d+(?:\.\d*)?|\.\d+))?")


def _scalar(s: str) -> tuple[Fraction, int] | None:
    """(value, places) of a number with optional units / multipliers, else None. `places` is the
    count of digits after the point of a decimal with at least 6 significant digits (such a decimal
    may stand for 1/12 or 2/3, see `numbers_equal`), else 0 (the number is exact)."""
    match = _NUMBER.match(s) if len(s) <= MAX_NUMBER_CHARS else None
    if not match:
        return None
    factor, tail = 1, s[match.end() :]
    for word in tail.split():
        if word.lower() in MULTIPLIERS:
            factor *= MULTIPLIERS[word.lower()]
        elif not _is_units(word):
            return None
    sign, digits, denominator_sign, denominator = match.groups()
    value = Fraction(digits.replace(",", "")) * (-1 if sign == "-" else 1) * factor
    if denominator is not None:
        if Fraction(denominator) == 0:
            return None
        return value / Fraction(denominator) * (-1 if denominator_sign == "-" else 1), 0
    significant = len(digits.replace(",", "").replace(".", "").lstrip("0"))
    places = len(digits) - digits.index(".") - 1 if "." in digits else 0
    return value, places if significant >= 6 and factor == 1 else 0


def to_number(s: str) -> Fraction | None:
    """Exact value of a normalised number ("1,000", "-3/4", "0.5", "18 dollars"), else None.

    >>> to_number("1,000"), to_number("0,111"), to_number("2x")
    (Fraction(1000, 1), None, None)
    """
    number = _scalar(s)
    return None if number is None else number[0]


def parse_value(s: str, depth: int = 0) -> tuple:
    """What a normalised answer denotes: a tree whose leaves are numbers or text.

        ("number", (value, places))             "1,000", "-3/4", "18 dollars", "0.0833333"
        ("()" | "[]" | "[)" | "(]", [trees])    tuples and intervals: ordered, brackets kept
        ("{}" | ",", [trees])                   sets \\{1, 2\\} and bare lists "3, 5": order-free
        ("cup", [trees])                        unions of intervals: order-free
        ("text", s)                             anything else

    >>> parse_value("[1, 9/2)")
    ('[)', [('number', (Fraction(1, 1), 0)), ('number', (Fraction(9, 2), 0))])
    """
    number = _scalar(s)
    if number is not None:
        return "number", number
    if depth >= MAX_DEPTH:
        return "text", s
    kind, parts = ",", _top_level(s)
    if len(_top_level(s, "\\cup")) > 1:
        kind, parts = "cup", _top_level(s, "\\cup")
    elif s.startswith("\\{") and s.endswith("\\}") and _wraps(s[1:]):
        kind, parts = "{}", _top_level(s[2:-2])
    elif s[:1] in "([" and s[-1:] in ")]" and _wraps(s):
        kind, parts = s[0] + s[-1], _top_level(s[1:-1])
    if kind in (",", "cup") and len(parts) < 2 or len(parts) > MAX_ELEMENTS:
        return "text", s
    return kind, [parse_value(normalize(part), depth + 1) for part in parts]


def numbers_equal(x: tuple[Fraction, int], y: tuple[Fraction, int]) -> bool:
    """Exact equality of two (value, places) numbers, except that a decimal with >= 6 significant
    digits (places > 0) equals a fraction with no finite decimal expansion when it is within one unit
    of its last digit (rounded or cut off). A short decimal is exact, so 0.08 is not 1/12; a
    fraction with a finite expansion must be written exactly, so 0.333334 is not 0.333333.

    >>> one_twelfth = (Fraction(1, 12), 0)
    >>> numbers_equal((Fraction("0.0833333"), 7), one_twelfth)
    True
    >>> numbers_equal((Fraction("0.08"), 0), one_twelfth)
    False
    """
    (a, a_places), (b, b_places) = x, y
    if a == b:
        return True
    for decimal, places, exact in ((a, a_places, b), (b, b_places, a)):
        if places and not _terminates(exact) and abs(decimal - exact) < Fraction(1, 10**places):
            return True
    return False


def _terminates(q: Fraction) -> bool:
    """True when q has a finite decimal expansion (its denominator is 2^a 5^b)."""
    d = q.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


# ----------------------------------------------------------------------------- equivalence
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # a word, not a \command
_HEDGE = re.compile(r"\\(?:approx|sim|simeq|lesssim|gtrsim)(?![a-zA-Z])|≈")  # "\approx 12" is not 12
_RELATION = re.compile(  # a relation, a connective or an arrow: "\ge 6", "7 \lor 8", "2+1=4"
    r"\\(?:ne|neq|not|le|ge|lt|gt|leqslant|geqslant|ll|gg|cong|equiv|propto|lor|land|vee|wedge|neg|"
    r"lnot|to|gets|mapsto|rightarrow|leftarrow|Rightarrow|Leftarrow|leftrightarrow|Leftrightarrow|"
    r"longrightarrow|Longrightarrow|iff|implies|impliedby|in|notin|ni|subset|subseteq|supset|"
    r"supseteq)(?![a-zA-Z])|[=<>≠≤≥→⇒⇔↔∨∧¬∈∉⊂⊆]")
_MATH_WORDS = {"sqrt", "pi", "sin", "cos", "tan", "log", "ln", "exp", "inf", "infty"}
_ORDER_FREE = {"{}", ","}


def _verdict(predicted: str, reference: str) -> bool | None:
    """True or False when the rule can tell, None when it cannot (symbolic forms such as
    \\sqrt{8} vs 2\\sqrt{2}: math-verify's job, when asked)."""
    a, b = normalize(predicted), normalize(reference)
    if not a or not b:
        return False
    return _compare(parse_value(a), parse_value(b))


def _compare(x: tuple, y: tuple) -> bool | None:
    """Three-valued equality of two `parse_value` trees."""
    (kind_x, x_parts), (kind_y, y_parts) = x, y
    if "text" in (kind_x, kind_y):
        return _compare_text(x, y)
    if "number" in (kind_x, kind_y):
        return kind_x == kind_y and numbers_equal(x_parts, y_parts)
    if len(x_parts) != len(y_parts):
        return False
    if {kind_x, kind_y} <= _ORDER_FREE or kind_x == kind_y == "cup":
        verdicts = [_compare(p, q) for p, q in zip(sorted(x_parts, key=_sort_key),
                                                   sorted(y_parts, key=_sort_key))]
        if None in verdicts:  # sorting may have paired an undecided element wrongly
            return None
        return all(verdicts)
    if kind_x != kind_y:  # (1,2) vs [1,2) vs [1,2]; a tuple vs a set
        return False
    verdicts = [_compare(p, q) for p, q in zip(x_parts, y_parts)]
    return False if False in verdicts else (True if all(verdicts) else None)


def _compare_text(x: tuple, y: tuple) -> bool | None:
    """Equality when one side is not a number or a structure: the same text is equal; a relation,
    connective or arrow against a value is different (\\ge 6, \\neq 6, x^2 = 25, 2+1=4, 7 \\lor 8,
    7 \\to 8 are not 6, 25, 4 or 8); words (not units, those are gone), hedges (\\approx) and base
    subscripts are compared as text only ("3 or more", "\\text{odd}", 1011_2); a number glued to a
    variable is not a value (2x, 5i, 1/2 x); the rest is undecided."""
    texts = [tree[1] for tree in (x, y) if tree[0] == "text"]
    if len(texts) == 2 and "".join(texts[0].split()) == "".join(texts[1].split()):
        return True
    related = [kind == "text" and _RELATION.search(text) is not None for kind, text in (x, y)]
    if related[0] != related[1] and {x[0], y[0]} <= {"text", "number"}:
        return False  # "\ge 6", "x^2 = 25", "7 \lor 8" say something of a value; they are not it
    for text in texts:  # "4 = 2" is a false statement, not the answer 2 (math-verify reads its right side)
        sides = [_scalar(side.strip()) for side in text.split("=")]
        if len(sides) == 2 and None not in sides and not numbers_equal(*sides):
            return False
    for text in texts:
        words = [w for w in _WORD.findall(text) if w not in _MATH_WORDS]
        if words or _HEDGE.search(text) or re.search(r"\d_", text):
            return False
    if len(texts) == 1:  # the other side is a value
        number = _NUMBER.match(texts[0])
        if number and texts[0][number.end() :].lstrip()[:1].isalpha():
            return False
    return None


def _sort_key(tree: tuple) -> tuple:
    """Order of set elements: numbers by value, then text, then structures (their own elements sorted
    when they are sets), so that \\{2, 1\\} and \\{1, 2\\} line up."""
    kind, parts = tree
    if kind == "number":
        return (0, parts[0], "")
    if kind == "text":
        return (1, 0, "".join(parts.split()))
    keys = [_sort_key(part) for part in parts]
    return (2, 0, kind, tuple(sorted(keys) if kind in _ORDER_FREE | {"cup"} else keys))


def _candidates(completion: str, reference: str) -> list[str]:
    """The answers a completion states: its final answer, and, when the reference lists n >= 2 values
    without order ("3, 5" or \\{3, 5\\}) and the completion boxes exactly n answers, those boxes
    together. Boxing extra candidates therefore never helps: \\boxed{1}\\boxed{2}\\boxed{3} is the
    answer 3 for the reference 2, and no answer at all for the reference "2, 3"."""
    final = extract_answer(completion)
    if final is None:
        return []
    kind, parts = parse_value(normalize(reference))
    text = completion[-MAX_CHARS:]
    if kind in _ORDER_FREE and text.count("\\boxed") + text.count("\\fbox") == len(parts) >= 2:
        boxes = all_boxed(text)
        if len(boxes) == len(parts):
            return [final, ", ".join(boxes)]
    return [final]


# ----------------------------------------------------------------------------- math-verify, optional
def _math_verify_version() -> str | None:
    """math-verify's version when it imports, else None."""
    try:
        import math_verify  # noqa: F401 - optional dependency
    except Exception:  # noqa: BLE001 - absent, or broken: either way not usable
        return None
    try:
        from importlib.metadata import version

        return version("math-verify")
    except Exception:  # noqa: BLE001
        return "(version unknown)"


def _whole_seconds(timeout_s: float) -> int:
    """signal.alarm counts whole seconds; a float makes math-verify fail silently (it catches the
    TypeError and parses nothing), so round up to an int >= 1."""
    return max(1, math.ceil(timeout_s))


def _math_verify_equal(predicted: str, reference: str, timeout_s: float) -> bool:
    """math-verify's verdict on two answers the rule could not decide; False when it cannot give one.

    Never raises, never hangs: math-verify is asked only from the main thread (its SIGALRM timeouts
    raise elsewhere) and about answers up to MAX_MATH_VERIFY_CHARS; each of its 2 parses and at most
    4 comparisons ([sympy, text] x [sympy, text]) stops after timeout_s, so one call takes at most
    6 * timeout_s; its TimeoutException is a BaseException, caught here too. A side that is a number
    to the rule goes as an exact fraction, so math-verify's 6-decimal float rounding never decides
    (0.0000002 is not 10^{-7}; 0.5 is not \\frac{\\pi}{6}).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if max(len(predicted), len(reference)) > MAX_MATH_VERIFY_CHARS:
        return False
    try:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
    except Exception:  # noqa: BLE001
        return False
    seconds = _whole_seconds(timeout_s)
    try:
        gold = parse(f"${_exact_latex(reference)}$", parsing_timeout=seconds)
        target = parse(f"${_exact_latex(predicted)}$", parsing_timeout=seconds)
        return bool(verify(gold, target, timeout_seconds=seconds))
    except (Exception, TimeoutException):  # noqa: BLE001
        return False


def _exact_latex(answer: str) -> str:
    """A number as an exact LaTeX fraction ("0.5" -> \\frac{1}{2}); anything else unchanged."""
    kind, number = parse_value(normalize(answer))
    if kind != "number":
        return answer
    value = number[0]
    return str(value.numerator) if value.denominator == 1 else \
        f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
