"""GRPO / DAPO / Dr. GRPO policy losses as pure functions of tensors.

One RL step scores G completions per prompt, turns rewards into advantages, and minimises a
PPO-style clipped surrogate (Schulman et al. 2017) over the completion tokens:

  advantages (GRPO, Shao et al. 2024):  A_i = (R_i - mean(R_group)) / (std(R_group) + eps)
             (Dr. GRPO, Liu et al. 2025): A_i =  R_i - mean(R_group)
  ratio:   r_t = exp(logp_t - old_logp_t)
  token loss (DAPO Eq. 10, clip-higher): L_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high))
  dual-clip (Ye et al. 2020), for A < 0:  L_t = min(L_t, -A c)
  aggregation over the batch (verl's loss_agg_mode):
    "token-mean"               sum_{i,t} L m / sum_{i,t} m            (DAPO: long answers count more)
    "seq-mean-token-mean"      mean_i( sum_t L m / sum_t m )          (original GRPO)
    "seq-mean-token-sum-norm"  sum_{i,t} L m / (num_seqs * max_len)   (Dr. GRPO: no length bias)

Every denominator can be passed in (`num_tokens`, `num_seqs`), so that a trainer with several ranks
or micro-batches divides by the GLOBAL count and its objective does not depend on how the batch
is split (OpenRLHF pins the same with a test; so does tests/test_loss.py).

Optional terms that steer entropy, the quantity the Entropy Scheduling paper controls:
  * `entropy_coef`: loss -= coef * agg(H) (Skywork-OR1's adaptive entropy bonus);
  * `pos_weight` / `neg_weight`: scale positive and negative advantages apart (EntroPIC, arXiv
    2511.15248): positive samples sharpen the policy (entropy down), negative ones flatten it (up);
  * `cov_method`: Clip-Cov or KL-Cov (Cui et al. 2025, arXiv 2505.22617), which restrain the few
    tokens whose covariance of log-prob and advantage drives entropy down (`covariance`).
And two corrections: a KL penalty to a reference policy (`kl_coef`, estimators k1 / k2 / k3), and
truncated importance sampling for the mismatch between the sampler and the trainer
(`truncated_is_weights`, Yao et al. 2025):

    w_t = min(pi_old(o_t) / pi_sampler(o_t), C),   L_t <- w_t L_t   (w detached)

Left out: a value function (GRPO's group baseline replaces PPO's critic) and sequence-level
ratios (GSPO).

Copyable alone: imports torch only.
"""
from __future__ import annotations

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std",
                     eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages, one per completion; completions of a prompt are adjacent.

    scale="std": GRPO's (R - mean) / (std + eps), unbiased std as in verl; scale="none": Dr. GRPO.

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), group_size=4, scale="none")
    tensor([ 0.7500, -0.2500, -0.2500, -0.2500])
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)  # (num_groups, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "std":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    return centred.view(-1)  # (B,)


