"""RL for LLMs with Entropy Scheduling: the one file that wires the concepts into a training loop.

    python train.py                                    # the built-in testbed, runs/default, a CPU
    python train.py --loss grpo --schedule none --out_dir runs/grpo   # plain GRPO: entropy falls
    python train.py --schedule constant --out_dir runs/held   # DAPO, entropy held where it starts
    python eval_passk.py --model runs/grpo/checkpoints/latest   # pass@k of its last checkpoint
    torchrun --standalone --nproc_per_node=8 train.py --model Qwen/Qwen2.5-Math-1.5B \\
        --dataset dapo-math --eval_dataset math --max_new_tokens 2048 \\
        --micro_batch_size 4 --lr 1e-6 --out_dir runs/qwen-math   # one multi-GPU box, FSDP2

An out_dir holds one run: run again with --resume to continue it, --overwrite to start over.

One RL step, `rl_step` below (the numbers match README):
  1. prompts      curriculum.sample(n, phase)          phase = schedule.phase(step)
  2. rollouts     rollout.generate_rollouts            G completions per prompt, HF generate
  3. rewards      reward_fn(completion, answer)        + DAPO dynamic sampling (`collect_rollouts`)
  4. advantages   loss.group_advantages                (R - mean) / std within each group
  5. entropy      rollout.policy_logprobs_and_entropy  old log-probs and H_s, fused and chunked
  6. control      schedule.target(step) -> H*; controller.update(H_s, H*) -> the knob
  7. update       loss.policy_loss, AdamW              (`policy_update`; global token counts)
  8. log          one line of metrics.jsonl; `main` evaluates pass@k and checkpoints

Kept from the anchors (verl, TRL, DAPO): PPO-clip with separate low/high bounds, dual-clip, three
loss aggregations, dynamic sampling, overlong shaping, k1/k2/k3 KL. Left out: a critic (GRPO needs
none), a reference model by default (kl_coef = 0, as DAPO), vLLM rollouts, sequence packing,
tensor/sequence parallelism: FSDP data parallelism only.

Read down to `main`; below the banner "plumbing" come config parsing, set-up, checkpoints and
plots, which a first reading may skip.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from curriculum import TwoPhaseCurriculum
from data import (HELD_OUT_SEED, DataError, default_max_new_tokens, default_system_prompt,
                  load_problems)
from distributed import (all_gather_list, all_reduce_sum, autocast, generation_mode,
                         setup_distributed, shard_model, teardown_distributed)
from entropy_schedule import (CONTROLLERS, SCHEDULES, EntropySchedule, TrackingError,
                              loss_arguments, make_controller, schedule_for_goal)
from eval_passk import describe, evaluate_on_ranks
from loss import (COV_METHODS, LOSS_AGG_MODES, group_advantages, groups_with_signal, policy_loss,
                  truncated_is_weights)
from reward import extract_answer, make_verifier, math_reward, overlong_penalty
from testbed import is_testbed_model
from rollout import (Rollouts, concat_rollouts, format_prompts, generate_rollouts,
                     load_policy, load_policy_or_exit, micro_batches, policy_logprobs_and_entropy,
                     resolve_model_path, sampler_mismatch, sequence_logprobs_and_entropy,
                     stop_token_ids)


# ============================================================================ configuration
@dataclass
class Config:
    # --- run
    out_dir: str = "runs/default"
    """where metrics.jsonl, config.json, checkpoints/ and the plot go"""
    seed: int = 0
    """seeds data order, sampling and the built-in model"""
    steps: int = 200
    """RL steps (one rollout batch each)"""
    resume: bool = False
    """continue the run in out_dir from checkpoints/latest (from step 0 if it has none)"""
    overwrite: bool = False
    """start over in an out_dir that holds a run: delete its metrics, samples, config, summary,
    plot and checkpoints first (base_model/ is kept); without it, or --resume, such an out_dir is
    refused"""
    save_every: int = 50
    """checkpoint every N steps (and always at the end); 0: only at the end"""
    eval_every: int = 0
    """pass@k on the held-out set every N steps; 0: at the start and the end only"""
    eval_prompts: int = 128
    """held-out prompts per evaluation"""
    eval_n: int = 16
    """samples per held-out prompt"""
    eval_k: str = "1,4,16"
    """k values of pass@k, comma-separated, each <= eval_n"""
    eval_samples: int = 4
    """held-out completions per evaluation written to samples.jsonl (with reward and answer)"""
    report_to: str = "none"
    """none | tensorboard | wandb: also stream metrics.jsonl's numbers there (optional packages)"""
    config: str | None = None
    """a JSON or YAML file of these fields (command-line flags override it)"""

    # --- model and data
    model: str = "embedded"
    """'embedded' (testbed.py's tiny Qwen2, warm-started), an HF hub name, a local directory, or a
    checkpoints/latest pointer"""
    attn_implementation: str | None = None
    """eager | sdpa | flash_attention_2 | ...; None: FlashAttention 2 on GPUs, else model default"""
    dataset: str = "arithmetic"
    """arithmetic | gsm8k | math | dapo-math | a .jsonl/.json/.parquet file"""
    eval_dataset: str | None = None
    """held-out set; None: the test split of --dataset (arithmetic: a held-out seed)"""
    prompt_field: str = "prompt"
    """field of the prompt in a local data file"""
    answer_field: str = "answer"
    """field of the reference answer in a local data file"""
    level_field: str = "level"
    """field of an integer difficulty level (optional; used by the curriculum)"""
    max_problems: int = 0
    """use at most this many training problems (0: all; arithmetic: 2000)"""
    chat_template: str = "auto"
    """auto: apply the tokenizer's chat template when it has one; none: raw prompts"""
    system_prompt: str | None = None
    """instruction before each problem; None: ask for \\boxed{} on real data, nothing on
    arithmetic and dapo-math (whose prompts carry their own): data.default_system_prompt, which
    eval_passk.py uses too"""
    verifier: str = "auto"
    """builtin | math-verify | auto (math-verify when installed, else the built-in rule)"""

    # --- rollouts
    prompts_per_step: int = 64
    """prompts per RL step over all ranks (must divide by the number of ranks)"""
    group_size: int = 8
    """completions sampled per prompt (G of GRPO; >= 2)"""
    max_new_tokens: int | None = None
    """completion length budget in tokens; None: 4 on arithmetic, 1024 otherwise"""
    temperature: float = 1.0
    """sampling temperature (log-probs and entropy are taken at the same temperature)"""
    top_p: float = 1.0
    """nucleus sampling threshold"""

    # --- loss (preset by --loss; a field set explicitly wins)
    loss: str = "dapo"
    """grpo | dapo | dr_grpo: presets for the four fields below"""
    loss_agg: str | None = None
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm; None: the --loss preset
    (dapo token-mean, grpo seq-mean-token-mean, dr_grpo seq-mean-token-sum-norm)"""
    clip_high: float | None = None
    """upper clip eps_high, the PID controller's starting point; None: 0.28 for dapo, else 0.2"""
    dynamic_sampling: bool | None = None
    """DAPO: resample groups whose rewards are all equal; None: on for dapo, else off"""
    adv_scale: str | None = None
    """std: GRPO advantages (R - mean) / std; none: Dr. GRPO R - mean; None: none for dr_grpo,
    else std"""
    clip_low: float = 0.2
    """lower clip eps_low"""
    dual_clip: float | None = None
    """dual-clip constant c for negative advantages (verl 3, DAPO scripts 10); None: off"""
    max_sampling_rounds: int = 3
    """dynamic sampling: generation rounds per step before keeping zero-signal groups"""
    overlong_buffer: int = 0
    """DAPO overlong shaping: penalise the last N tokens of the budget; 0: off"""
    kl_coef: float = 0.0
    """KL penalty to the initial policy (k3); 0: no reference model (DAPO, Dr. GRPO)"""
    tis_cap: float | None = None
    """truncated importance sampling: weight each token's loss by min(pi_old / pi_sampler, C);
    None: off"""
    cov_method: str = "none"
    """none | clip-cov | kl-cov: restrain the tokens of largest log-prob/advantage covariance
    (Cui et al.; another way to manage entropy, not scheduled)"""
    cov_ratio: float | None = None
    """share of tokens Clip-Cov / KL-Cov restrain; None: 2e-4 (verl's default)"""

    # --- optimisation (None: the built-in model's tuned value, also when it is loaded from its
    #     directory or a checkpoint, or what RL recipes use for pretrained models)
    lr: float | None = None
    """AdamW learning rate; None: 2e-4 on the built-in model, 1e-6 otherwise (DAPO, verl, TRL)"""
    lr_warmup_steps: int | None = None
    """linear learning-rate warm-up over the first N RL steps; None: 0 on the built-in model, 10
    otherwise"""
    lr_schedule: str = "constant"
    """constant | cosine (after the warm-up, down to 10% of --lr at the last step)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    updates_per_step: int | None = None
    """mini-batches per rollout batch, one optimizer step each; > 1 makes the ratio, so the clip,
    matter; None: 4 on the built-in model, otherwise the largest of 4, 2, 1 dividing the prompts
    per rank"""
    ppo_epochs: int = 1
    """passes over the rollout batch (verl's ppo_epochs): optimizer steps per RL step = epochs x
    mini-batches"""
    micro_batch_size: int | None = None
    """sequences per forward/backward pass (gradient accumulation within a mini-batch); None: 32
    on the built-in model, 4 otherwise"""
    logprob_chunk_size: int = 256
    """tokens per chunk of the fused log-prob/entropy head"""
    gradient_checkpointing: bool = False
    """recompute layer activations in backward (large models: less memory, ~30% more time)"""

    # --- entropy scheduling
    schedule: str = "stable-anneal"
    """none | constant | linear | cosine | stable-anneal | cyclic"""
    entropy_start: float | None = None
    """target entropy (nats) of the stable phase; None: H0, the entropy measured at step 0 (with
    --passk_goal: the goal's share of H0)"""
    entropy_end: float | None = None
    """target at the end of the anneal; None: 0.3 x entropy_start (with --passk_goal: the goal's
    share of entropy_start)"""
    stable_frac: float | None = None
    """stable-anneal: fraction of the run held at entropy_start; None: 0.5, or --passk_goal's"""
    anneal_shape: str = "cosine"
    """linear | cosine"""
    cycle_period: int = 50
    """cyclic: period in steps"""
    entropy_warmup_steps: int = 0
    """ramp the entropy target from the measured entropy to entropy_start over N steps"""
    passk_goal: int = 0
    """> 0: a stable-anneal schedule proposed for this pass@k (schedule_for_goal); the entropy
    flags above that are set explicitly override its proposal"""
    controller: str = "pid-entropy"
    """pid (the paper's: eps_high) | pid-entropy (a signed entropy coefficient) | skywork
    (entropy bonus) | balance (positive vs negative advantage weights)"""
    kp: float | None = None
    """proportional gain (pid, pid-entropy, balance); None: the controller's default"""
    ki: float | None = None
    """integral gain (pid, pid-entropy, balance); None: the controller's default"""
    kd: float | None = None
    """derivative gain (pid, pid-entropy); None: the controller's default"""
    skywork_delta: float | None = None
    """skywork: coefficient step per update; None: the controller's default"""

    # --- curriculum
    curriculum: str = "off"
    """off | two-phase (pools follow the schedule's stable / anneal phase)"""
    curriculum_order: str = "hard-first"
    """hard-first | easy-first"""

    # --- the built-in model
    warm_start_steps: int = 600
    """supervised warm-start steps (batches of 64) of the built-in model (testbed.py)"""

    def resolved(self, world_size: int = 1) -> "Config":
        """A copy with every None filled in: the --loss presets, the data set's token budget, the
        optimisation values of the built-in model or of a pretrained one, and the --passk_goal
        rule's stable_frac."""
        presets = {"grpo": ("seq-mean-token-mean", 0.2, False, "std"),
                   "dapo": ("token-mean", 0.28, True, "std"),
                   "dr_grpo": ("seq-mean-token-sum-norm", 0.2, False, "none")}
        if self.loss not in presets:
            raise ConfigError(f"--loss must be one of {', '.join(presets)}, got {self.loss!r}")
        agg, clip_high, dynamic, scale = presets[self.loss]
        builtin = is_testbed_model(self.model)
        per_rank = max(self.prompts_per_step // world_size, 1)
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return dataclasses.replace(
            self, loss_agg=pick(self.loss_agg, agg), clip_high=pick(self.clip_high, clip_high),
            dynamic_sampling=pick(self.dynamic_sampling, dynamic),
            adv_scale=pick(self.adv_scale, scale),
            max_new_tokens=self.max_new_tokens or default_max_new_tokens(self.dataset),
            lr=pick(self.lr, 2e-4 if builtin else 1e-6),
            lr_warmup_steps=pick(self.lr_warmup_steps, 0 if builtin else 10),
            updates_per_step=pick(self.updates_per_step, 4 if builtin else
                                  next(u for u in (4, 2, 1) if per_rank % u == 0)),
            micro_batch_size=pick(self.micro_batch_size, 32 if builtin else 4),
            system_prompt=pick(self.system_prompt, default_system_prompt(self.dataset)),
            stable_frac=pick(self.stable_frac, 0.5 if self.passk_goal <= 0 else
                             schedule_for_goal(self.passk_goal, self.steps).stable_frac))


# ============================================================================ the RL step
@dataclass
class Run:
    """What the RL steps read and update; built by `setup`, saved by `save_checkpoint`."""

    cfg: Config
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    problems: list[dict]  # training problems, prompts in the model's chat format
    held_out: list[dict]
    reward_fn: Callable[[str, str], float]
    schedule: EntropySchedule
    controller: object  # entropy_schedule.CONTROLLERS[cfg.controller]
    curriculum: TwoPhaseCurriculum
    tracker: TrackingError
    sampling_rng: random.Random  # draws the prompts of dynamic sampling's refills
    stop_ids: list[int]
    device: torch.device
    rank: int = 0
    world_size: int = 1
    ref_model: torch.nn.Module | None = None  # frozen initial policy, when kl_coef > 0
    no_signal_steps: int = 0  # consecutive steps in which no group had any reward variance
    steps_run: int = 0  # RL steps this process has run (the first one is diagnosed at once)
    warned_cut: bool = False  # said that --max_new_tokens cuts the answers off
    nonfinite_skipped: int = 0  # updates skipped for a non-finite gradient norm
    verifier: str = ""  # which verifier scores, for messages
    reporter: "Reporter | None" = None  # TensorBoard / W&B, with --report_to


def rl_step(run: Run, step: int) -> dict:
    """One step of RL with entropy scheduling; returns its line of metrics.jsonl."""
    cfg, model, G = run.cfg, run.model, run.cfg.group_size
    started = time.time()
    # 1. prompts: the same global draw on every rank, each takes its slice; the curriculum's pool
    #    follows the schedule's phase
    phase = run.schedule.phase(step)
    indices = run.curriculum.sample(cfg.prompts_per_step, phase)[run.rank :: run.world_size]
    # 2-3. rollouts and rewards; dynamic sampling replaces groups whose rewards are all equal
    with generation_mode(model):
        rollouts, rewards, indices, sampling = collect_rollouts(model, run.tokenizer, run.problems,
                                                                indices, cfg, run.sampling_rng,
                                                                run.reward_fn, run.stop_ids)
    rollout_s = time.time() - started
    # 4. advantages: each completion against its group
    advantages = group_advantages(rewards, G, cfg.adv_scale)  # (B,)
    # 5. old log-probs and the entropy the controller reads, H_s = sum H_t m_t / sum m_t over ranks
    sizes = (cfg.micro_batch_size, cfg.logprob_chunk_size, cfg.temperature)
    with autocast(model):
        old_logprobs, entropy = policy_logprobs_and_entropy(model, rollouts, *sizes)  # (B, T) each
        ref_logprobs = None if run.ref_model is None else \
            policy_logprobs_and_entropy(run.ref_model, rollouts, *sizes)[0]
    mask = rollouts.loss_mask  # (B, T)
    # the sampler's mismatch, and (with --tis_cap) the importance weights that correct for it
    is_weights = None if cfg.tis_cap is None else \
        truncated_is_weights(old_logprobs, rollouts.sampler_logprobs, cfg.tis_cap)  # (B, T)
    tis = {} if is_weights is None else {"is_weight": (is_weights * mask).sum()}
    sums = all_reduce_sum({"entropy": (entropy * mask).sum(), "tokens": mask.sum(),
                           "reward": sampling.pop("reward_sum"), "sequences": rewards.numel(),
                           "correct": sampling.pop("correct_sum"), "batch_reward": rewards.sum(),
                           "mismatch": sampler_mismatch(rollouts, old_logprobs).sum(),
                           "zero_std_frac": sampling.pop("groups/zero_std_frac"),
                           **cut_off(rollouts, cfg.max_new_tokens, run.stop_ids), **tis},
                          run.device)
    measured = sums["entropy"] / sums["tokens"]
    # 6. control: the schedule's target H*(s), and the knob that moves entropy toward it
    if run.schedule.initial_entropy is None:  # H0: relative targets are set by the first step
        run.schedule.initial_entropy = measured
    target = run.schedule.target(step)
    knob = run.controller.update(measured, target)
    track_err = run.tracker.add(measured, target, phase)
    # 7. update: mini-batch PPO-clip steps at this step's learning rate, the knob in the loss
    started_update = time.time()
    lr = learning_rate(cfg, step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    update = policy_update(model, run.optimizer, rollouts, old_logprobs, advantages, cfg,
                           loss_arguments(run.controller.name, knob), run.device, run.world_size,
                           ref_logprobs, is_weights)
    update_s = time.time() - started_update
    run.nonfinite_skipped += update.pop("nonfinite_skipped")
    groups = all_gather_list(sampling.pop("pass_rates"))  # every group generated, dropped ones too
    run.curriculum.update([i for i, _ in groups], [rate for _, rate in groups])  # on every rank
    if is_weights is not None:
        tis = {"rollout/is_weight": sums["is_weight"] / sums["tokens"]}
    # 8. log
    zero_std_frac = sums["zero_std_frac"] / run.world_size  # every rank has as many groups
    warn_when_no_signal(run, step, zero_std_frac, sums)
    return {"step": step, "reward/mean": sums["reward"] / sums["sequences"],
            "reward/accuracy": sums["correct"] / sums["sequences"],
            "reward/batch_mean": sums["batch_reward"] / sums["sequences"],
            "entropy": measured, "entropy/target": target, "entropy/knob": knob,
            "entropy/knob_name": run.controller.name, "entropy/track_err": track_err,
            **{f"entropy/track_err_{p}": v for p, v in run.tracker.summary().items()},
            **update, "response_length/mean": sums["tokens"] / sums["sequences"],
            "response_length/clip_ratio": sums["cut"] / sums["sequences"],
            "tokens": sums["tokens"], "rollout/logp_mismatch": sums["mismatch"] / sums["tokens"],
            **tis, "lr": lr, "groups/zero_std_frac": zero_std_frac, **sampling,
            "curriculum/phase": phase, **run.curriculum.stats(),
            "nonfinite_skipped": run.nonfinite_skipped,
            "time/rollout_s": rollout_s, "time/update_s": update_s,
            "time/step_s": time.time() - started}


def collect_rollouts(model, tokenizer, problems, indices, cfg: Config, rng: random.Random,
                     reward_fn=math_reward, stop_ids: list[int] | None = None,
                     ) -> tuple[Rollouts, torch.Tensor, list[int], dict]:
    """Steps 2-3: generate, score, and (DAPO) keep only groups whose rewards differ.

    Dynamic sampling replaces zero-signal groups with prompts drawn from all of `problems` for up
    to `max_sampling_rounds` rounds; if that is not enough, zero-signal groups fill the batch (they
    add no gradient) so that every rank keeps the same number of sequences. Whether another round
    is needed is decided by all ranks together (an all-reduce of "still short of groups"), so every
    rank runs the same number of rounds; a rank that is already full generates nothing in them.
    Returns rollouts, rewards (B,) on the model's device, the prompt of each group, and statistics
    of the first round (the policy as it is, before the filter); statistics["pass_rates"] holds the
    (prompt, pass rate) of every group generated, the dropped ones included: the curriculum learns
    most from those (always or never solved), which the batch never shows.
    """
    G, wanted = cfg.group_size, len(indices)
    device = next(model.parameters()).device
    kept: list[tuple[Rollouts, torch.Tensor, int]] = []  # (group rollouts, rewards (G,), prompt)
    spare: list[tuple[Rollouts, torch.Tensor, int]] = []
    stats = {"groups/zero_std_frac": None, "sampling/rounds": 0}
    pass_rates: list[tuple[int, float]] = []  # (prompt, fraction of its G completions correct)
    for round_ in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
        if round_ > 0:  # one all-reduce a round: go on while any rank is short of groups
            if all_reduce_sum({"short": float(len(kept) < wanted)}, device)["short"] == 0:
                break
            short = max(wanted - len(kept), 0)
            indices = rng.sample(range(len(problems)), short) if short else []
        stats["sampling/rounds"] = round_ + 1
        if not indices:
            continue
        rollouts = generate_rollouts(model, tokenizer, [problems[i]["prompt"] for i in indices], G,
                                     cfg.max_new_tokens, cfg.temperature, cfg.top_p, stop_ids)
        lengths = rollouts.loss_mask.sum(dim=1).tolist()
        rewards = torch.tensor(  # (B,)
            [reward_fn(text, problems[indices[j // G]]["answer"])
             + overlong_penalty(lengths[j], cfg.max_new_tokens, cfg.overlong_buffer)
             for j, text in enumerate(rollouts.completions)], device=device)
        signal = groups_with_signal(rewards, G).tolist()
        pass_rates += zip(indices, (rewards > 0.5).float().view(-1, G).mean(dim=1).tolist())
        if stats["groups/zero_std_frac"] is None:  # the first round measures the policy, unfiltered
            stats["groups/zero_std_frac"] = 1.0 - float(np.mean(signal))
            stats["reward_sum"] = float(rewards.sum())
            stats["correct_sum"] = float((rewards > 0.5).sum())
        for g, has_signal in enumerate(signal):
            rows = range(g * G, (g + 1) * G)
            piece = (rollouts.select(rows), rewards[g * G : (g + 1) * G], indices[g])
            (kept if has_signal or not cfg.dynamic_sampling else spare).append(piece)
    pieces = (kept + spare)[:wanted]
    stats["groups/unfilled"] = max(0, wanted - len(kept))
    stats["pass_rates"] = pass_rates
    return (concat_rollouts([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]),
            [p[2] for p in pieces], stats)


def policy_update(model, optimizer, rollouts: Rollouts, old_logprobs, advantages, cfg: Config,
                  knobs: dict, device: torch.device, world_size: int,
                  ref_logprobs: torch.Tensor | None = None,
                  is_weights: torch.Tensor | None = None) -> dict:
    """Step 7: `ppo_epochs` passes of `updates_per_step` optimizer steps over mini-batches of this
    rank's completions (the same old log-probs throughout: later updates are off-policy, so the
    clip acts). Each pass shuffles the completions into its mini-batches, as verl and TRL do: a
    mini-batch of completions from every group, not of whole groups, learned faster on the testbed
    (reward 0.475 against 0.425 after 30 steps, 3 seeds; docs/results.md).

    `knobs` are the `policy_loss` arguments the controller sets (`loss_arguments`); they win over
    the config's values. Each mini-batch's loss is normalised by its GLOBAL token (or sequence)
    count, summed over ranks, so the objective is the same whatever the number of ranks and
    micro-batches. FSDP averages gradients over ranks; our loss is already a global mean, hence
    `* world_size`.

    The model trains in training mode, which activation checkpointing needs (its layers recompute
    only then), and goes back to the mode it came in. Dropout is off (`disable_dropout`), so both
    modes compute the same function: the ratio's old and new log-probs come from one policy. The
    loop never waits for the device: statistics are summed as tensors where they are and read
    once, at the end; an optimizer step reads one number, whether its gradient norm is finite.
    """
    B = rollouts.completion_ids.shape[0]
    mask = rollouts.loss_mask  # (B, T)
    per_update = B // cfg.updates_per_step
    mini_batches = [rows for _ in range(cfg.ppo_epochs)  # each (per_update,): rows of the batch
                    for rows in torch.randperm(B, device=mask.device).split(per_update)]
    counts = all_reduce_sum({f"tokens_{u}": mask[rows].sum()  # mini-batch u's tokens, all ranks
                             for u, rows in enumerate(mini_batches)}, device)
    num_updates = len(mini_batches)
    loss_args = {"clip_low": cfg.clip_low, "clip_high": cfg.clip_high, "dual_clip": cfg.dual_clip,
                 "loss_agg": cfg.loss_agg, "num_seqs": per_update * world_size,
                 "max_len": cfg.max_new_tokens, "kl_coef": cfg.kl_coef,
                 "cov_method": cfg.cov_method, "cov_ratio": cfg.cov_ratio, **knobs}
    input_ids, attention_mask = rollouts.input_ids, rollouts.attention_mask
    T = rollouts.completion_ids.shape[1]
    plans = [micro_batches(attention_mask, rows, cfg.micro_batch_size) for rows in mini_batches]
    sums: dict[str, torch.Tensor] = {}  # loss and statistics, token-weighted, on the device
    grad_norms, skipped = [], 0
    was_training = model.training
    model.train()
    for u, plan in enumerate(plans):
        tokens = counts[f"tokens_{u}"]
        optimizer.zero_grad(set_to_none=True)
        for rows, first in plan:  # micro-batches of similar length, shared padding cut
            with autocast(model):
                logprobs, entropy = sequence_logprobs_and_entropy(
                    model, input_ids[rows, first:], attention_mask[rows, first:], T,
                    cfg.logprob_chunk_size, cfg.temperature)  # (b, T) each
            loss, stats = policy_loss(
                logprobs, old_logprobs[rows], advantages[rows], mask[rows], num_tokens=tokens,
                entropy=entropy, ref_logprobs=None if ref_logprobs is None else ref_logprobs[rows],
                is_weights=None if is_weights is None else is_weights[rows], **loss_args)
            (loss * world_size).backward()
            sums["policy"] = sums.get("policy", 0.0) + loss.detach()
            share = mask[rows].sum() / max(tokens, 1.0)  # of the mini-batch's tokens, all ranks
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value * share
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if not torch.isfinite(grad_norm):  # every rank sees the same global norm: all skip together
            warnings.warn(f"non-finite gradient norm ({grad_norm.item()}); update skipped")
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # free the gradients now, not after the next rollout
        grad_norms.append(grad_norm)
    model.train(was_training)
    # loss and stats: global token-weighted means over ranks, averaged over the mini-batches
    summed = all_reduce_sum({f"loss/{key}": sums[key] for key in sorted(sums)}, device)
    out = {key: value / num_updates for key, value in summed.items()}
    out["grad_norm"] = float(torch.stack(grad_norms).sum()) / num_updates if grad_norms else 0.0
    out["nonfinite_skipped"] = skipped
    mass, frac = out.pop("loss/clip_high_mass"), out["loss/clipfrac_high"]
    out["loss/clip_high_p"] = mass / frac if frac > 0 else None  # old p of the tokens clipped high
    return out


def learning_rate(cfg: Config, step: int) -> float:
    """--lr at RL step `step`: a linear warm-up over --lr_warmup_steps, then constant, or a cosine
    down to 10% of --lr at the last step.

    >>> cfg = Config(lr=1.0, lr_warmup_steps=2, lr_schedule="cosine", steps=12)
    >>> [round(learning_rate(cfg, s), 3) for s in (0, 1, 2, 11)]
    [0.5, 1.0, 1.0, 0.1]
    """
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.lr_warmup_steps) / max(cfg.steps - 1 - cfg.lr_warmup_steps, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(run: Run, step: int) -> dict:
    """Held-out pass@k and entropy, the prompts split across ranks. The samples come from a random
    stream of their own, a function of (--seed, step) only: the same model gives the same numbers
    in every run, and evaluating leaves the training's streams alone (--eval_every changes no
    training step)."""
    cfg = run.cfg
    ks = [int(k) for k in cfg.eval_k.split(",")]
    if run.rank == 0:
        tqdm.write(f"step {step}: held-out pass@k on {len(run.held_out)} prompts x {cfg.eval_n} "
                   f"samples x <= {cfg.max_new_tokens} tokens, over {run.world_size} rank(s)")
    # as many sequences at once as a rollout batch generates (the same memory)
    per_batch = max(1, cfg.prompts_per_step // run.world_size * cfg.group_size // cfg.eval_n)
    with generation_mode(run.model):
        result = evaluate_on_ranks(run.model, run.tokenizer, run.held_out, run.reward_fn,
                                   cfg.eval_n, ks, cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_p=cfg.top_p, prompts_per_batch=per_batch,
                                   chunk_size=cfg.logprob_chunk_size,
                                   micro_batch_size=cfg.micro_batch_size, progress=run.rank == 0,
                                   stop_ids=run.stop_ids, keep_samples=cfg.eval_samples,
                                   seed=cfg.seed * 1_000_003 + step)
    out = {f"eval/pass@{k}": result[f"pass@{k}"] for k in ks}
    out["eval/entropy"] = result["entropy"]
    out["eval/step"] = step  # RL steps behind the evaluated policy
    if run.rank == 0:
        numbers = ", ".join(f"{key[5:]} {value:.3f}" for key, value in out.items()
                            if key != "eval/step")
        tqdm.write(f"step {step} held-out: {numbers}")
        with open(os.path.join(cfg.out_dir, "samples.jsonl"), "a") as f:  # what the model wrote
            f.writelines(json.dumps({"step": step, **s}) + "\n" for s in result["samples"])
        for sample in result["samples"][:2]:
            tqdm.write(f"  sample: {describe(sample)}")
    out["eval/correct"] = result["correct"]  # per held-out prompt: for bootstrap intervals
    return out


def main(argv: list[str] | None = None) -> None:
    rank, world_size, device = setup_distributed()
    cfg, reward_fn, verifier = configure(sys.argv[1:] if argv is None else argv, rank, world_size)
    run, start_step = setup(cfg, reward_fn, verifier, rank, world_size, device)
    metrics_path = open_metrics(run, start_step)
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="RL",
               disable=rank != 0, dynamic_ncols=True)
    # an evaluation is logged on the line of the step it follows (eval/step: the steps behind it);
    # the one before any update, on step 0's line
    eval_metrics = evaluate(run, start_step) if start_step == 0 else {}
    for step in bar:
        record = rl_step(run, step)
        done = step + 1 == cfg.steps
        if done or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
            if eval_metrics and rank == 0:  # two for step 0's line (--eval_every 1, --steps 1):
                with open(metrics_path, "a") as f:  # the first gets a line of its own
                    f.write(json.dumps({"step": step, **eval_metrics}) + "\n")
            eval_metrics = evaluate(run, step + 1)
        record, eval_metrics = {**record, **eval_metrics}, {}
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            run.reporter.log(record)
            target = record["entropy/target"]
            bar.set_postfix(reward=f"{record['reward/mean']:.2f}", H=f"{record['entropy']:.3f}",
                            target="-" if target is None else f"{target:.3f}",
                            knob=f"{record['entropy/knob']:.3f}")
        if done or (cfg.save_every and (step + 1) % cfg.save_every == 0):
            save_checkpoint(run, step + 1)
    bar.close()
    if rank == 0:
        finish(run, metrics_path)
        run.reporter.close()
    teardown_distributed()  # under torchrun: barrier, destroy, exit (see distributed.py)


# ============================================================================ plumbing
# Config parsing and validation, set-up, checkpoints and random streams, the end-of-run report.
# A first reading may stop here.

class ConfigError(ValueError):
    """A bad setting; the message names the flag and what is allowed."""


def configure(argv: list[str], rank: int, world_size: int) -> tuple[Config, Callable, str]:
    """The resolved config and the reward function; a bad setting exits with one line (status 2)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars only
    try:
        cfg = parse_config(argv)
        cfg.model = model_path(cfg.model)  # before `resolved`, which reads the model's config
        cfg = cfg.resolved(world_size)
        validate(cfg, world_size)
        check_out_dir(cfg)
        reward_fn, verifier = make_verifier(cfg.verifier)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if rank == 0:
        print(f"verifier: {verifier}", flush=True)  # the first line: who scores this run
    return cfg, reward_fn, verifier


def model_path(model: str) -> str:
    """--model as `from_pretrained` reads it: a checkpoints/latest pointer becomes the step_N/ it
    names; a local path that is no directory fails here, before anything is written."""
    if model == "embedded":
        return model
    try:
        return resolve_model_path(model)
    except FileNotFoundError as e:
        raise ConfigError(f"--model {e}") from None


RUN_FILES = ("metrics.jsonl", "samples.jsonl", "config.json", "summary.json", "metrics.png",
             "checkpoints", "tensorboard", "wandb")  # what a run writes in out_dir


def run_files(out_dir: str) -> list[str]:
    """The files of a run already in `out_dir` (an empty checkpoints/ does not count)."""
    found = []
    for name in RUN_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and os.listdir(path) or os.path.isfile(path):
            found.append(name)
    return found


def check_out_dir(cfg: Config) -> None:
    """One run per out_dir: a directory that holds a run's files is continued (--resume) or
    started over (--overwrite), never written over by accident."""
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in --out_dir and --overwrite deletes it: "
                          "give one of them")
    found = run_files(cfg.out_dir)
    model = os.path.abspath(cfg.model)
    doomed = [os.path.abspath(os.path.join(cfg.out_dir, name)) for name in found]
    if cfg.overwrite and any(model == d or model.startswith(d + os.sep) for d in doomed):
        raise ConfigError(f"--model {cfg.model} lies in what --overwrite deletes from --out_dir "
                          f"{cfg.out_dir}: copy it elsewhere first, or give a new --out_dir")
    if found and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"--out_dir {cfg.out_dir} already holds a run ({', '.join(found)}): "
                          "continue it with --resume, start it over with --overwrite (deletes "
                          "those; base_model/ is kept), or give a new --out_dir")


def parse_config(argv: list[str]) -> Config:
    """--field value for every Config field; --config FILE (JSON/YAML) underneath the flags."""
    import argparse

    parser = argparse.ArgumentParser(description="RL for LLMs with Entropy Scheduling")
    docs = field_docs(Config)
    for f in dataclasses.fields(Config):
        kind = str(f.type)
        default = "" if f.default is None else f" (default: {f.default})"  # None: the doc says
        parser.add_argument(f"--{f.name}", default=argparse.SUPPRESS,
                            help=f"{docs.get(f.name, '')}{default}".replace("%", "%%"),
                            type=lambda text, kind=kind: _convert(text, kind),
                            metavar=f.name.upper() if "bool" not in kind else "{true,false}",
                            nargs="?" if "bool" in kind else None,
                            **({"const": True} if "bool" in kind else {}))
    args = vars(parser.parse_args(argv))
    values = {}
    if args.get("config"):
        with open(args["config"]) as fh:
            if args["config"].endswith((".yaml", ".yml")):
                import yaml  # optional dependency

                values = yaml.safe_load(fh) or {}
            else:
                values = json.load(fh)
        values.pop("verifier_used", None)  # a run's config.json records it; not a setting
        unknown = set(values) - {f.name for f in dataclasses.fields(Config)}
        if unknown:
            raise ConfigError(f"{args['config']}: unknown fields {sorted(unknown)}")
    values.update(args)
    return Config(**values)


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (for --help)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)}


def _convert(text: str, kind: str):
    """A flag's text as its field's type (kind is the annotation: 'int', 'float | None', ...)."""
    import argparse

    if "None" in kind and text.lower() == "none":
        return None
    try:
        if "bool" in kind:
            return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        return int(text) if "int" in kind else float(text) if "float" in kind else text
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {kind.split(' |')[0]}, got {text!r}") from None


def validate(cfg: Config, world_size: int) -> None:
    """Fail at start-up, with one line naming the field, for every setting we can check early."""
    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    def one_of(name: str, allowed):
        value = getattr(cfg, name)
        need(value in allowed, f"--{name} must be one of {', '.join(allowed)}, got {value!r}")

    one_of("schedule", SCHEDULES)
    one_of("controller", CONTROLLERS)
    one_of("curriculum", ("off", "two-phase"))
    one_of("curriculum_order", ("hard-first", "easy-first"))
    one_of("loss_agg", LOSS_AGG_MODES)
    one_of("adv_scale", ("std", "none"))
    one_of("anneal_shape", ("linear", "cosine"))
    one_of("chat_template", ("auto", "none"))
    one_of("verifier", ("builtin", "math-verify", "auto"))
    one_of("lr_schedule", ("constant", "cosine"))
    one_of("cov_method", COV_METHODS)
    one_of("report_to", ("none", "tensorboard", "wandb"))
    need(cfg.group_size >= 2, f"--group_size must be >= 2 (group-relative advantages need a "
                              f"group), got {cfg.group_size}")
    need(cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    need(cfg.prompts_per_step >= world_size and cfg.prompts_per_step % world_size == 0,
         f"--prompts_per_step {cfg.prompts_per_step} must be a multiple of the number of ranks "
         f"({world_size})")
    local = cfg.prompts_per_step // world_size
    divisors = [u for u in range(1, local + 1) if local % u == 0]
    need(cfg.updates_per_step >= 1 and local % cfg.updates_per_step == 0,
         f"--updates_per_step {cfg.updates_per_step} must divide the prompts per rank ({local} = "
         f"--prompts_per_step {cfg.prompts_per_step} / {world_size} rank(s)); fix: "
         f"--updates_per_step {' or '.join(map(str, divisors[-3:]))}, or --prompts_per_step a "
         f"multiple of {cfg.updates_per_step * world_size}")
    need(cfg.micro_batch_size >= 1, f"--micro_batch_size must be >= 1, got {cfg.micro_batch_size}")
    need(cfg.max_new_tokens >= 1, f"--max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    need(cfg.temperature > 0, f"--temperature must be > 0, got {cfg.temperature}")
    need(0 < cfg.top_p <= 1, f"--top_p must be in (0, 1], got {cfg.top_p}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(cfg.lr_warmup_steps >= 0, f"--lr_warmup_steps must be >= 0, got {cfg.lr_warmup_steps}")
    need(cfg.tis_cap is None or cfg.tis_cap >= 1,
         f"--tis_cap must be >= 1 (a cap below 1 down-weights every token), got {cfg.tis_cap}")
    need(cfg.cov_ratio is None or 0 < cfg.cov_ratio <= 1,
         f"--cov_ratio must be in (0, 1], got {cfg.cov_ratio}")
    need(cfg.eval_samples >= 0, f"--eval_samples must be >= 0, got {cfg.eval_samples}")
    need(0 <= cfg.clip_low < 1 and cfg.clip_high >= 0,
         "--clip_low must be in [0, 1) and --clip_high >= 0")
    for name in ("entropy_start", "entropy_end"):
        value = getattr(cfg, name)
        need(value is None or value > 0, f"--{name} must be > 0 nats, got {value}")
    need(0 <= cfg.stable_frac <= 1, f"--stable_frac must be in [0, 1], got {cfg.stable_frac}")
    need(cfg.passk_goal >= 0, f"--passk_goal must be >= 0, got {cfg.passk_goal}")
    need(cfg.passk_goal == 0 or cfg.schedule == "stable-anneal",
         f"--passk_goal proposes a stable-anneal schedule, --schedule asks for {cfg.schedule}: "
         "drop one of the two")
    need(cfg.cycle_period >= 2, f"--cycle_period must be >= 2, got {cfg.cycle_period}")
    try:
        ks = [int(k) for k in cfg.eval_k.split(",")]
    except ValueError:
        raise ConfigError(f"--eval_k must be comma-separated integers, got {cfg.eval_k!r}") \
            from None
    need(all(1 <= k <= cfg.eval_n for k in ks),
         f"--eval_k {cfg.eval_k}: each k must be in [1, --eval_n {cfg.eval_n}]")
    need(cfg.dataset != "dapo-math" or cfg.eval_dataset is not None,
         "--dataset dapo-math has no test split: set --eval_dataset (e.g. math, or a file)")
    need(cfg.overlong_buffer < cfg.max_new_tokens or cfg.overlong_buffer == 0,
         f"--overlong_buffer {cfg.overlong_buffer} must be < --max_new_tokens {cfg.max_new_tokens}")
    if cfg.report_to != "none":  # before the model is built, not after
        try:
            importlib.import_module(cfg.report_to)
        except ImportError:
            hint = " (WANDB_MODE=offline keeps runs local)" if cfg.report_to == "wandb" else ""
            raise ConfigError(f"--report_to {cfg.report_to} needs the {cfg.report_to} package; "
                              f"fix: pip install {cfg.report_to}{hint}, or --report_to none") \
                from None


def setup(cfg: Config, reward_fn, verifier: str, rank: int, world_size: int,
          device: torch.device) -> tuple[Run, int]:
    """Data, policy (built-in, any HF model, or the checkpoint to resume), optimizer, schedule,
    controller and curriculum; restores a checkpoint on --resume. Returns the run and its first
    step."""
    try:
        problems, held_out = load_data(cfg)
    except (DataError, ValueError, FileNotFoundError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sampling_rng = seed_everything(cfg.seed, rank)
    if cfg.overwrite and rank == 0:  # `check_out_dir` allowed it: the old run's files go first
        remove_run_files(cfg.out_dir)
    if dist.is_initialized():  # every rank checked out_dir (`configure`) before rank 0 writes
        dist.barrier()
    resume_from = latest_checkpoint(cfg) if cfg.resume else None
    if cfg.resume and resume_from is None and rank == 0:
        print(f"note: --resume: no checkpoint in {checkpoint_dir(cfg)}, starting at step 0")
    initial_path = cfg.model
    if cfg.model == "embedded":
        initial_path = os.path.join(cfg.out_dir, "base_model")
        if rank == 0:
            ensure_base_model(initial_path, cfg.seed, cfg.warm_start_steps)
        if dist.is_initialized():
            dist.barrier()
    model, tokenizer = load_policy_or_exit(cfg.model, resume_from or initial_path, rank, device=device,
                                           attn_implementation=cfg.attn_implementation)
    os.makedirs(checkpoint_dir(cfg), exist_ok=True)
    num_params = sum(p.numel() for p in model.parameters())
    if device.type == "cpu" and num_params < SMALL_MODEL and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # see SMALL_MODEL
    disable_dropout(model)  # the ratio's old and new log-probs: one function in either mode
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    problems = format_prompts(problems, tokenizer, cfg.chat_template, cfg.system_prompt)
    held_out = format_prompts(held_out, tokenizer, cfg.chat_template, cfg.system_prompt)
    ref_model = None
    if cfg.kl_coef > 0:  # a frozen copy of the starting policy
        ref_model, _ = load_policy(initial_path, device,
                                   attn_implementation=cfg.attn_implementation)
        ref_model.requires_grad_(False)
        disable_dropout(ref_model)
    stop_ids = stop_token_ids(tokenizer, model)  # EOS and the chat template's end of turn
    if dist.is_initialized():  # FSDP2 under torchrun, one rank included
        shard_model(model)
        if ref_model is not None:
            shard_model(ref_model)
    gains = {"pid": ("kp", "ki", "kd"), "pid-entropy": ("kp", "ki", "kd"), "balance": ("kp", "ki"),
             "skywork": ("skywork_delta",)}[cfg.controller]
    overrides = {name.removeprefix("skywork_"): getattr(cfg, name) for name in gains
                 if getattr(cfg, name) is not None}
    if cfg.controller == "pid":
        overrides["init"] = cfg.clip_high  # the PID moves eps_high from the configured value
    order = "off" if cfg.curriculum == "off" else cfg.curriculum_order
    run = Run(cfg=cfg, model=model, tokenizer=tokenizer,
              optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay),
              problems=problems, held_out=held_out, reward_fn=reward_fn,
              schedule=make_schedule(cfg), controller=make_controller(cfg.controller, **overrides),
              curriculum=TwoPhaseCurriculum([p.get("level") for p in problems], order=order,
                                            seed=cfg.seed),
              tracker=TrackingError(), sampling_rng=sampling_rng, stop_ids=stop_ids, device=device,
              rank=rank, world_size=world_size, ref_model=ref_model, verifier=verifier)
    try:
        start_step = load_checkpoint(run, resume_from) if resume_from else 0
        run.reporter = Reporter(cfg, rank)
    except (CheckpointError, ConfigError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if rank == 0:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:  # and who scores
            json.dump({**dataclasses.asdict(cfg), "verifier_used": verifier}, f, indent=2)
        print(f"config: {json.dumps(dataclasses.asdict(cfg))}")
        print(f"policy: {resume_from or initial_path} ({num_params / 1e6:.2f}M parameters, "
              f"{model.config.model_type}, {model.config._attn_implementation} attention), "
              f"{len(problems)} training / {len(held_out)} held-out problems, {world_size} "
              f"rank(s) on {device.type}"
              + (f", resuming at step {start_step}" if resume_from else ""))
    return run, start_step


# On a CPU a model this small gains nothing from a second thread, and OpenMP threads that spin while
# another process shares the cores ran the built-in model 40x slower (2.6 s/it instead of 16 it/s);
# OMP_NUM_THREADS, when set, decides instead.
SMALL_MODEL = 20_000_000  # parameters


def remove_run_files(out_dir: str) -> None:
    """--overwrite: delete what a run wrote in out_dir (`RUN_FILES`); base_model/ stays."""
    for name in run_files(out_dir):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    print(f"--overwrite: removed the previous run's files from {out_dir}")


def ensure_base_model(path: str, seed: int, warm_start_steps: int) -> None:
    """The built-in model's warm start, built once into out_dir/base_model and reused by later runs
    there with the same --seed and --warm_start_steps (its warm_start.json says which it has)."""
    from testbed import build_base_model

    record = os.path.join(path, "warm_start.json")
    if os.path.exists(record):
        with open(record) as f:
            built = json.load(f)
        if (built.get("seed"), built.get("steps")) == (seed, warm_start_steps):
            return
        print(f"note: {path} was warm-started with seed {built.get('seed')} for "
              f"{built.get('steps')} steps; building it again for seed {seed}, {warm_start_steps}")
    shutil.rmtree(path, ignore_errors=True)
    build_base_model(path, seed, warm_start_steps)


def load_data(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(train problems, held-out problems), validated at the door."""
    limit = cfg.max_problems or None
    fields = (cfg.prompt_field, cfg.answer_field, cfg.level_field)
    train = load_problems(cfg.dataset, None, *fields, limit)
    eval_source = cfg.eval_dataset or cfg.dataset
    if eval_source == cfg.dataset and os.path.exists(cfg.dataset):
        warnings.warn(f"no --eval_dataset: pass@k is measured on {cfg.eval_prompts} problems "
                      f"sampled from the training file {cfg.dataset}, which are not held out")
    held_out = load_problems(eval_source, "test", *fields, cfg.eval_prompts,
                             sample_seed=HELD_OUT_SEED)
    return train, held_out


def make_schedule(cfg: Config) -> EntropySchedule:
    """The run's schedule; targets left unset are relative to H0, the entropy at the first step.

    --passk_goal proposes a stable-anneal schedule (`schedule_for_goal`): a stable target that is
    a share of H0, an anneal to a share of that target, and stable_frac (`Config.resolved` fills
    it in). --entropy_start (the stable target in nats), --entropy_end, --stable_frac,
    --entropy_warmup_steps and --anneal_shape, where given, replace the proposal's values.
    """
    if cfg.passk_goal > 0:
        return dataclasses.replace(schedule_for_goal(cfg.passk_goal, cfg.steps),
                                   start=cfg.entropy_start, end=cfg.entropy_end,
                                   stable_frac=cfg.stable_frac, anneal_shape=cfg.anneal_shape,
                                   warmup_steps=cfg.entropy_warmup_steps)
    return EntropySchedule(cfg.schedule, start=cfg.entropy_start, end=cfg.entropy_end,
                           total_steps=cfg.steps, stable_frac=cfg.stable_frac,
                           anneal_shape=cfg.anneal_shape, period=cfg.cycle_period,
                           warmup_steps=cfg.entropy_warmup_steps)


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant: works under FSDP2).
    transformers' layers recompute only in training mode, which `policy_update` sets."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is
        # deprecated there)
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_dropout(model) -> None:
    """No dropout anywhere, as TRL's `disable_dropout`: p = 0 in every nn.Dropout, 0.0 in every
    float attribute named like a dropout rate (attention modules keep `attention_dropout` from
    the config) and in the config (which some models read at call time). Training and
    evaluation mode then compute the same function: the log-probs of the update are those the
    old policy's pass measured, up to the update itself. RL recipes fine-tune without dropout."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name, value in (vars(config) if config is not None else {}).items():
        if ("dropout" in name or name.endswith("_pdrop")) and isinstance(value, float):
            setattr(config, name, 0.0)


NO_SIGNAL_WARN_STEPS = 5
NO_SIGNAL_MESSAGE = (
    "for {steps} steps in a row every group's samples got the same reward (all wrong, or all "
    "right): no gradient at all. Usually the reward never fires: check that --answer_field holds "
    "the reference answers, that the model writes its answer in a form the verifier reads "
    "(\\boxed{{...}}, '#### 42', 'Answer: 42'; see --system_prompt and --chat_template), that "
    "--max_new_tokens does not cut answers off, and that the task is neither far too hard nor too "
    "easy for this model. What the model wrote and what the verifier read in it: {samples}. "
    "Verifier: {verifier}")


CUT_MESSAGE = (
    "step {step}: {unanswered:.0%} of the completions ({count} of {total}) were cut off at "
    "--max_new_tokens {budget} with no answer in them ({cut:.0%} were cut in all): the verifier "
    "cannot score an answer that was never written. Raise --max_new_tokens (worked solutions of "
    "real problems need hundreds of tokens), or ask for shorter answers with --system_prompt. "
    "What the model wrote: {samples}")
FIRST_STEP_MESSAGE = (
    "step {step}: no group's samples differ in reward (mean reward {reward:.2f}): the policy as "
    "it is gives no learning signal on these prompts. Look at what the model wrote and what the "
    "verifier read in it: {samples}; check --answer_field, --system_prompt / --chat_template and "
    "--max_new_tokens {budget}. Verifier: {verifier}")


def warn_when_no_signal(run: Run, step: int, zero_std_frac: float, sums: dict) -> None:
    """Say at once what can be seen: most completions cut at --max_new_tokens without an answer
    (once a run); no reward variance at all in the first step; and once more when
    NO_SIGNAL_WARN_STEPS steps in a row had no group with reward variance. `sums` are the step's
    totals over ranks ("sequences", "reward", "cut", "cut_unanswered")."""
    run.no_signal_steps = run.no_signal_steps + 1 if zero_std_frac == 1.0 else 0
    run.steps_run += 1
    if run.rank != 0:
        return
    samples = os.path.join(run.cfg.out_dir, "samples.jsonl")
    total, unanswered = sums["sequences"], sums["cut_unanswered"]
    cut_warning = not run.warned_cut and unanswered >= total / 2
    if cut_warning:
        run.warned_cut = True
        warnings.warn(CUT_MESSAGE.format(step=step, unanswered=unanswered / total,
                                         count=int(unanswered), total=int(total),
                                         budget=run.cfg.max_new_tokens, cut=sums["cut"] / total,
                                         samples=samples))
    elif run.steps_run == 1 and zero_std_frac == 1.0:
        warnings.warn(FIRST_STEP_MESSAGE.format(step=step, reward=sums["reward"] / total,
                                                samples=samples, budget=run.cfg.max_new_tokens,
                                                verifier=run.verifier))
    if run.no_signal_steps == NO_SIGNAL_WARN_STEPS:
        warnings.warn(NO_SIGNAL_MESSAGE.format(steps=run.no_signal_steps, verifier=run.verifier,
                                               samples=samples))


def cut_off(rollouts: Rollouts, max_new_tokens: int, stop_ids: list[int]) -> dict[str, int]:
    """How many completions hit --max_new_tokens without a stop token ("cut"), and how many of
    those state no answer the built-in rule can read ("cut_unanswered")."""
    lengths = rollouts.loss_mask.sum(dim=1)  # (B,)
    last = rollouts.completion_ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]  # (B,)
    stops = torch.tensor(stop_ids, device=last.device)
    cut = ((lengths >= max_new_tokens) & ~torch.isin(last, stops)).tolist()
    unanswered = [is_cut and extract_answer(text) is None
                  for is_cut, text in zip(cut, rollouts.completions)]
    return {"cut": sum(cut), "cut_unanswered": sum(unanswered)}


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_dir(cfg: Config) -> str:
    return os.path.join(cfg.out_dir, "checkpoints")


def checkpoint_steps(directory: str) -> dict[int, str]:
    """{step: name} of the complete checkpoints in `directory`: step_N/ (N of any width), never a
    step_N.tmp/ that a crash left half-written."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return {int(name[5:]): name for name in names
            if name.startswith("step_") and name[5:].isdigit()
            and os.path.isdir(os.path.join(directory, name))}


def latest_checkpoint(cfg: Config) -> str | None:
    """The checkpoint `latest` names; without that pointer, or if it names no directory, the
    complete checkpoint of the highest step; None when there is none."""
    directory = checkpoint_dir(cfg)
    pointer = os.path.join(directory, "latest")
    if os.path.exists(pointer):
        with open(pointer) as f:
            named = os.path.join(directory, f.read().strip())
        if os.path.isdir(named):
            return named
    steps = checkpoint_steps(directory)
    return os.path.join(directory, steps[max(steps)]) if steps else None


def rotate_checkpoints(directory: str, step: int, keep: int = 2) -> None:
    """Keep the `keep` newest checkpoints up to `step` (the one just written, which `latest`
    names, is always among them), ordered by step number, not by name: step_1000000 is newer than
    step_999999. Checkpoints of higher steps (left by another run in this directory) are not
    this run's to delete."""
    steps = checkpoint_steps(directory)
    mine = sorted(s for s in steps if s <= step)
    for old in mine[:-keep]:
        shutil.rmtree(os.path.join(directory, steps[old]), ignore_errors=True)


def save_checkpoint(run: Run, step: int) -> None:
    """Atomic: write step_N.tmp/, rename it to step_N/, then repoint `latest` (os.replace).

    A crash at any moment leaves `latest` pointing to a complete checkpoint. The model is an HF
    directory (`AutoModelForCausalLM.from_pretrained(path)` loads it); optimizer.pt holds the full
    optimizer state (read by rank 0 alone on resume, then broadcast); trainer_state.pt is small:
    every rank's random streams and the schedule / controller / curriculum / tracker;
    train_config.json is the run's config, whose prompt format and sampling eval_passk.py uses.
    Two checkpoints are kept (`rotate_checkpoints`).
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(run.model, options=options)  # collective under FSDP
    optim_state = get_optimizer_state_dict(run.model, run.optimizer, options=options)
    rngs = all_gather_list([rng_state(run.sampling_rng)])  # one entry per rank, in rank order
    if run.rank == 0:
        name = f"step_{step:06d}"
        final = os.path.join(checkpoint_dir(run.cfg), name)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run.model.save_pretrained(tmp, state_dict=model_state)
        run.tokenizer.save_pretrained(tmp)
        config_path = os.path.join(tmp, "config.json")  # FSDP renames the class: undo it
        with open(config_path) as f:
            hf_config = json.load(f)
        names = hf_config.get("architectures") or []
        hf_config["architectures"] = [name.removeprefix("FSDP") for name in names]
        with open(config_path, "w") as f:
            json.dump(hf_config, f, indent=2)
        torch.save(optim_state, os.path.join(tmp, "optimizer.pt"))
        torch.save({"step": step, "rng": rngs, "schedule": run.schedule.state_dict(),
                    "controller": run.controller.state_dict(),
                    "curriculum": run.curriculum.state_dict(),
                    "tracker": run.tracker.state_dict(), "nonfinite_skipped": run.nonfinite_skipped,
                    "config": dataclasses.asdict(run.cfg)}, os.path.join(tmp, "trainer_state.pt"))
        with open(os.path.join(tmp, "train_config.json"), "w") as f:  # eval_passk.py reads the
            json.dump(dataclasses.asdict(run.cfg), f, indent=2)  # prompt format and sampling here
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = os.path.join(checkpoint_dir(run.cfg), "latest")
        with open(pointer + ".tmp", "w") as f:
            f.write(name)
        os.replace(pointer + ".tmp", pointer)
        rotate_checkpoints(checkpoint_dir(run.cfg), step, keep=2)
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(run: Run, checkpoint: str) -> int:
    """Restore optimizer, schedule, controller, curriculum, tracker and random streams (the model
    was loaded from the checkpoint already); returns the step to continue from."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = safe_load(os.path.join(checkpoint, "trainer_state.pt"))
    distributed = dist.is_initialized()
    optim_state = {}  # read from disk by rank 0 only and broadcast: one copy in host memory
    if not distributed or dist.get_rank() == 0:
        optim_state = safe_load(os.path.join(checkpoint, "optimizer.pt"), mmap=True)
    set_optimizer_state_dict(run.model, run.optimizer, optim_state,
                             options=StateDictOptions(full_state_dict=True,
                                                      broadcast_from_rank0=distributed))
    run.schedule.load_state_dict(state["schedule"])
    run.controller.load_state_dict(state["controller"])
    run.curriculum.load_state_dict(state["curriculum"])
    run.tracker.load_state_dict(state["tracker"])
    run.nonfinite_skipped = state["nonfinite_skipped"]
    step = state["step"]
    if len(state["rng"]) == run.world_size:  # every random stream where it was: exact continuation
        restore_rng(state["rng"][run.rank], run.sampling_rng)
    else:
        run.sampling_rng = seed_everything(run.cfg.seed + 1_000_003 * step, run.rank)
        if run.rank == 0:
            print(f"note: {checkpoint} was written by {len(state['rng'])} rank(s) and resumes on "
                  f"{run.world_size}: model, optimizer, schedule, controller and curriculum are "
                  f"restored, the random streams are re-seeded from --seed and the step, so the "
                  f"run goes on faithfully but not bit-exactly (resume on {len(state['rng'])} "
                  f"rank(s) for that)")
    return step


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely; the message names the file and the fix."""


def safe_load(path: str, **kwargs):
    """torch.load with weights_only=True: tensors, numbers, strings and containers only. A pickle
    that names anything else (a class, a function: the way a crafted file runs code on load) is
    refused before any of it runs."""
    import pickle

    try:
        return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load: it holds more than tensors and plain "
                              f"values, and loading it could run code ({reason[:120]}); resume "
                              "only from checkpoints this code wrote, or delete it") from None


def rng_state(sampling_rng: random.Random) -> dict:
    """Every random stream this rank draws from: torch's (sampling in `generate`), CUDA's, the
    dynamic-sampling refills' own generator, and Python's and NumPy's for completeness. Plain
    values and tensors only, so that `safe_load` reads it back."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)),
                                                   position, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "sampling": sampling_rng.getstate()}


def restore_rng(state: dict, sampling_rng: random.Random) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    sampling_rng.setstate(state["sampling"])


def seed_everything(seed: int, rank: int) -> random.Random:
    """Seed the global streams for this rank (ranks sample different completions); returns the
    generator of dynamic-sampling refills, also per rank."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    return random.Random(seed * 7919 + rank)


# ---------------------------------------------------------------------------- the report
def open_metrics(run: Run, start_step: int) -> str:
    """metrics.jsonl (and samples.jsonl), emptied, or on resume cut back to the steps the
    checkpoint holds (those after it are redone now). Returns metrics.jsonl's path."""
    path = os.path.join(run.cfg.out_dir, "metrics.jsonl")
    samples = os.path.join(run.cfg.out_dir, "samples.jsonl")
    for file, last in ((path, start_step - 1), (samples, start_step)):  # the eval of step N is N's
        if run.rank == 0:
            keep = []
            if start_step > 0 and os.path.exists(file):
                with open(file) as f:
                    keep = [line for line in f if line.strip() and json.loads(line)["step"] <= last]
            with open(file, "w") as f:
                f.writelines(keep)
    return path


def finish(run: Run, metrics_path: str) -> None:
    """summary.json, two plain-text plots on the terminal, and metrics.png with matplotlib."""
    summary = {"tracking_error": run.tracker.summary(), "nonfinite_skipped": run.nonfinite_skipped,
               "verifier_used": run.verifier}
    with open(os.path.join(run.cfg.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"done: {json.dumps(summary)}; metrics in {metrics_path}")
    with open(metrics_path) as f:
        rows = [row for line in f if line.strip() and "entropy" in (row := json.loads(line))]
    print(text_plot({"-": [r["entropy/target"] for r in rows], "*": [r["entropy"] for r in rows]},
                    "entropy (*) and its target (-), nats"))
    print(text_plot({"*": [r["reward/mean"] for r in rows]}, "mean reward (*)"))
    if not plot_metrics(rows, os.path.join(run.cfg.out_dir, "metrics.png")):
        print("metrics.png not drawn: matplotlib is not installed (pip install matplotlib); the "
              "text plots above show the same")


class Reporter:
    """The numbers of each line of metrics.jsonl, streamed to TensorBoard (out_dir/tensorboard) or
    Weights & Biases (--report_to), entropy and its target drawn on one chart. Rank 0 only; the
    packages are imported only when asked for."""

    def __init__(self, cfg: Config, rank: int):
        self.kind = cfg.report_to if rank == 0 else "none"
        self.rows: list[dict] = []
        if self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # validate() checked it imports

            self.writer = SummaryWriter(os.path.join(cfg.out_dir, "tensorboard"))
            self.writer.add_custom_scalars({"entropy scheduling": {
                "entropy and its target": ["Multiline", ["entropy", "entropy/target"]]}})
        elif self.kind == "wandb":
            import wandb

            self.wandb = wandb
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "entropy-scheduling"),
                                  name=os.path.basename(os.path.normpath(cfg.out_dir)),
                                  dir=cfg.out_dir, config=dataclasses.asdict(cfg))

    def log(self, record: dict) -> None:
        numbers = {key: value for key, value in record.items() if key != "step"
                   and isinstance(value, (int, float)) and not isinstance(value, bool)}
        self.rows.append(record)
        if self.kind == "tensorboard":
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()
        elif self.kind == "wandb":
            self.run.log(numbers, step=record["step"])

    def close(self) -> None:
        if self.kind == "tensorboard":
            self.writer.close()
        elif self.kind == "wandb":
            steps = [r["step"] for r in self.rows]
            target = [nan_for_none(r["entropy/target"]) for r in self.rows]
            self.run.log({"entropy and its target": self.wandb.plot.line_series(
                xs=steps, ys=[[r["entropy"] for r in self.rows], target],
                keys=["entropy", "target"], title="entropy and its target (nats)", xname="step")})
            self.run.finish()


def text_plot(series: dict[str, list], title: str, width: int = 60, height: int = 8) -> str:
    """A plain-character plot of a few series over the steps (no dependency): each column averages
    its steps, each series draws with its own mark; None values are skipped.

    >>> print(text_plot({"*": [0.0, 0.5, 1.0, 1.0]}, "demo", width=4, height=3))
    demo
       1.000 |  **
       0.500 | *
       0.000 |*
             +----
              step 0 .. 3
    """
    steps = max(len(values) for values in series.values())
    known = [v for values in series.values() for v in values if v is not None]
    if not known or steps == 0:
        return title + ": nothing to plot"
    low, high = min(known), max(known)
    span = (high - low) or 1.0
    width = min(width, steps)
    grid = [[" "] * width for _ in range(height)]
    for mark, values in series.items():
        for col in range(width):
            part = values[col * steps // width : (col + 1) * steps // width]
            chunk = [v for v in part if v is not None]
            if chunk:
                row = round((sum(chunk) / len(chunk) - low) / span * (height - 1))
                grid[height - 1 - row][col] = mark
    lines = [title]
    for r, cells in enumerate(grid):
        label = f"{high - r * span / (height - 1):8.3f}" if height > 1 else f"{high:8.3f}"
        lines.append((f"{label} |" + "".join(cells)).rstrip())
    lines.append(" " * 9 + "+" + "-" * width)
    lines.append(" " * 10 + f"step 0 .. {steps - 1}")
    return "\n".join(lines)


def nan_for_none(value):
    return math.nan if value is None else value


def plot_metrics(rows: list[dict], png_path: str) -> bool:
    """Entropy vs target, reward and the knob over steps, when matplotlib is installed; returns
    whether it drew them."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["entropy"] for r in rows], label="measured")
    axes[0].plot(steps, [nan_for_none(r["entropy/target"]) for r in rows], "--", label="target")
    axes[0].set(title="entropy (nats)", xlabel="step")
    axes[0].legend()
    axes[1].plot(steps, [r["reward/mean"] for r in rows])
    axes[1].set(title="mean reward", xlabel="step")
    axes[2].plot(steps, [r["entropy/knob"] for r in rows])
    axes[2].set(title=f"knob: {rows[-1]['entropy/knob_name']}", xlabel="step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
