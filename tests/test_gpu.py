"""What only a GPU can show: the bf16 kernels against float64, and the RL step on CUDA.

    python -m pytest -q -m gpu tests/test_gpu.py    # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py LOG_DIR          # these tests, then training and benchmarks

Every test here is marked `gpu` and skips where torch sees no CUDA device, so `python -m pytest -q`
passes on a CPU. The tolerances come from bf16's precision. A bf16 number keeps 8 significant
bits, so one rounding moves a value by at most 2^-9 of itself (UNIT_ROUNDOFF). If every logit
z_v of a token moves by at most eps, what the loss reads moves by at most

    |d logp_y| <= 2 eps                  (z_y by eps, logsumexp(z) by at most eps)
    |d H|      <= eps E_p|log p + H|     (dH/dz_v = -p_v (log p_v + H); first order)

so a bound on the logits' error becomes one on the log-probs and the entropy.
"""
import copy
import math

import pytest
import torch

import train
from distributed import autocast, generation_mode
from rollout import (Rollouts, fused_logprobs_and_entropy, generate_rollouts,
                     policy_logprobs_and_entropy, sampler_mismatch)
from tiny import tiny_policy

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
UNIT_ROUNDOFF = 2**-9  # bf16: 8 significant bits, rounded to nearest
PROMPTS = ["1+2=", "3+4+5=", "9=", "8+8+8+1="]


def softmax_reference(z: torch.Tensor, labels: torch.Tensor):
    """float64 logp of `labels`, entropy, and E_p|log p + H| (how much H moves with the logits)."""
    logp_all = torch.log_softmax(z.double(), dim=-1)  # (N, V)
    p = logp_all.exp()
    entropy = -(p * logp_all).sum(-1)
    spread = (p * (logp_all + entropy[:, None]).abs()).sum(-1)
    return logp_all.gather(1, labels[:, None]).squeeze(1), entropy, spread


@pytest.mark.parametrize("inputs", ["bf16 weights (FSDP)", "fp32 under autocast (one GPU)"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_in_bf16_against_float64(inputs, temperature):
    """Qwen2.5-0.5B's head (H 896, V 151936) on 1024 tokens. Under FSDP the weights arrive in bf16;
    in one process they are fp32 and autocast multiplies in bf16. Either way the logits are one
    bf16 matmul and everything after it is fp32."""
    torch.manual_seed(0)
    N, H, V, chunk = 1024, 896, 151936, 256
    dtype = torch.bfloat16 if inputs.startswith("bf16") else torch.float32
    hidden = (torch.randn(N, H, device=CUDA) * 0.5).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device=CUDA) * 0.05).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (N,), device=CUDA)
    g_logp, g_ent = torch.randn(N, device=CUDA), torch.randn(N, device=CUDA)  # upstream gradients
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.float32):
        logp, entropy = fused_logprobs_and_entropy(hidden, weight, labels, chunk, temperature)
    ((logp * g_logp).sum() + (entropy * g_ent).sum()).backward()

    # 1. After the matmul the head is fp32 math: against float64 softmax of its own bf16 logits
    #    (the same chunked products, so the same bits), to fp32's precision.
    with torch.no_grad():
        z16 = torch.cat([hidden[s : s + chunk].bfloat16() @ weight.bfloat16().T
                         for s in range(0, N, chunk)]).double() / temperature  # (N, V)
    logp16, entropy16, _ = softmax_reference(z16, labels)
    torch.testing.assert_close(logp.double(), logp16, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), entropy16, rtol=1e-5, atol=1e-5)

    # 2. Those logits are within bf16's rounding of the exact ones: each input rounded to bf16
    #    (fp32 inputs only), partial sums that cuBLAS may add in bf16
    #    (allow_bf16_reduced_precision_reduction), and the output: 2^-9 each.
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    z64 = h64 @ w64.T / temperature  # (N, V) exact for these inputs
    with torch.no_grad():
        roundings = (3 if dtype == torch.float32 else 1) * UNIT_ROUNDOFF
        bound = roundings * (h64.abs() @ w64.abs().T) / temperature + UNIT_ROUNDOFF * z64.abs()
        error = (z16 - z64).abs()
        assert (error <= bound + 1e-6).all(), f"logits {(error - bound).max():.2e} past the bound"
        eps = error.amax(dim=1)  # (N,) each token's largest logit error

    # 3. So logp and entropy are within the perturbation bounds (factor 2: second-order slack),
    #    and the gradients too: dL/dz is p times terms that each move by at most 2 eps, so to
    #    first order their relative error is at most ~4 eps, plus a rounding if stored in bf16.
    exact_logp, exact_entropy, spread = softmax_reference(z64, labels)
    ((exact_logp * g_logp.double()).sum() + (exact_entropy * g_ent.double()).sum()).backward()
    assert ((logp.double() - exact_logp.detach()).abs() <= 2 * eps + 1e-5).all()
    entropy_bound = 2 * eps * spread.detach() + 1e-5
    assert ((entropy.double() - exact_entropy.detach()).abs() <= entropy_bound).all()
    stored = 2 * UNIT_ROUNDOFF if dtype == torch.bfloat16 else 0.0
    for name, grad, exact in (("hidden", hidden.grad, h64.grad), ("weight", weight.grad, w64.grad)):
        relative = ((grad.double() - exact).norm() / exact.norm()).item()
        assert relative <= 4 * eps.max().item() + stored, f"{name} gradient off by {relative:.2e}"


