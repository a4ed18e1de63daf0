import math

import pytest
import torch

from loss import (aggregate, covariance, group_advantages, groups_with_signal, kl_estimate, policy_loss,
                  truncated_is_weights)


def test_grpo_advantages_by_hand():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3)
    adv = group_advantages(torch.tensor([1., 0., 0., 1., 2., 2., 2., 2.]), 4, "std", eps=0.0 + 1e-6)
    s = math.sqrt(1 / 3)
    assert adv[:4].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s], rel=1e-5)
    assert adv[4:].tolist() == [0.0] * 4  # equal rewards: zero advantage, no NaN
    dr = group_advantages(torch.tensor([3., 1.]), 2, "none")
    assert dr.tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)


def test_dynamic_sampling_keeps_groups_with_signal():
    keep = groups_with_signal(torch.tensor([1., 1., 0., 0., 1., 0.]), 2)
    assert keep.tolist() == [False, False, True]


def test_ratio_is_exactly_one_on_policy():
    torch.manual_seed(0)
    logp = torch.randn(3, 5)
    adv = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.ones(3, 5)
    loss, stats = policy_loss(logp, logp.clone(), adv, mask, clip_low=0.2, clip_high=0.28)
    # r = 1 everywhere: L_t = -A, token-mean over 15 tokens
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 0.5) * 5 / 15)
    assert stats["clipfrac"] == 0.0 and stats["approx_kl"] == 0.0


def test_clip_higher_by_hand():
    # one sequence, 4 tokens; ratios e^{log r}
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 1.25, 0.5, 1.0]]))
    mask = torch.ones(1, 4)
    # A = +1: L_t = max(-r, -clip(r, 0.8, 1.28)) = -min(r, clip(r)) -> [-1.28, -1.25, -0.5, -1.0]
    loss, stats = policy_loss(new, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 1.25 - 0.5 - 1.0) / 4)
    assert stats["clipfrac"] == pytest.approx(0.25) and stats["clipfrac_high"] == pytest.approx(0.25)
    # A = -1: L_t = max(r, clip(r)) -> [1.5, 1.25, 0.8, 1.0]
    loss, stats = policy_loss(new, old, torch.tensor([-1.0]), mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((1.5 + 1.25 + 0.8 + 1.0) / 4)
    assert stats["clipfrac_low"] == pytest.approx(0.25)
    # dual-clip c = 1.3 caps the negative-advantage loss at -A * c = 1.3
    loss, _ = policy_loss(new, old, torch.tensor([-1.0]), mask, dual_clip=1.3)
    assert loss.item() == pytest.approx((1.3 + 1.25 + 0.8 + 1.0) / 4)


def test_clipped_tokens_get_no_gradient():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = policy_loss(new, old, torch.tensor([1.0]), torch.ones(1, 2), clip_high=0.28)
    loss.backward()
    # d/dlogp of -r/2 is -r/2 for the unclipped token, 0 for the clipped one
    assert new.grad[0].tolist() == pytest.approx([0.0, -1.1 / 2])


def slow_aggregate(values, mask, mode, max_len):
    """Loops over sequences and tokens, straight from the formulas."""
    rows = [[v for v, m in zip(vr, mr) if m] for vr, mr in zip(values.tolist(), mask.tolist())]
    if mode == "token-mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(sum(r) for r in rows) / (len(rows) * max_len)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregations_against_slow_reference(mode):
    values = torch.tensor([[1., 2., 3., 4.], [10., 20., 30., 40.], [5., 5., 5., 5.]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    assert aggregate(values, mask, mode, max_len=6).item() == pytest.approx(
        slow_aggregate(values, mask, mode, 6))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_global_denominator_makes_split_invariant(mode):
    """Summing pieces normalised by the global counts equals the whole batch (any split)."""
    torch.manual_seed(1)
    values = torch.randn(8, 6)
    mask = (torch.rand(8, 6) > 0.3).long()
    mask[:, 0] = 1
    whole = aggregate(values, mask, mode, max_len=6)
    for split in ([4, 4], [1, 2, 5], [8]):
        pieces = torch.split(torch.arange(8), split)
        total = sum(aggregate(values[p], mask[p], mode, num_tokens=mask.sum(), num_seqs=8, max_len=6)
                    for p in pieces)
        assert total.item() == pytest.approx(whole.item(), rel=1e-6)
    # while the local mean of token-mean pieces would NOT be invariant:
    if mode == "token-mean":
        p = torch.split(torch.arange(8), [1, 7])
        local = sum(aggregate(values[i], mask[i], mode) for i in p) / 2
        assert abs(local.item() - whole.item()) > 1e-3


def test_entropy_bonus_and_balance_and_kl():
    logp = torch.zeros(2, 3)
    mask = torch.ones(2, 3)
    entropy = torch.full((2, 3), 0.5)
    base, _ = policy_loss(logp, logp, torch.tensor([1.0, -1.0]), mask)
    with_bonus, stats = policy_loss(logp, logp, torch.tensor([1.0, -1.0]), mask, entropy=entropy,
                                    entropy_coef=0.1)
    assert with_bonus.item() == pytest.approx(base.item() - 0.1 * 0.5)
    assert stats["entropy"] == pytest.approx(0.5)
    # balance: pos weight 0.5, neg weight 1.5 -> L = (-0.5 * 3 + 1.5 * 3) / 6
    balanced, _ = policy_loss(logp, logp, torch.tensor([1.0, -1.0]), mask, pos_weight=0.5, neg_weight=1.5)
    assert balanced.item() == pytest.approx((-1.5 + 4.5) / 6)
    ref = torch.full((2, 3), math.log(0.5))
    with_kl, stats = policy_loss(logp, logp, torch.tensor([1.0, -1.0]), mask, ref_logprobs=ref,
                                 kl_coef=0.1, kl_estimator="k1")
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * math.log(2))


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2)  # log r
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(d * d / 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + d - 1)
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_truncated_importance_sampling_weights_each_token_loss():
    """TIS by hand: on-policy ratios (r = 1), A = (1, -1), token-mean over 4 tokens. The sampler
    gave the tokens probabilities 0.5, 0.1 | 0.4, 0.2 where the trainer has 0.5, 0.3 | 0.2, 0.2:
    w = 1, 3 -> capped at 2, | 0.5, 1, so L = (-1*1 - 1*2 + 1*0.5 + 1*1) / 4."""
    old = torch.tensor([[0.5, 0.3], [0.2, 0.2]]).log()
    sampler = torch.tensor([[0.5, 0.1], [0.4, 0.2]]).log()
    weights = truncated_is_weights(old, sampler, cap=2.0)
    assert weights.flatten().tolist() == pytest.approx([1.0, 2.0, 0.5, 1.0])
    loss, _ = policy_loss(old, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2), is_weights=weights)
    assert loss.item() == pytest.approx((-1 - 2 + 0.5 + 1) / 4)
    plain, _ = policy_loss(old, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2))
    assert plain.item() == pytest.approx(0.0)  # without the weights the centred surrogate is 0


