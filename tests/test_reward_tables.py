"""The verifier against tables of answers written by hand, in both verifier modes.

ADVERSARIAL: wrong answers that look like the reference; every verifier must score them 0.
TABLE: (reference, completion, expected) in the styles of GSM8K, MATH and DAPO-Math-17k.
    True   equal by the built-in rule, so by every verifier;
    False  different for every verifier;
    MV     equal, but only symbolic algebra sees it: 0 with the built-in rule, 1 with math-verify.
Each expectation is worked out by hand; the comment says why where it is not obvious.
"""
import logging

import pytest

from reward import math_reward, make_verifier

MV = "math-verify only"

ADVERSARIAL = [  # (completion, reference)
    # a word or letter glued to a number is not a unit: it changes the value or voids it
    (r"\boxed{2x}", "2"),
    (r"\boxed{5i}", "5"),
    (r"\boxed{3n}", "3"),
    (r"\boxed{n=4k}", "4"),
    (r"\boxed{4k}", "4"),
    (r"\boxed{2k}", "2000"),  # k is a variable here, not "thousand"
    (r"\boxed{1/2 x}", "1/2"),
    (r"\boxed{\frac{1}{2} x}", r"\frac{1}{2}"),
    (r"\boxed{2x = 4}", "4"),  # says x = 2 (math-verify alone reads the right-hand side, 4)
    (r"\boxed{3\pi}", "3"),
    (r"\boxed{2\sqrt{2}}", "2"),
    (r"\boxed{5m}", "5"),  # a bare letter is a variable (5\text{ m} would be 5 metres)
    (r"\boxed{2 million}", "2"),
    (r"\boxed{2\text{ million}}", "2"),
    (r"\boxed{5 \text{ hundred}}", "5"),
    (r"\boxed{3 \text{ or more}}", "3"),
    (r"\boxed{\text{at least } 3}", "3"),
    (r"\boxed{\text{at most } 3}", "3"),
    (r"\boxed{\text{about } 12}", "12"),
    (r"\boxed{12 \text{ approximately}}", "12"),
    (r"\boxed{\approx 12}", "12"),
    (r"\boxed{4 = 2}", "2"), (r"\boxed{3 = 3.5}", "3.5"),  # false statements ending in the answer
    (r"\boxed{\sim 12}", "12"),
    (r"\boxed{5 \text{ or } 7}", "5"),
    (r"\boxed{18 \text{ dollars and } 50 \text{ cents}}", "18"),
    (r"\boxed{5 apples}", "5"),  # a count noun is not in UNITS, and bare it reads as variables
    (r"\boxed{12 \text{ dozen}}", "12"),  # a word in \text{} that changes the number
    (r"\boxed{12 \text{ thousand}}", "12"),
    (r"\boxed{3 \text{ tenths}}", "3"),
    (r"\boxed{3 \text{ quarters}}", "3"),
    (r"\boxed{3 \text{ squared}}", "3"),
    (r"\boxed{12 \text{ Apples}}", "12"),  # one lower-case word only
    (r"\boxed{n \geq 3}", "3"),
    (r"\boxed{x > 3}", "3"),
    # a relation, a connective or an arrow is not the value it mentions (math-verify alone: equal)
    (r"\boxed{\neq 6}", "6"), (r"\boxed{\ne 6}", "6"), (r"\boxed{\not= 7}", "7"),
    (r"\boxed{7 ≠ 8}", "8"), (r"\boxed{\ge 6}", "6"), (r"\boxed{\geq 6}", "6"), (r"\boxed{≥ 6}", "6"),
    (r"\boxed{\le 7}", "7"), (r"\boxed{> 7}", "7"), (r"\boxed{< 7}", "7"), (r"\boxed{\gt 7}", "7"),
    (r"\boxed{x \leq 3}", "3"), (r"\boxed{7 \lor 8}", "8"), (r"\boxed{7 \vee 8}", "8"),
    (r"\boxed{7 ∨ 8}", "8"), (r"\boxed{7 \land 8}", "8"),
    (r"\boxed{7 \to 8}", "8"), (r"\boxed{7 \rightarrow 8}", "8"), (r"\boxed{7 \Rightarrow 8}", "8"),
    (r"\boxed{7 \implies 8}", "8"), (r"\boxed{7 \iff 8}", "8"), (r"\boxed{7 → 8}", "8"),
    (r"\boxed{7 \mapsto 8}", "8"), (r"\boxed{\neg 7}", "7"), (r"\boxed{x \in 8}", "8"),
    (r"\boxed{7 \equiv 8}", "8"), (r"\boxed{\pm 3}", "3"),
    # an equation that assigns nothing: its right side is not the answer (\pi names nothing)
    (r"\boxed{x^2 = 25}", "25"), (r"\boxed{2+1=4}", "4"), (r"\boxed{3 \cdot 5 = 16}", "16"),
    (r"\boxed{\sqrt{2} = 5}", "5"), (r"\boxed{\pi = 3}", "3"), (r"\boxed{\infty = 5}", "5"),
    (r"\boxed{\sin = 3}", "3"), (r"\boxed{\frac{1}{2} = 3}", "3"),
    (r"\boxed{three}", "3"),
    # commas: thousands only as 1-3 digits then groups of exactly 3, no space, no leading 0
    (r"\boxed{12, 345}", "12345"),
    (r"\boxed{32, 349}", "32349"),  # a list of two numbers
    (r"\boxed{0,111}", "111"),
    (r"\boxed{0,5}", "0.5"),  # a comma is not a decimal point
    (r"\boxed{1,2}", "12"),
    (r"\boxed{1,23}", "123"),
    (r"\boxed{1,0000}", "10000"),
    (r"\boxed{12,34,567}", "1234567"),
    (r"\boxed{1 ,000}", "1000"),
    (r"\boxed{1.000}", "1000"),  # a point is not a thousands separator
    ("#### 1, 234", "1234"),
    # several boxed answers: the last one, or exactly as many as an unordered reference lists
    (r"\boxed{1}\boxed{2}\boxed{3}", "2"),
    (r"\boxed{2} or maybe \boxed{3}", "2"),
    (r"\boxed{1} \boxed{3} \boxed{5}", "3, 5"),
    (r"\boxed{3} \boxed{3}", "3, 5"),
    (r"\boxed{3, 5, 7}", "3, 5"),
    (r"\boxed{3}", "3, 5"),
    (r"\boxed{x = 5, x = 7}", "5"),
    # tuples are ordered; brackets of intervals count; sets are not tuples
    (r"\boxed{(2,1)}", "(1,2)"),
    (r"\boxed{(2,3)}", "(p,q)=(3,2)"),
    (r"\boxed{[1,2)}", "(1,2)"),
    (r"\boxed{[1,2)}", "[1,2]"),
    (r"\boxed{(1,2]}", "(1,2)"),
    (r"\boxed{(-\infty, 3)}", r"(-\infty, 3]"),
    (r"\boxed{(-\infty,1)\cup(2,\infty)}", r"(-\infty,1]\cup(2,\infty)"),
    (r"\boxed{\{1,2\}}", "(1,2)"),
    (r"\boxed{1, 2}", "(1,2)"),
    (r"\boxed{(1,2,3)}", "(1,2)"),
    (r"\boxed{\{1,2\}}", r"\{1,2,3\}"),
    # decimals: exact, except a long one for a fraction with no finite expansion, to its last digit
    (r"\boxed{0.08}", r"\frac{1}{12}"),
    (r"\boxed{0.083}", r"\frac1{12}"),
    (r"\boxed{0.08333}", r"\frac1{12}"),  # 5 significant digits: exact only
    (r"\boxed{0.0833343}", r"\frac1{12}"),  # 7 digits, off by 1e-6 > one unit of the last digit
    (r"\boxed{0.333}", "1/3"),
    (r"\boxed{0.333334}", "0.333333"),  # both exact decimals
    (r"\boxed{1000001}", "1000000"),  # no relative tolerance on integers
    (r"\boxed{1000000.4}", "1000000"),
    (r"\boxed{2.0000001}", "2"),
    (r"\boxed{0.0000002}", r"\frac{1}{10^{7}}"),  # math-verify alone: equal (rounds to 6 places)
    (r"\boxed{3.14}", r"\pi"),
    (r"\boxed{3.14159}", r"\pi"),
    (r"\boxed{1.4142}", r"\sqrt{2}"),
    (r"\boxed{0.5}", r"\frac{\pi}{6}"),
    (r"\boxed{\frac{\pi}{6}}", "0.5"),
    (r"\boxed{0.03}", r"3\%"),  # a percentage is its number (math-verify alone: equal)
    # base subscripts are part of the answer
    (r"\boxed{1011}", "1011_2"),
    (r"\boxed{1011_3}", "1011_2"),
    (r"\boxed{1011_{10}}", "1011_2"),
    # text and symbols
    (r"\boxed{\text{even}}", r"\text{odd}"),
    (r"\boxed{\text{(B)}}", r"\text{(C)}"),
    (r"\boxed{\text{Devon}}", r"\text{Evan}"),
    (r"\boxed{3^\circ\text{C}}", "3"),
    (r"\boxed{-3}", "3"),
    (r"\boxed{+3}", "-3"),
    (r"\boxed{-\infty}", r"\infty"),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{6}"),
    (r"\boxed{2^{10}}", "1000"),
    (r"\boxed{x+1}", "x-1"),
    (r"\boxed{\frac{1}{0}}", "1"),
    # extraction
    ("The answer is 5 or 7.", "5"),
    ("#### 72 or 73", "72"),
    ("Answer: 42 apples", "42"),
    (r"Answer: 3, so \boxed{4}", "3"),  # the box wins
    (r"\boxed{}", "0"),
    (r"\boxed{\text{}}", "0"),
    ("", "0"),
    (r"\boxed{0}", ""),
]

