import itertools
import math
from fractions import Fraction

import pytest

from eval_passk import pass_at_k, summarize


def exact(n, c, k):
    """1 - C(n-c, k) / C(n, k) in exact rational arithmetic."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (16, 1, 16),
                                     (100, 7, 10), (1024, 1, 1), (1024, 5, 512), (1024, 1000, 3),
                                     (1024, 0, 1024)])
def test_matches_exact_binomial_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), rel=1e-12, abs=1e-14)


def brute_force(n, c, k):
    """The definition itself: over every way to pick k of the n samples (the first c correct),
    the share of picks that hold at least one correct sample."""
    picks = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in pick) for pick in picks) / len(picks)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_matches_brute_force_enumeration_of_k_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_hand_worked_values():
    assert pass_at_k(4, 1, 2) == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the fraction correct
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every k-subset has a correct sample


def test_k_larger_than_n_is_a_clear_error():
    with pytest.raises(ValueError, match=r"pass@8 needs 1 <= k <= n = 4"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_summarize_averages_over_prompts():
    out = summarize([0, 4, 1], n=4, ks=[1, 2])
    assert out["pass@1"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert out["pass@2"] == pytest.approx((0 + 1 + 0.5) / 3)