def test_covariance_and_kl_cov_by_hand():
    """Two sequences of 2 tokens, A = (2, -2), log pi = (-1, -3 | -2, -2): mean A = 0, mean
    log pi = -2, so cov = A (log pi + 2) = (2, -2 | 0, 0). KL-Cov with ratio 0.25 restrains
    max(1, int(0.25 * 4)) = 1 token, the first (cov 2): its loss is -A r + |log r|, the others the
    unclipped -A r (no PPO clip in KL-Cov)."""
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -3.0], [-2.0, -1.0]])  # log r = 0.5, 0 | 0, -1
    adv, mask = torch.tensor([2.0, -2.0]), torch.ones(2, 2)
    cov = covariance(adv[:, None].expand(2, 2), logp, mask)
    assert cov.flatten().tolist() == pytest.approx([2.0, -2.0, 0.0, 0.0])
    loss, stats = policy_loss(logp, old, adv, mask, cov_method="kl-cov", cov_ratio=0.25)
    r = [math.exp(0.5), 1.0, 1.0, math.exp(-1.0)]
    expected = (-2 * r[0] + 0.5) + (-2 * r[1]) + (2 * r[2]) + (2 * r[3])  # no clip at 1.28 or 0.8
    assert loss.item() == pytest.approx(expected / 4)
    assert stats["cov_frac"] == pytest.approx(0.25)


def test_clip_cov_stops_the_gradient_of_one_token_in_the_band():
    """cov = (2, -2 | 0, 0) as above; the band (1, 5) holds only the first token, and PPO's clip
    leaves it alone (r = 1): Clip-Cov zeroes its loss and gradient, and nothing else changes."""
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]], requires_grad=True)
    adv, mask = torch.tensor([2.0, -2.0]), torch.ones(2, 2)
    loss, stats = policy_loss(logp, logp.detach(), adv, mask, cov_method="clip-cov", cov_ratio=0.25)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-2 / 4) and logp.grad[1, 0].item() == pytest.approx(2 / 4)
    assert loss.item() == pytest.approx((-2 + 2 + 2) / 4) and stats["cov_frac"] == pytest.approx(0.25)


