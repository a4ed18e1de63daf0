"""make_verifier: which reward function --verifier gives, with math-verify installed and without."""
import logging
import re
import signal
import sys
import threading
import time

import pytest

from reward import make_verifier, math_reward
from test_reward_tables import ADVERSARIAL, MV, TABLE


@pytest.fixture
def no_math_verify(monkeypatch):
    """Simulate an environment where math-verify is not installed: importing it fails."""
    monkeypatch.setitem(sys.modules, "math_verify", None)


@pytest.fixture
def real_math_verify():
    pytest.importorskip("math_verify", reason="pip install math-verify")
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeouts log whole inputs


def test_builtin_is_math_reward():
    assert make_verifier("builtin") == (math_reward, "built-in rule")


def test_auto_without_math_verify_is_the_builtin_rule(no_math_verify):
    reward_fn, description = make_verifier("auto")
    assert description == "built-in rule (math-verify not installed)"
    for completion, reference in ADVERSARIAL:
        assert reward_fn(completion, reference) == 0.0, (completion, reference)
    for reference, completion, expected in TABLE:
        assert reward_fn(completion, reference) == (1.0 if expected is True else 0.0), (reference, completion)
        # asking for math-verify when it is absent changes nothing
        assert math_reward(completion, reference, use_math_verify=True) == reward_fn(completion, reference)


def test_math_verify_not_installed_names_the_flag_and_the_fix(no_math_verify):
    with pytest.raises(ValueError, match=r"--verifier math-verify.*pip install math-verify"):
        make_verifier("math-verify")


def test_bad_name_and_timeout_are_rejected():
    with pytest.raises(ValueError, match=r"--verifier 'sympy': choose one of builtin, math-verify, auto"):
        make_verifier("sympy")
    with pytest.raises(ValueError, match="timeout_s must be a number of seconds > 0"):
        make_verifier("builtin", timeout_s=0)


def test_auto_with_math_verify(real_math_verify):
    reward_fn, description = make_verifier("auto")
    assert re.fullmatch(r"math-verify \S+ \(timeout 5 s\), built-in rule first", description)
    assert make_verifier("math-verify")[1] == description
    # signal.alarm counts whole seconds: 0.5 s is rounded up to 1, and passed on as an int
    reward_fn, description = make_verifier("math-verify", timeout_s=0.5)
    assert "(timeout 1 s)" in description and reward_fn.keywords["timeout_s"] == 1
    assert reward_fn(r"\boxed{\sqrt{8}}", r"2\sqrt{2}") == 1.0  # symbolic: math-verify's call
    assert reward_fn(r"\boxed{3 \text{ or more}}", "3") == 0.0  # the rule's "different" is final


def test_math_verify_is_not_asked_from_another_thread(real_math_verify):
    """Its SIGALRM timeouts raise outside the main thread; there the rule alone decides."""
    reward_fn, _ = make_verifier("math-verify")
    results = {}

    def score():
        results["rule"] = reward_fn(r"\boxed{\frac{1}{2}}", "0.5")
        results["symbolic"] = reward_fn(r"\boxed{\sqrt{8}}", r"2\sqrt{2}")

    worker = threading.Thread(target=score)
    worker.start()
    worker.join()
    assert results == {"rule": 1.0, "symbolic": 0.0}


def test_math_verify_timeout_is_bounded_and_leaves_no_alarm(real_math_verify):
    reward_fn, _ = make_verifier("math-verify", timeout_s=1)
    handler = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    assert reward_fn(r"\boxed{9^{9^{9}}}", "5") == 0.0  # sympy cannot finish: the timeout stops it
    assert time.perf_counter() - start < 6 * 1 + 1  # 2 parses + at most 4 comparisons, 1 s each
    assert signal.getsignal(signal.SIGALRM) is handler and signal.alarm(0) == 0


def test_math_verify_mode_never_raises_on_junk(real_math_verify):
    reward_fn, _ = make_verifier("math-verify", timeout_s=1)
    for completion in [None, b"\x00", r"\boxed{\frac{", r"\boxed{" + "(" * 300 + "}", r"\boxed{\left(}",
                       r"\boxed{x^{" * 50, r"\boxed{\begin{pmatrix}1\end{pmatrix}}", r"\boxed{$}"]:
        assert reward_fn(completion, r"\sqrt{2}") in (0.0, 1.0)


def test_math_verify_only_adds_the_table_positives_marked_mv(real_math_verify):
    """Checked against the rule alone: the entries where the two differ are exactly the MV ones."""
    reward_fn, _ = make_verifier("math-verify")
    differ = [(reference, completion) for reference, completion, _ in TABLE
              if reward_fn(completion, reference) != math_reward(completion, reference)]
    assert differ == [(reference, completion) for reference, completion, expected in TABLE if expected == MV]