def groups_with_signal(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic sampling: True for groups whose rewards are not all equal (std > 0).

    A group that is all right or all wrong has zero advantage everywhere and teaches nothing.

    >>> groups_with_signal(torch.tensor([1., 1., 0., 1.]), group_size=2)
    tensor([False,  True])
    """
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > 0  # (num_groups,)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              num_tokens: float | torch.Tensor | None = None,
              num_seqs: float | torch.Tensor | None = None,
              max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token values (B, T) under `mask` (B, T) to a scalar (see the module docstring).

    `num_tokens` / `num_seqs` default to this batch's counts; pass the global counts of the whole
    step (all ranks, all micro-batches) and summing the results over the pieces gives the value of
    the whole batch. `max_len` (Dr. GRPO's constant) defaults to T.
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        denominator = mask.sum() if num_tokens is None else num_tokens
        return (values * mask).sum() / denominator
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
        return per_seq.sum() / (values.shape[0] if num_seqs is None else num_seqs)
    if mode == "seq-mean-token-sum-norm":
        seqs = values.shape[0] if num_seqs is None else num_seqs
        return (values * mask).sum() / (seqs * (max_len or values.shape[1]))
    raise ValueError(f"loss aggregation must be one of {LOSS_AGG_MODES}, got {mode!r}")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL").

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) + log r - 1, with log r = logp - ref_logp
    (k3 is verl's "low_var_kl"; log r clamped to +-20 and k3 to +-10 as there).
    """
    log_ratio = (logprobs - ref_logprobs).clamp(-20, 20)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return (torch.exp(-log_ratio) + log_ratio - 1).clamp(-10, 10)
    raise ValueError(f"KL estimator must be k1, k2 or k3, got {kind!r}")


COV_METHODS = ("none", "clip-cov", "kl-cov")
COV_DEFAULTS = {"clip-cov": 2e-4, "kl-cov": 2e-4}  # the ratio of tokens restrained (verl's defaults)
CLIP_COV_BAND = (1.0, 5.0)  # Clip-Cov picks among tokens with lb < cov < ub
KL_COV_COEF = 1.0  # KL-Cov's coefficient of |log r|


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28,
                dual_clip: float | None = None, loss_agg: str = "token-mean",
                num_tokens: float | torch.Tensor | None = None,
                num_seqs: float | torch.Tensor | None = None, max_len: int | None = None,
                entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
                pos_weight: float = 1.0, neg_weight: float = 1.0,
                ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0,
                kl_estimator: str = "k3", is_weights: torch.Tensor | None = None,
                cov_method: str = "none",
                cov_ratio: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy-gradient loss and its statistics.

    logprobs, old_logprobs, mask, entropy, ref_logprobs, is_weights: (B, T); advantages: (B,) or
    (B, T). With clip_low = clip_high = 0.2 this is GRPO's / PPO's clip; DAPO's clip-higher is
    0.2 / 0.28. `is_weights` (detached, e.g. `truncated_is_weights`) multiply each token's loss.
    `cov_method` "clip-cov" / "kl-cov" restrain a `cov_ratio` share of the tokens by covariance
    (Cui et al.; see `covariance`; KL-Cov replaces the clip by its penalty, as verl does).
    Returns (loss, stats); stats are 0-dim tensors (no host read: the caller reads them when it
    logs), masked token means over this batch: clipfrac (any clip),
    clipfrac_high / clipfrac_low (ratio above 1 + eps_high with A > 0 / below 1 - eps_low with
    A < 0), approx_kl = mean(old_logp - logp), cov_frac (tokens Clip-Cov / KL-Cov restrained),
    and entropy / kl when given; clip_high_mass = mean(p_old * [clipped at the upper bound]):
    divided by clipfrac_high, the mean old probability of the tokens eps_high holds back. Only a
    token with p_old < 1 / (1 + eps_high) can reach that bound (r <= 1 / p_old); DAPO (section
    3.1) finds p < 0.2 for them.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1): one advantage for every token of a sequence
    # EntroPIC-style balance: weight positive and negative samples apart (1.0 / 1.0 = off).
    advantages = torch.where(advantages > 0, advantages * pos_weight, advantages * neg_weight)

    log_ratio = (logprobs - old_logprobs).clamp(-20, 20)  # (B, T); clamp as verl, against overflow
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    token_loss = torch.maximum(unclipped, clipped)  # (B, T), DAPO Eq. 10
    if dual_clip is not None:  # bound the loss of a negative sample whose ratio has exploded
        token_loss = torch.where(advantages < 0, torch.minimum(token_loss, -advantages * dual_clip),
                                 token_loss)
    restrained = torch.zeros_like(mask, dtype=torch.bool)  # (B, T): tokens Clip-Cov / KL-Cov picked
    if cov_method != "none":
        if cov_method not in COV_METHODS:
            raise ValueError(f"cov_method must be one of {COV_METHODS}, got {cov_method!r}")
        ratio_of_tokens = COV_DEFAULTS[cov_method] if cov_ratio is None else cov_ratio
        cov = covariance(advantages.expand_as(logprobs), logprobs, mask)  # (B, T), detached
        if cov_method == "clip-cov":  # no gradient through a random few tokens of the band
            restrained = clip_cov_tokens(cov, mask.bool(), clipped > unclipped, ratio_of_tokens)
            token_loss = torch.where(restrained, 0.0, token_loss)
        else:  # KL-Cov: unclipped surrogate, |log r| penalised on the highest-covariance tokens
            restrained = kl_cov_tokens(cov, mask.bool(), ratio_of_tokens)
            token_loss = torch.where(restrained, unclipped + KL_COV_COEF * log_ratio.abs(), unclipped)
    if is_weights is not None:  # truncated importance sampling: correct for the sampler's mismatch
        token_loss = token_loss * is_weights

    def agg(values):
        return aggregate(values, mask, loss_agg, num_tokens, num_seqs, max_len)

    loss = agg(token_loss)
    if entropy is not None and entropy_coef != 0.0:
        loss = loss - entropy_coef * agg(entropy)  # bonus: minimising loss raises entropy
    if ref_logprobs is not None and kl_coef != 0.0:
        loss = loss + kl_coef * agg(kl_estimate(logprobs, ref_logprobs, kl_estimator))

    with torch.no_grad():
        m = mask.float()
        tokens = m.sum().clamp(min=1)

        def mean(x):
            return (x.float() * m).sum() / tokens

        clipped_high = (ratio > 1 + clip_high) & (advantages > 0)  # (B, T)
        stats = {
            "clipfrac": mean(clipped > unclipped),
            "clipfrac_high": mean(clipped_high),
            "clip_high_mass": mean(clipped_high * old_logprobs.exp()),
            "clipfrac_low": mean((ratio < 1 - clip_low) & (advantages < 0)),
            "approx_kl": mean(-log_ratio),
        }
        if cov_method != "none":
            stats["cov_frac"] = mean(restrained)
        if entropy is not None:
            stats["entropy"] = mean(entropy)
        if ref_logprobs is not None:
            stats["kl"] = mean(kl_estimate(logprobs, ref_logprobs, kl_estimator))
    return loss, stats