def test_cov_methods_restrain_their_share_of_the_valid_tokens():
    """50 tokens, the 10 of largest covariance masked out: 40 valid, ratio 0.1 -> 4 restrained.
    KL-Cov takes the 4 valid tokens of largest covariance. Clip-Cov draws 4 of the 20 in its band
    (1, 5), each equally likely: over 1000 draws each is picked 200 times in expectation
    (sd 12.6); with only 3 in the band it takes those 3."""
    from loss import clip_cov_tokens, kl_cov_tokens

    cov = torch.arange(50.0).view(5, 10) / 10  # 0.0 .. 4.9
    valid = torch.ones(5, 10, dtype=torch.bool)
    valid.view(-1)[40:] = False
    picked = kl_cov_tokens(cov, valid, 0.1)
    assert picked.view(-1).nonzero().squeeze(1).tolist() == [36, 37, 38, 39]
    in_band = (cov > 1.0) & (cov < 5.0) & valid  # 1.1 .. 3.9 valid: 29 tokens; clip 9 of them
    clipped = torch.zeros(5, 10, dtype=torch.bool)
    clipped.view(-1)[11:20] = True
    assert int((in_band & ~clipped).sum()) == 20
    torch.manual_seed(0)
    times = torch.zeros(50)
    for _ in range(1000):
        chosen = clip_cov_tokens(cov, valid, clipped, 0.1)
        assert int(chosen.sum()) == 4 and not (chosen & ~(in_band & ~clipped)).any()
        times += chosen.view(-1).float()
    assert times[(in_band & ~clipped).view(-1)].sub(200).abs().max() < 50  # 4 sd
    three = torch.zeros(5, 10, dtype=torch.bool)
    three.view(-1)[[20, 25, 30]] = True  # a band of 3 tokens: fewer than 4 qualify
    assert torch.equal(clip_cov_tokens(cov, valid, ~three, 0.1), three)


def test_clip_high_mass_is_the_old_probability_of_the_tokens_clipped_at_the_upper_bound():
    # old probabilities 0.1, 0.4, 0.5, 0.9; ratios 3, 2, 1.1, 1.02; eps_high 0.28
    old = torch.log(torch.tensor([[0.1, 0.4, 0.5, 0.9]]))
    new = old + torch.log(torch.tensor([[3.0, 2.0, 1.1, 1.02]]))
    mask = torch.ones(1, 4)
    _, stats = policy_loss(new, old, torch.tensor([1.0]), mask, clip_high=0.28)
    assert stats["clipfrac_high"] == pytest.approx(0.5)  # the first two tokens
    assert stats["clip_high_mass"] / stats["clipfrac_high"] == pytest.approx((0.1 + 0.4) / 2)
    # eps_high 0.05 clips the third too (1.02 is not above 1.05)
    _, stats = policy_loss(new, old, torch.tensor([1.0]), mask, clip_high=0.05)
    assert stats["clip_high_mass"] / stats["clipfrac_high"] == pytest.approx((0.1 + 0.4 + 0.5) / 3)
    # a masked token never counts
    _, stats = policy_loss(new, old, torch.tensor([1.0]), torch.tensor([[0.0, 1.0, 1.0, 1.0]]),
                           clip_high=0.28)
    assert stats["clip_high_mass"] / stats["clipfrac_high"] == pytest.approx(0.4)
    # nothing clipped (negative advantage): no mass
    _, stats = policy_loss(new, old, torch.tensor([-1.0]), mask, clip_high=0.28)
    assert stats["clip_high_mass"] == 0.0 and stats["clipfrac_high"] == 0.0


@pytest.mark.slow
def test_clip_high_steers_a_reward_neutral_fork_only_when_ratios_move():
    """benchmarks/clip_high_fork_sim.py: a fork whose choice the reward ignores. With one pass the
    ratios stay inside [0.8, 1.28]: eps_high 0.28 and 1.0 give the same trajectory. With four
    passes eps_high 0.05 collapses the fork that 1.0 keeps near its start."""
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.clip_high_fork_sim import simulate

    w = (8, 4, 2, 2, 1, 1, 1, 1)
    one_pass = [simulate(eps, 0.03, 1, 4, 40, 0, w, prompts=32) for eps in (0.28, 1.0)]
    assert one_pass[0] == one_pass[1]
    h0 = one_pass[0][0]
    low, high = [sum(simulate(eps, 0.03, 4, 4, 60, seed, w, prompts=32)[-1] for seed in (0, 1)) / 2
                 for eps in (0.05, 1.0)]
    assert low < 0.5 * h0 < high, (low, high, h0)


