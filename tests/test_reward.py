import time

import pytest

from reward import extract_answer, format_reward, math_reward, overlong_penalty


@pytest.mark.parametrize("text, expected", [
    (r"so the answer is \boxed{42}.", "42"),
    (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # the last one
    (r"\boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),  # nested braces
    (r"\fbox{7}", "7"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),  # GSM8K solution
    ("#### 1,234", "1,234"),
    ("Thus the answer is 17.", "17."),
    ("The final answer is: $3$", "3"),
    ("Step 1 ...\nAnswer: $\\frac{1}{2}$", r"\frac{1}{2}"),  # DAPO-Math-17k's requested form
    ("the answer is 4, so\nAnswer: 5", "5"),  # the later cue wins
    ("12", "12"),  # the built-in task answers with a bare number
    ("I think so", None),
    ("", None),
    (r"\boxed{unbalanced", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("completion, answer", [
    (r"\boxed{1,000}", "1000"), (r"\boxed{\$18}", "18"), (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{\frac{1}{2}}", "1/2"), (r"\boxed{\dfrac12}", "0.5"), (r"\boxed{\tfrac{1}{2}}", "0.5"),
    (r"\boxed{50\%}", "50"), (r"\boxed{- 3}", "-3"), ("The answer is 18.", "18"),
    (r"\boxed{18 \text{ dollars}}", "18"), (r"\boxed{5\text{ cm}}", "5"), (r"\boxed{x = 5}", "5"),
    ("#### 1,234", "1234"), (r"\boxed{\frac{3}{4}}", r"\frac{3}{4}"), (r"\boxed{\frac{3}{4}}", "0.75"),
    (r"\boxed{90^\circ}", "90"), (r"\boxed{-\frac{1}{2}}", "-0.5"), (r"\boxed{(3)}", "3"),
])
def test_math_reward_equal(completion, answer):
    assert math_reward(completion, answer) == 1.0


@pytest.mark.parametrize("completion, answer", [
    (r"\boxed{1001}", "1000"), (r"\boxed{0.51}", "1/2"), (r"\boxed{-3}", "3"), ("no answer", "3"),
    (r"\boxed{1,2}", "12"), (r"\boxed{\frac{1}{0}}", "1"), (r"\boxed{}", ""),
])
def test_math_reward_different(completion, answer):
    assert math_reward(completion, answer) == 0.0


ADVERSARIAL = [
    "9" * 100_000,  # a 100k-digit number
    r"\boxed{" + "9" * 100_000 + "}",
    "{" * 10_000 + "1" + "}" * 10_000,
    r"\boxed{" + "{" * 10_000 + "1",  # 10k nested, unbalanced
    r"\boxed{\frac{",
    r"\frac{" * 5_000,
    bytes(range(256)).decode("latin-1") * 100,  # binary junk
    "",
    "answer is " + "(" * 50_000,
    "1/" * 50_000,
    r"\boxed{" + r"\frac{1}{" * 3_000 + "2" + "}" * 3_000 + "}",
    "#### " + "1," * 40_000,
    "#" * 100_000,  # the GSM8K and heading cues
    "**Answer:**" + "\n" * 100_000,
    "The answer is $" + "\\$" * 50_000,
    "answer" + "**" * 50_000 + ":",
    r"\boxed{(" + "a_1a_1a_1a_1a_1, " * 500 + ")=5}",  # names on the left of "=": one parse each
]


@pytest.mark.parametrize("completion", ADVERSARIAL)
def test_adversarial_completions_are_safe_and_fast(completion):
    start = time.perf_counter()
    assert math_reward(completion, "5") == 0.0
    assert format_reward(completion) in (0.0, 1.0)
    assert time.perf_counter() - start < 0.5  # the bound the verifier guarantees


ADVERSARIAL_STRUCTURES = [  # (completion, reference): the tuple / set / sqrt paths on junk
    (r"\boxed{(" + "1," * 4_900 + "1)}", "(1, 2)"),  # 4.9k elements: over MAX_ELEMENTS, text
    (r"\boxed{" + "1," * 25_000 + "}", "1, 2"),  # 50k commas, cut to the last 10k characters
    (r"\boxed{" + "(" * 4_900 + "1" + ")" * 4_900 + "}", "1"),  # 10k nested parentheses
    (r"\boxed{" + "(1," * 3_000 + "1" + ")" * 3_000 + "}", "(1, 2)"),  # 3k nested tuples
    (r"\boxed{" + "[" * 3_000 + "1" + ")" * 3_000 + "}", "[1, 2)"),
    (r"\boxed{" + r"\{" * 3_000 + "}", r"\{1\}"),  # unbalanced sets
    (r"\boxed{" + r"\sqrt" * 2_000 + "3}", r"\sqrt{3}"),
    (r"\boxed{" + r"\sqrt{" * 2_000 + "3" + "}" * 2_000 + "}", r"\sqrt{3}"),
    (r"\boxed{" + r"\frac" * 2_000 + "12}", "0.5"),
    (r"\boxed{" + r"\text{" * 2_000 + "5" + "}" * 2_000 + "}", "5"),
    (r"\boxed{(-\infty,1)" + r"\cup(2,3)" * 1_000 + "}", r"(-\infty,1)\cup(2,3)"),
    (r"\boxed{1}" * 1_000, "1, 1"),  # many boxes
    (r"\boxed{1}" * 32, ", ".join(["1"] * 32)),  # as many boxes as listed values: all compared
    (r"\boxed{5 " + "cm " * 3_000 + "}", "5"),
    (r"\boxed{0." + "3" * 60 + "}", "1/3"),
    (r"\boxed{1}", "(" * 10_000),  # the reference is junk too
    (r"\boxed{1}", ",".join(["(1, 2)"] * 2_000)),
]


@pytest.mark.parametrize("completion, reference", ADVERSARIAL_STRUCTURES,
                         ids=[f"structure{i}" for i in range(len(ADVERSARIAL_STRUCTURES))])
def test_adversarial_structures_are_safe_and_fast(completion, reference):
    start = time.perf_counter()
    assert math_reward(completion, reference) in (0.0, 1.0)
    assert time.perf_counter() - start < 0.5


def test_nested_sets_in_any_order_are_equal_and_fast():
    def set_of(items):
        return r"\{" + ", ".join(items) + r"\}"

    numbers = [str(i) for i in range(30)]
    completion = r"\boxed{" + set_of([set_of(numbers)] * 30) + "}"  # 30 sets of 30 numbers
    reference = set_of([set_of(numbers[::-1])] * 30)
    start = time.perf_counter()
    assert math_reward(completion, reference) == 1.0
    assert math_reward(completion, reference.replace("29", "31", 1)) == 0.0
    assert time.perf_counter() - start < 2 * 0.5  # two calls, each within the verifier's 0.5 s


def test_non_string_completion_scores_zero():
    assert math_reward(None, "5") == 0.0
    assert math_reward(b"\x00\xff", "5") == 0.0


def test_overlong_penalty_matches_dapo_formula():
    # L_max = 100, L_buf = 20: free up to 80 tokens, then -(L - 80) / 20
    assert overlong_penalty(50, 100, 20) == 0.0
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == -0.5
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(90, 100, 20, penalty=0.4) == pytest.approx(-0.2)
    assert overlong_penalty(100, 100, 0) == 0.0


@pytest.mark.parametrize("completion, answer, expected", [
    # a long decimal near a fraction with no finite expansion stands for it (within one unit of
    # its last digit): 370369 / 3 = 123456.333..., 0.0833333 ~ 1/12
    (r"\boxed{123456.33}", "370369/3", 1.0),
    (r"\boxed{0.0833333}", r"\frac{1}{12}", 1.0),
    # a fraction WITH a finite expansion must be written exactly: 3950617 / 32 = 123456.78125
    # (denominator 2^5) and 77160492 / 625 = 123456.7872 (5^4); each decimal below is within one
    # unit of its last digit of it, and still wrong
    (r"\boxed{123456.8}", "3950617/32", 0.0),
    (r"\boxed{123456.79}", "77160492/625", 0.0),
    (r"\boxed{123456.78125}", "3950617/32", 1.0),
])
def test_decimal_tolerance_applies_only_to_fractions_without_a_finite_expansion(completion, answer,
                                                                                  expected):
    assert math_reward(completion, answer) == expected