def peaked_tiny_policy():
    """tests/tiny.py's policy with its lm_head scaled by 25: logits with a spread of ~3 and an
    entropy of ~1.2 nats (of log 15 = 2.7). Random weights alone give near-uniform logits, next to
    which every error looks small."""
    model, tokenizer = tiny_policy()
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
    return model, tokenizer


def test_sampler_and_trainer_logprobs_agree_in_bf16():
    """`rollout/logp_mismatch` on a GPU. `generate` (one token at a time, KV cache) and the
    trainer's pass over whole sequences both run in bf16, through different kernels: their
    log-probs may differ by bf16 rounding, and by nothing else."""
    model, tokenizer = peaked_tiny_policy()
    model.to(CUDA)
    torch.manual_seed(0)
    with generation_mode(model):  # as train.rl_step: eval mode and bf16 autocast
        rollouts = generate_rollouts(model, tokenizer, PROMPTS * 4, group_size=4,
                                     max_new_tokens=12)
    with autocast(model):
        bf16_logp, _ = policy_logprobs_and_entropy(model, rollouts, 16)  # (B, T)
    fp32_logp, _ = policy_logprobs_and_entropy(model, rollouts, 16)  # no autocast: fp32 throughout
    mask = rollouts.loss_mask.bool()
    rounding = (bf16_logp - fp32_logp)[mask].abs().mean().item()  # one bf16 computation vs fp32
    mismatch = sampler_mismatch(rollouts, bf16_logp)[mask].mean().item()
    assert rounding > 0, "autocast did not compute in bf16"
    # The sampler and the trainer are each one bf16 computation of the same log-probs; each as
    # far from fp32 as the trainer is, they are at most twice that apart (triangle inequality).
    assert mismatch <= 2 * rounding, f"mismatch {mismatch:.2e}, bf16 rounding {rounding:.2e}"
    # The check has power: scoring at the wrong temperature lands far outside it.
    with autocast(model):
        hot_logp, _ = policy_logprobs_and_entropy(model, rollouts, 16, temperature=0.7)
    assert sampler_mismatch(rollouts, hot_logp)[mask].mean().item() > 10 * 2 * rounding