# ----------------------------------------------------------------------------- padding, off-policy
# The batches below have a padded token: in a real batch a completion that stopped early is padded
# to the longest one, and the model's log-prob there is garbage (here -20 or -4, chosen so that
# counting it would change the answer). Every expected value is worked out over the 3 real tokens.
PAD_LOGP = torch.tensor([[-1.0, -1.0], [-3.0, -20.0]])  # (2, 2); [1, 1] is padding
PAD_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
PAD_ADV = torch.tensor([1.0, -1.0])


def test_covariance_means_are_over_the_real_tokens_only():
    """Real tokens (A, log pi): (1, -1), (1, -1), (-1, -3): mean A = 1/3, mean log pi = -5/3, so
    cov = (A - 1/3)(log pi + 5/3) = 4/9, 4/9 | 16/9. Means over all 4 positions would give mean
    A = 0 and mean log pi = -25/4: cov 5.25, 5.25 | -3.25."""
    cov = covariance(PAD_ADV[:, None].expand(2, 2), PAD_LOGP, PAD_MASK)
    assert cov[PAD_MASK.bool()].tolist() == pytest.approx([4 / 9, 4 / 9, 16 / 9])


def test_kl_cov_picks_by_the_masked_covariance_and_never_a_padded_token():
    """cov as above; the padded token's would be (-4/3)(-20 + 5/3) = 24.4, the largest. KL-Cov
    with ratio 0.34 restrains int(0.34 x 3) = 1 real token: [1, 0] (16/9). Its ratio is e^-0.5
    (old log-prob 0.5 above the new), so its loss is -A r + |log r| = e^-0.5 + 0.5; the other two
    are on-policy with A = 1: -1 each. Token-mean over the 3 real tokens."""
    old = PAD_LOGP + torch.tensor([[0.0, 0.0], [0.5, 0.0]])
    loss, stats = policy_loss(PAD_LOGP, old, PAD_ADV, PAD_MASK, cov_method="kl-cov", cov_ratio=0.34)
    assert loss.item() == pytest.approx((-1 - 1 + math.exp(-0.5) + 0.5) / 3)
    assert float(stats["cov_frac"]) == pytest.approx(1 / 3)


def test_clip_cov_picks_by_the_masked_covariance_and_never_a_padded_token():
    """The padded token's log-prob is -4 here, so its covariance (-4/3)(-4 + 5/3) = 28/9 lies in
    Clip-Cov's band (1, 5) beside the one real token there, [1, 0] (16/9; the others are 4/9).
    Whatever the random draw, [1, 0] is the token restrained: its loss and gradient are 0, and
    the loss is (-1 - 1 + 0) / 3."""
    logp = torch.tensor([[-1.0, -1.0], [-3.0, -4.0]])
    for seed in range(20):
        torch.manual_seed(seed)
        new = logp.clone().requires_grad_()
        loss, stats = policy_loss(new, logp, PAD_ADV, PAD_MASK, cov_method="clip-cov", cov_ratio=0.34)
        loss.backward()
        assert loss.item() == pytest.approx(-2 / 3) and float(stats["cov_frac"]) == pytest.approx(1 / 3)
        assert new.grad.flatten().tolist() == pytest.approx([-1 / 3, -1 / 3, 0.0, 0.0])


def test_off_policy_statistics_by_hand():
    """log r = logp - old_logp = 0.2, -0.4 | 0.6, (padding): approx_kl = mean(old_logp - logp)
    = -(0.2 - 0.4 + 0.6) / 3, the k1 estimate of KL(pi_old || pi) from samples of pi_old. Ratios
    e^0.2 = 1.22, e^-0.4 = 0.67 | e^0.6 = 1.82: with A = +1 the upper bound 1.28 clips the third
    token and nothing reaches the lower one (for A > 0, min(r, clip(r)) = r below 1 - eps_low);
    with A = -1 only the lower bound clips, the second token."""
    log_ratio = torch.tensor([[0.2, -0.4], [0.6, 9.0]])  # 9.0: padding, would dominate any mean
    old = torch.zeros(2, 2)
    for sign in (1.0, -1.0):
        _, stats = policy_loss(log_ratio, old, torch.tensor([sign, sign]), PAD_MASK, clip_low=0.2,
                               clip_high=0.28)
        assert float(stats["approx_kl"]) == pytest.approx(-0.4 / 3)
        high, low = (1 / 3, 0.0) if sign > 0 else (0.0, 1 / 3)
        assert float(stats["clipfrac_high"]) == pytest.approx(high)
        assert float(stats["clipfrac_low"]) == pytest.approx(low)
        assert float(stats["clipfrac"]) == pytest.approx(1 / 3)