# ----------------------------------------------------------------------------- entropy management
def covariance(advantages: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token cov_t = (A_t - mean A)(log pi_t - mean log pi), means over the masked tokens
    (Cui et al. 2025: entropy changes by about -eta Cov(log pi, A) per step, so the tokens of large
    covariance are the ones driving it down). Detached; (B, T) in, (B, T) out.

    >>> covariance(torch.tensor([[1., -1.]]), torch.tensor([[-0.5, -1.5]]), torch.ones(1, 2))
    tensor([[0.5000, 0.5000]])
    """
    m = mask.to(logprobs.dtype)
    count = m.sum().clamp(min=1)
    a, logp = advantages.detach(), logprobs.detach()
    return (a - (a * m).sum() / count) * (logp - (logp * m).sum() / count)


def clip_cov_tokens(cov: torch.Tensor, valid: torch.Tensor, clipped: torch.Tensor, ratio: float,
                    band: tuple[float, float] = CLIP_COV_BAND) -> torch.Tensor:
    """Clip-Cov's choice, (B, T) bool: max(1, floor(ratio x valid tokens)) tokens drawn at random
    (torch's generator) among the valid ones that PPO's clip left alone and whose covariance lies
    inside `band`; fewer when fewer qualify.

    >>> cov = torch.tensor([[0.5, 2.0, 9.0, 3.0]])
    >>> clip_cov_tokens(cov, torch.ones(1, 4, dtype=torch.bool), torch.tensor([[0, 0, 0, 1]]).bool(), 0.25)
    tensor([[False,  True, False, False]])
    """
    in_band = valid & ~clipped & (cov > band[0]) & (cov < band[1])
    draw = torch.where(in_band, torch.rand(cov.shape, device=cov.device), -1.0)  # (B, T)
    return in_band & (_rank(draw) < _token_count(valid, ratio))  # a uniform random subset


def kl_cov_tokens(cov: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov's choice, (B, T) bool: the max(1, floor(ratio x valid tokens)) valid tokens of
    largest covariance.

    >>> kl_cov_tokens(torch.tensor([[3., 1., 2.]]), torch.tensor([[True, True, True]]), 0.5)
    tensor([[ True, False, False]])
    """
    return valid & (_rank(torch.where(valid, cov, -torch.inf)) < _token_count(valid, ratio))


def _token_count(valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """max(1, floor(ratio x valid tokens)), a 0-dim tensor: counted on the device, never read."""
    return (valid.sum(dtype=torch.float64) * ratio).floor().clamp(min=1)


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """Each element's place in descending order, 0 for the largest, same shape: a top-k whose k
    stays on the device (`topk` would need it on the host)."""
    order = scores.flatten().argsort(descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank.view_as(scores)


# ----------------------------------------------------------------------------- the sampler's mismatch
def truncated_is_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """Token-level truncated importance sampling (TIS; verl, OpenRLHF, TRL's token_truncate):
    w_t = min(pi_old(o_t) / pi_sampler(o_t), cap), detached. The sampler (vLLM, bf16 kernels, top-p)
    is not exactly the policy the loss scores; w reweights each token toward the trainer's policy.

    >>> old, sampler = torch.tensor([[0.5, 0.2]]).log(), torch.tensor([[0.25, 0.4]]).log()
    >>> truncated_is_weights(old, sampler, cap=1.5)  # 0.5 / 0.25 = 2 -> 1.5; 0.2 / 0.4 = 0.5
    tensor([[1.5000, 0.5000]])
    """
    return torch.exp(old_logprobs - sampler_logprobs).clamp(max=cap).detach()