def test_every_tensor_of_a_step_on_the_gpu(tmp_path):
    """train.setup and two train.rl_step calls with the model on CUDA (one process: bf16
    autocast). A tensor of the step made on the CPU (rewards, advantages, masks, the loss, the
    controller's reading) fails at its first use next to a CUDA tensor; every logged number must
    be finite."""
    model, tokenizer = tiny_policy()
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    cfg = train.Config(model=str(tmp_path / "policy"), out_dir=str(tmp_path / "run"), steps=2,
                       prompts_per_step=4, group_size=4, updates_per_step=2,
                       eval_prompts=4).resolved()
    train.validate(cfg, world_size=1)

    def reward_fn(completion: str, answer: str) -> float:  # random weights solve nothing: a reward
        return float(len(completion) % 2)  # that varies within groups, so that there is a gradient

    run, _ = train.setup(cfg, reward_fn, "length parity", rank=0, world_size=1, device=CUDA)
    records = [train.rl_step(run, step) for step in range(2)]
    assert all(p.is_cuda for p in run.model.parameters())
    assert all(t.is_cuda for state in run.optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)  # Adam's moments; its step count is a scalar
    for record in records:
        numbers = {k: v for k, v in record.items() if isinstance(v, float)}
        assert all(math.isfinite(v) for v in numbers.values()), numbers
        assert record["tokens"] > 0 and record["grad_norm"] > 0
        assert record["rollout/logp_mismatch"] < 1e-2  # near-uniform logits: tiny in bf16 too


def to_device(rollouts: Rollouts, device: torch.device) -> Rollouts:
    return Rollouts(rollouts.prompt_ids.to(device), rollouts.completion_ids.to(device),
                    rollouts.prompt_mask.to(device), rollouts.loss_mask.to(device),
                    rollouts.completions, rollouts.sampler_logprobs.to(device))


def test_one_policy_update_in_bf16_matches_fp32():
    """train.policy_update with SGD on the same batch: on the GPU in bf16 autocast, and in fp32 on
    the CPU. With SGD the step is -lr x the (clipped) gradient, so the two steps differ by the bf16
    error of the gradient. Autocast rounds the inputs of every matmul to bf16 (2^-9 each), and a
    weight's gradient here passes through about 16 matmuls, forward and back: we allow 2^-4, the
    worst case of 32 such roundings added up (CPU bf16 autocast gives 2%)."""
    model, tokenizer = peaked_tiny_policy()
    torch.manual_seed(0)
    rollouts = generate_rollouts(model, tokenizer, PROMPTS, group_size=4, max_new_tokens=6)
    old_logprobs, _ = policy_logprobs_and_entropy(model, rollouts, 16)  # (16, T)
    advantages = torch.tensor([1.0, -1.0] * 8)  # (16,) half the completions up, half down
    cfg = train.Config(prompts_per_step=4, group_size=4, max_new_tokens=6, updates_per_step=1,
                       micro_batch_size=16).resolved()
    steps, policies = {}, {}
    for name, device in (("fp32", CPU), ("bf16", CUDA)):
        policy = copy.deepcopy(model).to(device)
        before = torch.cat([p.detach().flatten() for p in policy.parameters()])
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
        train.policy_update(policy, optimizer, to_device(rollouts, device), old_logprobs.to(device),
                            advantages.to(device), cfg, {}, device, world_size=1)
        after = torch.cat([p.detach().flatten() for p in policy.parameters()])
        steps[name] = (after - before).cpu()
        policies[name] = policy
    relative = ((steps["bf16"] - steps["fp32"]).norm() / steps["fp32"].norm()).item()
    assert relative <= 2**-4, f"bf16 update off the fp32 one by {relative:.1%}"
    # and the GPU's update does what the advantages ask: log-probs up where A > 0, down where A < 0
    gpu = policies["bf16"]
    with autocast(gpu):
        new_logprobs, _ = policy_logprobs_and_entropy(gpu, to_device(rollouts, CUDA), 16)
    change = ((new_logprobs.cpu() - old_logprobs) * rollouts.loss_mask).sum(1)  # (16,)
    assert change[advantages > 0].sum() > 0 > change[advantages < 0].sum()
