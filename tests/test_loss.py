import math

import pytest
import torch

from loss import aggregate, group_advantages, groups_with_signal, kl_estimate, policy_loss


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
