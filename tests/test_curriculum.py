import pytest

from curriculum import TwoPhaseCurriculum

LEVELS = [1, 1, 1, 2, 2, 4, 5, 5]  # prior difficulty (level - 1) / 4: 0, 0, 0, .25, .25, .75, 1, 1


def test_hard_first_switches_pools_with_the_phase():
    c = TwoPhaseCurriculum(LEVELS, order="hard-first", seed=0)
    for _ in range(20):
        assert set(c.sample(4, "stable")) == {4, 5, 6, 7}  # the harder half (ties broken by index)
        assert set(c.sample(4, "anneal")) == {0, 1, 2, 3}
    e = TwoPhaseCurriculum(LEVELS, order="easy-first", seed=0)
    assert set(e.sample(4, "stable")) == {0, 1, 2, 3} and set(e.sample(4, "anneal")) == {4, 5, 6, 7}


def test_off_draws_from_everything_and_oversized_requests_fall_back():
    c = TwoPhaseCurriculum(LEVELS, order="off", seed=0)
    seen = set()
    for _ in range(30):
        draw = c.sample(3, "stable")
        assert len(set(draw)) == 3  # without replacement
        seen |= set(draw)
    assert seen == set(range(8))
    h = TwoPhaseCurriculum(LEVELS, order="hard-first", seed=0)
    assert sorted(h.sample(6, "stable"))[-4:] == [4, 5, 6, 7] and len(set(h.sample(6, "stable"))) == 6


def test_online_difficulty_ema_by_hand():
    c = TwoPhaseCurriculum([None] * 4, order="hard-first", seed=0, ema=0.7)
    assert c.difficulty(0) == 0.5  # no label: neutral prior
    c.update([0, 1], [0.25, 1.0])
    assert c.difficulty(0) == pytest.approx(0.75) and c.difficulty(1) == pytest.approx(0.0)
    c.update([0], [0.75])
    assert c.difficulty(0) == pytest.approx(0.7 * 0.75 + 0.3 * 0.25)


def test_measured_difficulty_overrides_labels():
    c = TwoPhaseCurriculum([1, 1, 5, 5], order="hard-first", seed=0)
    c.update([0, 2], [0.1, 0.9])  # the "easy" prompt 0 fails, the "hard" prompt 2 is solved
    hard_pool = {i for i in range(4) if c.weights("stable")[i] > 0}
    assert 0 in hard_pool and 2 not in hard_pool


def test_saturated_prompts_are_down_weighted():
    # both pools weighted 1, so only the saturation rule acts
    c = TwoPhaseCurriculum([None] * 4, seed=0, saturated_weight=0.1, out_pool_weight=1.0)
    c.update([0, 1, 2], [1.0, 0.0, 0.5])  # always solved, never solved, informative
    assert c.weights("stable") == pytest.approx([0.1, 0.1, 1.0, 1.0])
    off = TwoPhaseCurriculum([None] * 4, order="off", seed=0)
    off.update([0, 1, 2], [1.0, 0.0, 0.5])
    assert off.weights("stable") == [1.0] * 4  # off is uniform
    counts = [0] * 4
    for _ in range(400):
        for i in c.sample(1, "stable"):
            counts[i] += 1
    assert counts[2] > 3 * counts[0] and counts[3] > 3 * counts[1]


def test_deterministic_and_resumable():
    a = TwoPhaseCurriculum(LEVELS, order="off", seed=7)
    b = TwoPhaseCurriculum(LEVELS, order="off", seed=7)
    assert [a.sample(3, "stable") for _ in range(5)] == [b.sample(3, "stable") for _ in range(5)]
    a.update([1, 2], [0.5, 0.0])
    state = a.state_dict()
    c = TwoPhaseCurriculum(LEVELS, order="off", seed=123)
    c.load_state_dict(state)
    assert [a.sample(3, "anneal") for _ in range(5)] == [c.sample(3, "anneal") for _ in range(5)]
    assert c.difficulty(2) == a.difficulty(2)


def test_bad_order():
    with pytest.raises(ValueError, match="hard-first"):
        TwoPhaseCurriculum(LEVELS, order="random")


def test_a_pool_smaller_than_the_batch_fills_up_at_random():
    """hard-first's stable pool is prompts 4-7; a batch of 6 takes all four and 2 of prompts 0-3,
    a different pair from draw to draw (not the two highest indices every time)."""
    c = TwoPhaseCurriculum(LEVELS, order="hard-first", seed=0)
    extras = set()
    for _ in range(50):
        draw = c.sample(6, "stable")
        assert len(set(draw)) == 6 and {4, 5, 6, 7} <= set(draw)
        extras.add(frozenset(draw) - {4, 5, 6, 7})
    assert len(extras) == 6  # every pair of C(4, 2) = 6 appears in 50 draws
    assert len(c.sample(20, "stable")) == 8  # more than there are: all of them