TABLE = [  # (reference, completion, expected)
    # ---- GSM8K: integers, money, commas, units
    ("72", "Natalia sold 48/2 = 24 clips in May.\n#### 72", True),
    ("72", "#### 72.", True),
    ("1234", "#### 1,234", True),
    ("1234", "#### $1,234", True),
    ("1000", "#### $1,000", True),
    ("18", "The answer is $18.", True),
    ("18", "The answer is 18 dollars.", True),
    ("18", r"\boxed{\$18.00}", True),
    ("18.5", r"\boxed{\$18.50}", True),
    ("1234.5", r"\boxed{\$ 1,234.50}", True),
    ("1000000", r"\boxed{1,000,000}", True),
    ("12,345", r"\boxed{12345}", True),
    ("2500", r"\boxed{2,500}", True),
    ("10000", r"\boxed{10{,}000}", True),
    ("14916", r"\boxed{14{,}916}", True),
    ("14916", r"\boxed{14\,916}", True),
    ("12345", r"\boxed{12, 345}", False),
    ("1000", r"\boxed{1, 000}", False),
    ("50", r"\boxed{50\%}", True),
    ("50", r"\boxed{50 \text{ percent}}", True),
    ("0.5", r"\boxed{50\%}", False),  # a percentage is its number, as GSM8K writes it
    ("5", r"\boxed{5 \text{ hours}}", True),
    ("12", r"\boxed{12 \text{ minutes}}", True),
    ("3.5", r"\boxed{3.5 \text{ miles}}", True),
    ("40", r"\boxed{40 km}", True),
    ("3", r"\boxed{3 \text{ feet}}", True),
    ("20", r"\boxed{20 \text{ cm}^2}", True),
    ("20", r"\boxed{20\text{ square units}}", True),
    ("60", r"\boxed{60 \text{ mph}}", True),
    ("60", r"\boxed{60 km/h}", True),
    ("5", r"\boxed{5\text{ m}}", True),  # a one-letter unit inside \text
    ("5", r"\boxed{5 \mathrm{~kg}}", True),
    ("5", r"\boxed{5m}", False),  # a bare letter is a variable
    ("12", r"\boxed{12 \text{ apples}}", True),  # \text{} after a number names what it counts
    ("1000", r"\boxed{1,000 \text{ marbles}}", True),
    ("2000000", r"\boxed{2 \text{ million}}", True),
    ("1500000000", r"\boxed{1.5 billion}", True),
    ("2", r"\boxed{2 \text{ million}}", False),
    ("-15", r"\boxed{-15}", True),
    ("-3", r"\boxed{- 3}", True),
    ("0.75", r"\boxed{.75}", True),
    ("0.75", r"\boxed{75}", False),
    ("7", "#### 70", False),
    ("3", r"\boxed{3.}", True),
    ("3", r"\boxed{3.0}", True),
    ("3", r"\boxed{03}", True),
    ("3", r"\boxed{+3}", True),
    ("0", r"\boxed{0}", True),
    # ---- MATH: fractions
    (r"\frac12", r"\boxed{\frac{1}{2}}", True),
    ("0.75", r"\boxed{\dfrac{3}{4}}", True),
    (r"\frac{3}{4}", r"\boxed{\tfrac34}", True),
    (r"\frac13", r"\boxed{\cfrac{1}{3}}", True),
    ("3/4", r"\boxed{\frac3{4}}", True),
    ("0.75", r"\boxed{\frac{3}4}", True),
    ("1", r"\boxed{\frac3{3}}", True),
    ("-0.5", r"\boxed{-\frac{1}{2}}", True),
    (r"-\frac{1}{2}", r"\boxed{\frac{-1}{2}}", True),
    (r"\frac13", r"\boxed{\left( \frac{1}{3} \right)}", True),
    (r"\frac34", r"\boxed{\frac{6}{8}}", True),
    (r"\frac14", r"\boxed{\frac{1}{3}}", False),
    (r"\frac13", r"\boxed{\frac{1}{3} \text{meters}}", True),
    ("2", r"\boxed{{{2}}}", True),
    (r"\frac{1}{12}", r"\boxed{0.0833333333333333}", True),  # correct to all 16 places
    (r"\frac{1}{12}", r"\boxed{0.0833333}", True),  # 6 significant digits, cut off
    (r"\frac1{12}", r"\boxed{0.08}", False),
    (r"\frac13", r"\boxed{0.333333}", True),
    (r"\frac13", r"\boxed{0.3333}", False),  # 4 significant digits: exact only
    (r"\frac16", r"\boxed{0.1666667}", True),  # rounded
    (r"\frac16", r"\boxed{0.166666}", True),  # cut off
    (r"\frac17", r"\boxed{0.142857}", True),
    (r"\frac{2}{3}", r"\boxed{0.6666666666666666}", True),  # Python's repr of 2/3
    ("0.125", r"\boxed{\frac18}", True),
    ("0.125", r"\boxed{0.125000}", True),
    # ---- MATH: roots, pi, powers
    (r"\sqrt{3}", r"\boxed{\sqrt3}", True),
    (r"2\sqrt{3}", r"\boxed{2\sqrt 3}", True),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt3}{2}}", True),
    (r"\frac{\sqrt3}{2}", r"\boxed{\dfrac{\sqrt{3}}2}", True),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\sqrt{3}/2}", True),
    (r"\sqrt[3]{2}", r"\boxed{\sqrt[3]{2}}", True),
    (r"\sqrt{3}", r"\boxed{\sqrt{2}}", False),
    (r"2\sqrt{3}", r"\boxed{3\sqrt{2}}", False),
    (r"2 \pi", r"\boxed{2\pi}", True),
    (r"\pi/2", r"\boxed{\frac{\pi}{2}}", True),
    (r"\frac{2 \pi}{3}", r"\boxed{\frac{2\pi}{3}}", True),
    (r"\frac{\pi}{6}", r"\boxed{\frac{\pi}{3}}", False),
    ("3.14", r"\boxed{\pi}", False),
    ("x^{2}", r"\boxed{x^2}", True),
    (r"2\sqrt{2}", r"\boxed{\sqrt{8}}", MV),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", MV),
    ("1024", r"\boxed{2^{10}}", MV),
    ("100", r"\boxed{10^2}", MV),
    ("2", r"\boxed{\sqrt{4}}", MV),
    (r"2\frac{1}{2}", r"\boxed{2.5}", MV),  # a mixed number
    ("x+1", r"\boxed{1+x}", MV),
    ("6", r"\boxed{3!}", MV),
    # ---- MATH: intervals and unions
    ("[1, 2)", r"\boxed{[1,2)}", True),
    ("[1,2)", r"\boxed{(1,2)}", False),
    ("[1,2)", r"\boxed{[1,2]}", False),
    (r"(-\infty,3]", r"\boxed{(-\infty, 3]}", True),
    (r"(-\infty, 3]", r"\boxed{(-\infty, 3)}", False),
    (r"(2,\infty)\cup(-\infty,1)", r"\boxed{(-\infty,1)\cup(2,\infty)}", True),
    (r"[0.5, 3)", r"\boxed{\left[ \frac{1}{2}, 3 \right)}", True),
    (r"(-\infty, -2) \cup (3, \infty)", r"\boxed{(-\infty,-2)\cup(3,\infty)}", True),
    # ---- MATH: tuples and points (ordered)
    ("(1,4.5)", r"\boxed{(1,\frac{9}{2})}", True),
    ("(3,2)", r"\boxed{(p,q)=(3,2)}", True),
    ("(1,2)", r"\boxed{(x, y) = (1, 2)}", True),
    ("(2,3)", r"\boxed{(3,2)}", False),
    ("(2,-0.5)", r"\boxed{\left( 2, -\frac{1}{2} \right)}", True),
    ("(1,2,3)", r"\boxed{(1, 2, 3)}", True),
    ("(1,2,3)", r"\boxed{(1,2)}", False),
    (r"(1, \sqrt{2})", r"\boxed{(1,\sqrt2)}", True),
    (r"(1, \sqrt{2})", r"\boxed{(1,\sqrt3)}", False),
    (r"(2\sqrt{2}, 1)", r"\boxed{(\sqrt{8}, 1)}", MV),  # element by element, the root by math-verify
    # ---- MATH: sets and lists of solutions (any order)
    (r"\{2,1\}", r"\boxed{\{1,2\}}", True),
    ("1, 2", r"\boxed{2, 1}", True),
    ("3, -2", r"\boxed{-2, 3}", True),
    ("3, 5", r"\boxed{x = 3, x = 5}", True),
    ("0.5, 1/3", r"\boxed{\frac12, \frac13}", True),
    (r"\{1, 2\}", r"\boxed{1, 2}", True),
    ("3, 5", r"$x = \boxed{3}$ or $x = \boxed{5}$", True),  # one box per listed value
    (r"\{3, 5\}", r"\boxed{5} and \boxed{3}", True),
    ("3, 5", r"\boxed{3} and \boxed{5} and \boxed{7}", False),  # three boxes for two values
    ("3, 5", r"\boxed{3} then \boxed{3, 5}", True),  # the last box alone states it
    ("(3, 5)", r"\boxed{3} and \boxed{5}", False),  # separate boxes state no order
    ("(1, 2)", r"\boxed{1, 2}", False),  # a bare list is not a tuple
    ("(1, 2)", r"\boxed{\{1,2\}}", False),
    ("1, 2", r"\boxed{1,2,3}", False),
    # ---- MATH: degrees, text units
    ("90", r"\boxed{90^\circ}", True),
    ("90", r"\boxed{90^{\circ}}", True),
    ("45", r"\boxed{45°}", True),
    (r"30^\circ", r"\boxed{30 \text{ degrees}}", True),
    (r"30^\circ", r"\boxed{30}", True),
    ("5", r"\boxed{5\textnormal{ miles}}", True),
    ("10", r"\boxed{10\text{ inches}}", True),
    (r"12\text{ inches}", r"\boxed{12}", True),
    (r"6\sqrt{2}", r"\boxed{6\sqrt{2}\text{ cm}}", True),
    ("5", r"\boxed{\text{5 cm}}", True),
    # ---- MATH: bases, text answers, variables
    ("1011_2", r"\boxed{1011_2}", True),
    ("1011_2", r"\boxed{1011_{2}}", True),
    ("1011_2", r"\boxed{1011}", False),
    ("1011_2", r"\boxed{11}", False),  # the base-2 numeral is asked for
    (r"\text{(C)}", r"\boxed{\text{(C)}}", True),
    (r"\text{(C)}", r"\boxed{C}", True),
    ("C", r"\boxed{(C)}", True),
    (r"\text{even}", r"\boxed{\textbf{even}}", True),
    (r"\text{even}", r"\boxed{\text{odd}}", False),
    ("5", r"\boxed{x = 5}", True),
    ("2x+3", r"\boxed{y=2x+3}", True),
    ("2x + 3", r"\boxed{2x+3}", True),
    ("3", r"\boxed{a_1 = 3}", True),
    (r"\frac{\pi}{4}", r"\boxed{\theta = \frac{\pi}{4}}", True),
    ("2", r"\boxed{2x}", False),
    (r"\infty", r"\boxed{\infty}", True),
    ("0.5", r"The final answer is $\frac{1}{2}$. I hope it is correct.", True),  # Minerva's form
    ("5", r"so $x = \boxed{5}$.", True),
    # ---- DAPO-Math-17k: integer answers, "Answer: 42"
    ("42", "Answer: 42", True),
    ("42", "Answer: $42$", True),
    ("42", "Answer: 42.", True),
    ("42", "**Answer:** 42", True),
    ("42", "Step 1: ...\nStep 2: ...\nAnswer: 41", False),
    ("-7", "Answer: -7", True),
    ("1000", "Answer: 1,000", True),
    ("2", "x = 2, so\nAnswer: 2", True),
    ("18", "The answer is 17.\nAnswer: 18", True),  # the later cue wins
    ("18", "Answer: 18\nWait, the answer is 17", False),
    ("5", r"Answer: \boxed{5}", True),
    ("0", "Answer: 0", True),
    ("100", "Answer: 10^2", MV),
    ("34", "So the sum is 34.\n\nAnswer: 34", True),
    ("34", "Answer: 34 (since 17 + 17)", False),  # words after the number void it
    ("7", "7", True),  # the built-in task answers with a bare number
    # ---- chat models: Markdown and LaTeX around the final answer
    ("7", "The answer is **7**.", True),
    ("7", "The answer is __7__.", True),
    ("42", "**Answer:**\n42", True),  # the cue ends its line: the next line with text
    ("42", "The final answer is:\n\n42", True),
    ("42", "Final answer:\n42", True),
    ("42", "**Final answer**: 42", True),
    ("42", "### Final Answer\n\n42", True),  # a heading that is only "Final Answer"
    ("42", "**Final Answer**\n\n42", True),
    ("7", "## Answer\n\n**7**", True),
    ("7", "#### Final Answer\nThe answer is 7.", True),  # a Markdown heading, not GSM8K's ####
    ("72", "####\n72", True),
    ("1000", r"The final answer is $\$1,000$.", True),  # \$ inside $...$ is a dollar sign
    ("42", "The answer is $$42$$.", True),
    ("42", "Answer: **$42$**", True),
    ("0.5", r"The answer is \( \frac{1}{2} \).", True),
    ("42", "**Answer:**\n\nMaybe 42, maybe 41", False),  # the next line must state the answer
    ("7", "#### Final Answer", False),  # a heading with nothing under it
    # ---- relations, equations and names
    ("2+3=5", r"\boxed{2 + 3 = 5}", True),  # the same statement
    ("5", r"\boxed{2+3=5}", False),  # even a true equation is not the value: box the value
    ("2x", r"\boxed{f(x) = 2x}", True),  # a function's name
    ("5", r"\boxed{x_{n+1} = 5}", True),
    ("5", r"\boxed{\overline{AB} = 5}", True),
    ("4", r"\boxed{\alpha = 4}", True),
    (r"x \ge 3", r"\boxed{3 \le x}", MV),  # both relations: math-verify compares them
    (r"\pm 3", r"\boxed{3, -3}", MV),
]


def test_table_sizes():
    assert len(ADVERSARIAL) >= 60 and len(TABLE) >= 150


@pytest.mark.parametrize("completion, reference", ADVERSARIAL)
def test_adversarial_scores_zero(completion, reference):
    assert math_reward(completion, reference) == 0.0


@pytest.mark.parametrize("reference, completion, expected", TABLE)
def test_table_builtin(reference, completion, expected):
    assert math_reward(completion, reference) == (1.0 if expected is True else 0.0)


@pytest.fixture(scope="module")
def math_verify_reward():
    pytest.importorskip("math_verify", reason="pip install math-verify")
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeouts log whole inputs
    reward_fn, description = make_verifier("math-verify")
    assert description.startswith("math-verify ")
    return reward_fn


@pytest.mark.parametrize("completion, reference", ADVERSARIAL)
def test_adversarial_scores_zero_with_math_verify(math_verify_reward, completion, reference):
    assert math_verify_reward(completion, reference) == 0.0


@pytest.mark.parametrize("reference, completion, expected", TABLE)
def test_table_with_math_verify(math_verify_reward, reference, completion, expected):
    assert math_verify_reward(completion, reference) == (0.0 if expected is False else 1.0)
