"""RL for LLMs with Entropy Scheduling: the one file that wires the concepts together.

    python train.py                                   # the embedded default, on a CPU, in minutes
    python train.py --schedule none --loss grpo       # plain GRPO: entropy free to collapse
    python train.py --loss dapo --schedule constant   # DAPO-style stable entropy
    torchrun --standalone --nproc_per_node=8 train.py --model Qwen/Qwen2.5-Math-1.5B \\
        --dataset dapo-math --max_new_tokens 2048 --micro_batch_size 8   # a multi-GPU box, FSDP2

One RL step, top to bottom (the numbers match README "How entropy scheduling works"):
  1. prompts      curriculum.TwoPhaseCurriculum.sample      (phase from the entropy schedule)
  2. rollouts     rollout.generate_rollouts                 (HF generate, G completions per prompt)
  3. rewards      reward.make_verifier(--verifier) (+ reward.overlong_penalty)
  4. advantages   loss.group_advantages                     (+ DAPO dynamic sampling)
  5. old log-probs and entropy   rollout.policy_logprobs_and_entropy   (fused, chunked)
  6. control      entropy_schedule: target H*(s), controller.update(H_s, H*) -> knob
  7. update       loss.policy_loss, AdamW, grad clip        (token count summed over all ranks)
  8. log          metrics.jsonl, tqdm, checkpoints

The embedded default (`--model embedded`) is a 0.64M-parameter Qwen2 (3 layers) and a character
tokenizer built in code, first warm-started by a short supervised run on the built-in digit-sum
task, written with slips and with long sums rare (`WARM_START_CORRECT`, `WARM_START_LEVELS`); it is
saved with `save_pretrained` and from then on loaded exactly as any hub model. Nothing touches the
network.

Kept from the anchors (verl, TRL, DAPO): PPO-clip with separate low/high bounds, dual-clip, three
loss aggregations, dynamic sampling, overlong shaping, k1/k2/k3 KL. Left out: a critic (GRPO needs
none), a separate reference model by default (kl_coef = 0 as DAPO), vLLM rollouts, sequence packing,
tensor/sequence parallelism: one box, FSDP data parallel only.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from curriculum import TwoPhaseCurriculum
from entropy_schedule import (CONTROLLERS, SCHEDULES, EntropySchedule, TrackingError, make_controller,
                              schedule_for_goal)
from eval_passk import evaluate_passk, summarize
from loss import LOSS_AGG_MODES, group_advantages, groups_with_signal, policy_loss
from reward import DataError, load_problems, make_verifier, math_reward, overlong_penalty
from rollout import (Rollouts, concat_rollouts, format_prompts, generate_rollouts, length_sorted,
                     load_policy, policy_logprobs_and_entropy, sampler_mismatch,
                     sequence_logprobs_and_entropy, setup_distributed, stop_token_ids, teardown_distributed)


# ============================================================================ configuration
@dataclass
class Config:
    # --- run
    out_dir: str = "runs/default"
    """where metrics.jsonl, config.json, checkpoints/ and the plot go"""
    seed: int = 0
    """seeds data order, sampling and the embedded model"""
    steps: int = 200
    """RL steps (one rollout batch each)"""
    resume: bool = False
    """continue from out_dir/checkpoints/latest if there is one"""
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
    config: str | None = None
    """a JSON or YAML file of these fields (command-line flags override it)"""

    # --- model and data
    model: str = "embedded"
    """'embedded' (built-in tiny Qwen2, warm-started) or an HF hub name or local directory"""
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
    """instruction before each problem; None: ask for \\boxed{} on real data, nothing on arithmetic"""
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

    # --- loss (preset by --loss; any field set explicitly wins)
    loss: str = "dapo"
    """grpo | dapo | dr_grpo: presets for the four fields below"""
    loss_agg: str | None = None
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (preset: dapo token-mean, grpo seq-mean-token-mean, dr_grpo seq-mean-token-sum-norm)"""
    clip_high: float | None = None
    """upper clip eps_high, the PID controller's starting point (preset: dapo 0.28, else 0.2)"""
    dynamic_sampling: bool | None = None
    """DAPO: resample groups whose rewards are all equal (preset: on for dapo)"""
    adv_scale: str | None = None
    """std: GRPO advantages (R - mean) / std; none: Dr. GRPO R - mean (preset)"""
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

    # --- optimisation
    lr: float = 2e-4
    """AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """max global gradient norm"""
    updates_per_step: int = 4
    """mini-batches per rollout batch (one optimizer step each); > 1 makes the ratio, so the clip, matter"""
    ppo_epochs: int = 1
    """passes over the rollout batch (verl's ppo_epochs): optimizer steps per RL step = epochs x mini-batches"""
    micro_batch_size: int = 32
    """sequences per forward/backward pass (gradient accumulation within a mini-batch)"""
    logprob_chunk_size: int = 256
    """tokens per chunk of the fused log-prob/entropy head"""
    gradient_checkpointing: bool = False
    """recompute layer activations in backward (large models: less memory, ~30% more time)"""

    # --- entropy scheduling
    schedule: str = "stable-anneal"
    """none | constant | linear | cosine | stable-anneal | cyclic"""
    entropy_start: float | None = None
    """target entropy (nats) of the stable phase; None: the entropy measured at step 0"""
    entropy_end: float | None = None
    """target at the end of the anneal; None: 0.3 x entropy_start"""
    stable_frac: float = 0.5
    """stable-anneal: fraction of the run held at entropy_start"""
    anneal_shape: str = "cosine"
    """linear | cosine"""
    cycle_period: int = 50
    """cyclic: period in steps"""
    warmup_steps: int = 0
    """ramp the target from the measured entropy to entropy_start over N steps"""
    passk_goal: int = 0
    """> 0: a stable-anneal schedule chosen for this pass@k (schedule_for_goal; overrides --schedule)"""
    controller: str = "pid-entropy"
    """pid (clip-high, the paper's) | pid-entropy (signed entropy coef) | skywork (entropy bonus) | balance (pos/neg advantage weights)"""
    kp: float | None = None
    """proportional gain (pid, balance); None: the controller's default"""
    ki: float | None = None
    """integral gain (pid, balance); None: the controller's default"""
    kd: float | None = None
    """derivative gain (pid); None: the controller's default"""
    skywork_delta: float | None = None
    """skywork: coefficient step per update; None: the controller's default"""

    # --- curriculum
    curriculum: str = "off"
    """off | two-phase (pools follow the schedule's stable / anneal phase)"""
    curriculum_order: str = "hard-first"
    """hard-first | easy-first"""

    # --- embedded default
    warm_start_steps: int = 600
    """supervised warm-start steps (batches of 64) of the embedded model; see WARM_START_CORRECT"""

    def resolved(self) -> "Config":
        """A copy with the --loss presets filled in."""
        presets = {"grpo": ("seq-mean-token-mean", 0.2, False, "std"),
                   "dapo": ("token-mean", 0.28, True, "std"),
                   "dr_grpo": ("seq-mean-token-sum-norm", 0.2, False, "none")}
        if self.loss not in presets:
            raise ConfigError(f"--loss must be one of {', '.join(presets)}, got {self.loss!r}")
        agg, clip_high, dynamic, scale = presets[self.loss]
        return dataclasses.replace(
            self, loss_agg=self.loss_agg or agg,
            max_new_tokens=self.max_new_tokens or (4 if self.dataset == "arithmetic" else 1024),
            clip_high=self.clip_high if self.clip_high is not None else clip_high,
            dynamic_sampling=self.dynamic_sampling if self.dynamic_sampling is not None else dynamic,
            adv_scale=self.adv_scale or scale)


class ConfigError(ValueError):
    """A bad setting; the message names the flag and what is allowed."""


def validate(cfg: Config, world_size: int) -> None:
    """Fail at start-up, with one line naming the field, for every setting we can check early."""
    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    need(cfg.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    need(cfg.controller in CONTROLLERS,
         f"--controller must be one of {', '.join(CONTROLLERS)}, got {cfg.controller!r}")
    need(cfg.curriculum in ("off", "two-phase"), f"--curriculum must be off or two-phase, got {cfg.curriculum!r}")
    need(cfg.curriculum_order in ("hard-first", "easy-first"),
         f"--curriculum_order must be hard-first or easy-first, got {cfg.curriculum_order!r}")
    need(cfg.loss_agg in LOSS_AGG_MODES, f"--loss_agg must be one of {', '.join(LOSS_AGG_MODES)}")
    need(cfg.adv_scale in ("std", "none"), f"--adv_scale must be std or none, got {cfg.adv_scale!r}")
    need(cfg.anneal_shape in ("linear", "cosine"), f"--anneal_shape must be linear or cosine")
    need(cfg.chat_template in ("auto", "none"), f"--chat_template must be auto or none")
    need(cfg.verifier in ("builtin", "math-verify", "auto"),
         f"--verifier must be builtin, math-verify or auto, got {cfg.verifier!r}")
    need(cfg.group_size >= 2, f"--group_size must be >= 2 (group-relative advantages need a group), got {cfg.group_size}")
    need(cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    need(cfg.prompts_per_step >= world_size and cfg.prompts_per_step % world_size == 0,
         f"--prompts_per_step {cfg.prompts_per_step} must be a multiple of the number of ranks ({world_size})")
    local = cfg.prompts_per_step // world_size
    need(cfg.updates_per_step >= 1 and local % cfg.updates_per_step == 0,
         f"--updates_per_step {cfg.updates_per_step} must divide the prompts per rank ({local})")
    need(cfg.micro_batch_size >= 1, f"--micro_batch_size must be >= 1, got {cfg.micro_batch_size}")
    need(cfg.max_new_tokens >= 1, f"--max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    need(cfg.temperature > 0, f"--temperature must be > 0, got {cfg.temperature}")
    need(0 < cfg.top_p <= 1, f"--top_p must be in (0, 1], got {cfg.top_p}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(0 <= cfg.clip_low < 1 and cfg.clip_high >= 0, "--clip_low must be in [0, 1) and --clip_high >= 0")
    for name in ("entropy_start", "entropy_end"):
        value = getattr(cfg, name)
        need(value is None or value > 0, f"--{name} must be > 0 nats, got {value}")
    need(0 <= cfg.stable_frac <= 1, f"--stable_frac must be in [0, 1], got {cfg.stable_frac}")
    need(cfg.passk_goal >= 0, f"--passk_goal must be >= 0, got {cfg.passk_goal}")
    need(cfg.cycle_period >= 2, f"--cycle_period must be >= 2, got {cfg.cycle_period}")
    try:
        ks = [int(k) for k in cfg.eval_k.split(",")]
    except ValueError:
        raise ConfigError(f"--eval_k must be comma-separated integers, got {cfg.eval_k!r}") from None
    need(all(1 <= k <= cfg.eval_n for k in ks), f"--eval_k {cfg.eval_k}: each k must be in [1, --eval_n {cfg.eval_n}]")
    need(cfg.dataset != "dapo-math" or cfg.eval_dataset is not None,
         "--dataset dapo-math has no test split: set --eval_dataset (e.g. math, or a file)")
    need(cfg.overlong_buffer < cfg.max_new_tokens or cfg.overlong_buffer == 0,
         f"--overlong_buffer {cfg.overlong_buffer} must be < --max_new_tokens {cfg.max_new_tokens}")


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (for --help)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: b.value.value for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


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
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None


def parse_config(argv: list[str]) -> Config:
    """--field value for every Config field; --config FILE (JSON/YAML) underneath the flags."""
    import argparse

    parser = argparse.ArgumentParser(description="RL for LLMs with Entropy Scheduling")
    docs = field_docs(Config)
    for f in dataclasses.fields(Config):
        kind = str(f.type)
        parser.add_argument(f"--{f.name}", default=argparse.SUPPRESS,
                            help=f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%"),
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
        unknown = set(values) - {f.name for f in dataclasses.fields(Config)}
        if unknown:
            raise ConfigError(f"{args['config']}: unknown fields {sorted(unknown)}")
    values.update(args)
    return Config(**values)


# ============================================================================ distributed
def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity on one process)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_list(items: list) -> list:
    """Concatenate every rank's list, rank 0's first."""
    if not dist.is_initialized():
        return list(items)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def shard_model(model) -> None:
    """FSDP2: `fully_shard` every decoder layer, then the root (embeddings, norm, lm_head).

    The layer classes come from the model's own `_no_split_modules`, so this works for any HF
    causal LM. bf16 compute with fp32 master weights and gradient reduction on GPUs. Under torchrun
    the model is always sharded, one rank included, so that one code path serves every box.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    on_gpu = next(model.parameters()).is_cuda
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu \
        else MixedPrecisionPolicy()
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ConfigError(f"{type(model).__name__} names no decoder layer class in _no_split_modules; "
                          "FSDP needs one to shard by layer")
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant: works under FSDP2)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5; the old name is deprecated
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextlib.contextmanager
def generation_mode(model):
    """Gather the full parameters once, generate with no collectives, shard again.

    Under FSDP each layer's forward all-gathers its weights. During generation ranks finish
    their sequences at different lengths, so they would run different numbers of forwards, and a
    collective that one rank skips deadlocks the others. With every unit unsharded up front and
    resharding switched off, generation runs locally on each rank.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    was_training = model.training
    model.eval()
    if units:
        model.set_reshard_after_forward(False)
        for unit in units:
            unit.unshard()
    try:
        with autocast(model):  # bf16 generation on a GPU without FSDP too
            yield
    finally:
        if units:
            for unit in units:
                unit.reshard()
            model.set_reshard_after_forward(True)
            model.set_reshard_after_forward(False, recurse=False)  # the root's own default
        model.train(was_training)


def autocast(model):
    """bf16 autocast for a model on a GPU that FSDP does not manage (one process, no torchrun);
    under FSDP its MixedPrecisionPolicy computes in bf16 already. A no-op on a CPU (fp32)."""
    from torch.distributed.fsdp import FSDPModule

    use = next(model.parameters()).is_cuda and not isinstance(model, FSDPModule)
    return torch.autocast("cuda", dtype=torch.bfloat16) if use else contextlib.nullcontext()


# ============================================================================ model and data
# The warm start's corpus (ours), like pre-training text: short sums are common and long ones rare
# (WARM_START_LEVELS: levels 1 and 2 are 30% each, levels 3-6 10% each), and per level (1-6 "+"
# signs) only a share of the answers are right (WARM_START_CORRECT); the rest are plausible slips,
# the sum off by 1, 2, 3 or 10 (a lost carry). So the base model computes the sum but writes slips,
# and on levels 3-6 it has never seen the right answer written: RL has something to sharpen (the
# right answer is one of its modes on short sums) and headroom it must reach by generalising.
# Measured on 512 held-out prompts x 16 samples, seeds 10, 11 and 40-42: pass@1 0.11-0.16, pass@16
# 0.67-0.79 (with slips of 1, 2 or 10 only, the last 4-layer model had pass@16 up to 0.84).
WARM_START_LEVELS = (1, 1, 1, 2, 2, 2, 3, 4, 5, 6)
WARM_START_CORRECT = {1: 0.8, 2: 0.3, 3: 0.0, 4: 0.0, 5: 0.0, 6: 0.0}
WARM_START_SLIPS = (-10, -3, -2, -1, 1, 2, 3, 10)


def warm_start_answer(problem: dict, rng: random.Random) -> str:
    """What the warm-start corpus writes after a prompt: the answer, or a slip of it.

    >>> rng = random.Random(0)
    >>> sorted({warm_start_answer({"answer": "17", "level": 4}, rng) for _ in range(200)}, key=int)
    ['7', '14', '15', '16', '18', '19', '20', '27']
    >>> warm_start_answer({"answer": "5", "level": 4}, random.Random(2))  # 5 - 10 < 0: 5 + 10
    '15'
    """
    if rng.random() < WARM_START_CORRECT.get(problem["level"], 0.0):
        return problem["answer"]
    answer, slip = int(problem["answer"]), rng.choice(WARM_START_SLIPS)
    return str(answer + slip if answer + slip >= 0 else answer - slip)


def build_embedded_default(path: str, cfg: Config) -> None:
    """Build the tiny base model, warm-start it on digit sums, save it at `path` in HF format.

    A random init solves nothing and RL cannot bootstrap from zero reward, so `warm_start_steps`
    of supervised training on the corpus above first teach the format and the sum, with slips
    (WARM_START_CORRECT, WARM_START_LEVELS): on 128 held-out prompts x 16 samples the base model
    has pass@1 ~0.15 and pass@16 ~0.8, and its token entropy is high (~1 nat) because its answers
    are spread over the slips and its guesses at the long sums. That is the regime the paper
    studies: plain GRPO sharpens the policy onto its best mode and the entropy collapses; how fast
    is what the entropy schedule decides.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from reward import arithmetic_problems

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *"0123456789+-*=() "])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>", padding_side="left")
    torch.manual_seed(cfg.seed)
    corpus_rng = random.Random(cfg.seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(vocab), hidden_size=128, intermediate_size=384, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=1))
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train = arithmetic_problems(64 * cfg.warm_start_steps, seed=10_000 + cfg.seed, levels=WARM_START_LEVELS)
    probe = arithmetic_problems(64, seed=20_000 + cfg.seed)
    for step in tqdm(range(1, cfg.warm_start_steps + 1), desc="warm start (supervised)", leave=False):
        batch = train[(step - 1) * 64 : step * 64]
        prompts = [tokenizer(p["prompt"], add_special_tokens=False).input_ids for p in batch]
        answers = [tokenizer(warm_start_answer(p, corpus_rng), add_special_tokens=False).input_ids + [1]
                   for p in batch]
        length = max(len(p) + len(a) for p, a in zip(prompts, answers))
        ids = torch.zeros(64, length, dtype=torch.long)
        labels = torch.full((64, length), -100)
        mask = torch.zeros(64, length, dtype=torch.long)
        for i, (p, a) in enumerate(zip(prompts, answers)):  # left-padded, loss on the answer only
            row = p + a
            ids[i, length - len(row):] = torch.tensor(row)
            mask[i, length - len(row):] = 1
            labels[i, length - len(a):] = torch.tensor(a)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rollouts = generate_rollouts(model, tokenizer, [p["prompt"] for p in probe], 4, 4)
    pass1 = float(np.mean([math_reward(t, probe[i // 4]["answer"]) for i, t in enumerate(rollouts.completions)]))
    tmp = path + ".tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "warm_start.json"), "w") as f:
        json.dump({"steps": cfg.warm_start_steps, "probe_pass@1": pass1, "seed": cfg.seed}, f)
    os.replace(tmp, path)


def load_data(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(train problems, held-out problems), validated at the door."""
    limit = cfg.max_problems or None
    train = load_problems(cfg.dataset, None, cfg.prompt_field, cfg.answer_field, cfg.level_field, limit)
    eval_source = cfg.eval_dataset or cfg.dataset
    if eval_source == cfg.dataset and os.path.exists(cfg.dataset):
        warnings.warn(f"no --eval_dataset: pass@k is measured on the first {cfg.eval_prompts} "
                      f"problems of the training file {cfg.dataset}, which are not held out")
    held_out = load_problems(eval_source, "test", cfg.prompt_field, cfg.answer_field, cfg.level_field,
                             cfg.eval_prompts)
    return train, held_out


def make_schedule(cfg: Config, initial_entropy: float) -> EntropySchedule:
    """The run's schedule; entropy_start defaults to the entropy measured at step 0."""
    start = cfg.entropy_start or initial_entropy
    if cfg.passk_goal > 0:  # the goal rule chooses start, end and stable_frac (overrides --schedule)
        return schedule_for_goal(cfg.passk_goal, cfg.steps, start)
    return EntropySchedule(cfg.schedule, start=start, end=cfg.entropy_end or 0.3 * start,
                           total_steps=cfg.steps, stable_frac=cfg.stable_frac,
                           anneal_shape=cfg.anneal_shape, period=cfg.cycle_period,
                           warmup_steps=cfg.warmup_steps, warmup_from=initial_entropy)


# ============================================================================ checkpoints
def checkpoint_dir(cfg: Config) -> str:
    return os.path.join(cfg.out_dir, "checkpoints")


def latest_checkpoint(cfg: Config) -> str | None:
    pointer = os.path.join(checkpoint_dir(cfg), "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        return os.path.join(checkpoint_dir(cfg), f.read().strip())


def save_checkpoint(step: int, model, tokenizer, optimizer, trainer_state: dict, cfg: Config,
                    rank: int, rng: dict) -> None:
    """Atomic: write step_N.tmp/, rename it to step_N/, then repoint `latest` (os.replace).

    A crash at any moment leaves `latest` pointing to a complete checkpoint. The model is an HF
    directory (`AutoModelForCausalLM.from_pretrained(path)` loads it); optimizer.pt holds the full
    optimizer state (read by rank 0 alone on resume, then broadcast); trainer_state.pt is small:
    every rank's random streams (`rng`, this rank's) and the schedule / controller / curriculum.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)  # collective under FSDP
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    rngs = all_gather_list([rng])  # one entry per rank, in rank order
    if rank == 0:
        name = f"step_{step:06d}"
        final = os.path.join(checkpoint_dir(cfg), name)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=model_state)
        tokenizer.save_pretrained(tmp)
        config_path = os.path.join(tmp, "config.json")  # FSDP renames the class: undo it
        with open(config_path) as f:
            hf_config = json.load(f)
        hf_config["architectures"] = [a.removeprefix("FSDP") for a in hf_config.get("architectures") or []]
        with open(config_path, "w") as f:
            json.dump(hf_config, f, indent=2)
        torch.save(optim_state, os.path.join(tmp, "optimizer.pt"))
        torch.save({"step": step, "rng": rngs, **trainer_state}, os.path.join(tmp, "trainer_state.pt"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = os.path.join(checkpoint_dir(cfg), "latest")
        with open(pointer + ".tmp", "w") as f:
            f.write(name)
        os.replace(pointer + ".tmp", pointer)
        for old in sorted(d for d in os.listdir(checkpoint_dir(cfg)) if d.startswith("step_"))[:-2]:
            shutil.rmtree(os.path.join(checkpoint_dir(cfg), old), ignore_errors=True)  # keep two
    if dist.is_initialized():
        dist.barrier()


def load_optimizer(model, optimizer, checkpoint: str) -> None:
    """The full optimizer state, read from disk by rank 0 only and broadcast (each rank keeps its
    shard), so a resume on N ranks does not hold N copies of it in host memory."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    distributed = dist.is_initialized()
    state = {}
    if not distributed or dist.get_rank() == 0:
        state = torch.load(os.path.join(checkpoint, "optimizer.pt"), mmap=True, weights_only=False)
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed))


def rng_state(sampling_rng: random.Random) -> dict:
    """Every random stream this rank draws from: torch's (sampling in `generate`), CUDA's, the
    dynamic-sampling refills' own generator, and Python's and NumPy's for completeness."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "sampling": sampling_rng.getstate()}


def restore_rng(state: dict, sampling_rng: random.Random) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


# ============================================================================ one RL step
def collect_rollouts(model, tokenizer, problems, indices, cfg: Config, rng: random.Random,
                     pool: list[int], reward_fn=math_reward,
                     stop_ids: list[int] | None = None) -> tuple[Rollouts, torch.Tensor, list[int], dict]:
    """Steps 2-4: generate, score, and (DAPO) keep only groups whose rewards differ.

    Dynamic sampling replaces zero-signal groups with fresh prompts from `pool` for up to
    `max_sampling_rounds` rounds; if that is not enough, zero-signal groups fill the batch (they
    add no gradient) so that every rank keeps the same number of sequences. Whether another round
    is needed is decided by all ranks together (an all-reduce of "still short of groups"), so every
    rank runs the same number of rounds; a rank that is already full generates nothing in them.
    Rewards live on the model's device, like everything the loss touches.
    """
    G, wanted = cfg.group_size, len(indices)
    device = next(model.parameters()).device
    kept: list[tuple[Rollouts, torch.Tensor, int]] = []  # (group rollouts, rewards (G,), prompt)
    spare: list[tuple[Rollouts, torch.Tensor, int]] = []
    stats = {"groups/zero_std_frac": None, "sampling/rounds": 0}
    for round_ in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
        if round_ > 0:  # one all-reduce a round: go on while any rank is short of groups
            if all_reduce_sum([float(len(kept) < wanted)], device)[0] == 0:
                break
            indices = rng.sample(pool, wanted - len(kept)) if len(kept) < wanted else []
        stats["sampling/rounds"] = round_ + 1
        if not indices:
            continue
        rollouts = generate_rollouts(model, tokenizer, [problems[i]["prompt"] for i in indices], G,
                                     cfg.max_new_tokens, cfg.temperature, cfg.top_p, stop_ids)
        lengths = rollouts.loss_mask.sum(dim=1).tolist()
        rewards = torch.tensor([reward_fn(text, problems[indices[j // G]]["answer"])
                                + overlong_penalty(lengths[j], cfg.max_new_tokens, cfg.overlong_buffer)
                                for j, text in enumerate(rollouts.completions)], device=device)  # (B,)
        signal = groups_with_signal(rewards, G).tolist()
        if stats["groups/zero_std_frac"] is None:  # the first round measures the policy, unfiltered
            stats["groups/zero_std_frac"] = 1.0 - float(np.mean(signal))
            stats["reward_sum"], stats["accuracy_sum"] = float(rewards.sum()), float((rewards > 0.5).sum())
        for g, has_signal in enumerate(signal):
            piece = (rollouts.select(range(g * G, (g + 1) * G)), rewards[g * G : (g + 1) * G], indices[g])
            (kept if has_signal or not cfg.dynamic_sampling else spare).append(piece)
    pieces = (kept + spare)[:wanted]
    stats["groups/unfilled"] = max(0, wanted - len(kept))
    return (concat_rollouts([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]),
            [p[2] for p in pieces], stats)


def policy_update(model, optimizer, rollouts: Rollouts, old_logprobs, advantages, cfg: Config,
                  knobs: dict, device: torch.device, world_size: int,
                  ref_logprobs: torch.Tensor | None = None) -> dict:
    """Step 7: `ppo_epochs` passes of `updates_per_step` optimizer steps over mini-batches of this
    rank's groups (the same old log-probs throughout: later updates are off-policy, so the clip acts).

    Each mini-batch's loss is normalised by its GLOBAL token (or sequence) count, summed over
    ranks, so the objective is the same whatever the number of ranks and micro-batches. FSDP
    averages gradients over ranks; our loss is already a global mean, hence `* world_size`.
    """
    B = rollouts.completion_ids.shape[0]
    per_update = B // cfg.updates_per_step
    starts = range(0, B, per_update)
    counts = all_reduce_sum([float(rollouts.loss_mask[s : s + per_update].sum()) for s in starts], device)
    num_updates = cfg.ppo_epochs * len(starts)
    num_seqs = per_update * world_size
    input_ids, attention_mask = rollouts.input_ids, rollouts.attention_mask
    T = rollouts.completion_ids.shape[1]
    totals = {"loss/policy": 0.0, "grad_norm": 0.0, "nonfinite_skipped": 0}
    stat_sums: dict[str, float] = {}
    for u, start in [(u, s) for _ in range(cfg.ppo_epochs) for u, s in enumerate(starts)]:
        optimizer.zero_grad(set_to_none=True)
        order = start + length_sorted(attention_mask[start : start + per_update])  # (per_update,)
        for rows in order.split(cfg.micro_batch_size):  # micro-batches of similar length: less padding
            with autocast(model):
                logprobs, entropy = sequence_logprobs_and_entropy(
                    model, input_ids[rows], attention_mask[rows], T, cfg.logprob_chunk_size,
                    cfg.temperature)
            loss, stats = policy_loss(
                logprobs, old_logprobs[rows], advantages[rows], rollouts.loss_mask[rows],
                clip_low=cfg.clip_low, clip_high=knobs["clip_high"], dual_clip=cfg.dual_clip,
                loss_agg=cfg.loss_agg, num_tokens=counts[u], num_seqs=num_seqs,
                max_len=cfg.max_new_tokens, entropy=entropy, entropy_coef=knobs["entropy_coef"],
                pos_weight=1 - knobs["adv_balance"], neg_weight=1 + knobs["adv_balance"],
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[rows], kl_coef=cfg.kl_coef)
            (loss * world_size).backward()
            totals["loss/policy"] += loss.item()
            weight = float(rollouts.loss_mask[rows].sum()) / max(counts[u], 1.0)
            for key, value in stats.items():
                stat_sums[key] = stat_sums.get(key, 0.0) + value * weight
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if not torch.isfinite(grad_norm):  # every rank sees the same global norm: all skip together
            warnings.warn(f"non-finite gradient norm ({grad_norm.item()}); update skipped")
            optimizer.zero_grad(set_to_none=True)
            totals["nonfinite_skipped"] += 1
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # free the gradients now, not after the next rollout
        totals["grad_norm"] += grad_norm.item() / num_updates
    # loss and stats: global token-weighted means over ranks, averaged over the mini-batches
    keys = sorted(stat_sums)
    summed = all_reduce_sum([totals["loss/policy"]] + [stat_sums[k] for k in keys], device)
    out = {"loss/policy": summed[0] / num_updates, "grad_norm": totals["grad_norm"],
           "nonfinite_skipped": totals["nonfinite_skipped"]}
    for key, value in zip(keys, summed[1:]):
        out[f"loss/{key}"] = value / num_updates
    return out


# ============================================================================ the loop
NO_SIGNAL_WARN_STEPS = 5
NO_SIGNAL_MESSAGE = (
    "for {steps} steps in a row every group's samples got the same reward (all wrong, or all right): "
    "no gradient at all. Usually the reward never fires: check that --answer_field holds the reference "
    "answers, that the model writes its answer in a form the verifier reads (\\boxed{{...}}, '#### 42', "
    "'Answer: 42'; see --system_prompt and --chat_template), that --max_new_tokens does not cut answers "
    "off, and that the task is neither far too hard nor too easy for this model. Verifier: {verifier}")

def main(argv: list[str] | None = None) -> None:
    rank, world_size, device = setup_distributed()
    hf_logging.disable_progress_bar()  # our own bars only
    try:
        cfg = parse_config(sys.argv[1:] if argv is None else argv).resolved()
        validate(cfg, world_size)
        reward_fn, verifier_note = make_verifier(cfg.verifier)
        if rank == 0:
            print(f"verifier: {verifier_note}", flush=True)  # the first line: who scores this run
        train_problems, held_out = load_data(cfg)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sampling_rng = seed_everything(cfg.seed, rank)
    os.makedirs(checkpoint_dir(cfg), exist_ok=True)
    if cfg.model == "embedded" and device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # a 0.64M-parameter model gains nothing from a second thread, and OpenMP threads that spin
        # while another process shares the cores ran the warm start 40x slower (2.6 s/it vs 16 it/s)
        torch.set_num_threads(1)

    # ---- the policy: a checkpoint to resume, the embedded default, or any HF model
    resume_from = latest_checkpoint(cfg) if cfg.resume else None
    initial_path = cfg.model
    if cfg.model == "embedded":
        initial_path = os.path.join(cfg.out_dir, "base_model")
        if rank == 0 and not os.path.exists(initial_path):
            build_embedded_default(initial_path, cfg)
        if dist.is_initialized():
            dist.barrier()
    model_path = resume_from or initial_path
    model, tokenizer = load_policy(model_path, device)
    num_params = sum(p.numel() for p in model.parameters())
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.system_prompt is None and cfg.dataset not in ("arithmetic", "dapo-math"):  # DAPO's prompts carry their own
        cfg.system_prompt = "Please reason step by step, and put your final answer within \\boxed{}."
    train_problems = format_prompts(train_problems, tokenizer, cfg.chat_template, cfg.system_prompt)
    held_out = format_prompts(held_out, tokenizer, cfg.chat_template, cfg.system_prompt)
    ref_model = None
    if cfg.kl_coef > 0:  # a frozen copy of the starting policy
        ref_model, _ = load_policy(initial_path, device)
        ref_model.requires_grad_(False)
    stop_ids = stop_token_ids(tokenizer, model)  # EOS and the chat template's end of turn
    if dist.is_initialized():  # FSDP2 under torchrun, one rank included
        shard_model(model)
        if ref_model is not None:
            shard_model(ref_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---- schedule, controller, curriculum (targets may need the entropy of step 0)
    curriculum = TwoPhaseCurriculum([p.get("level") for p in train_problems],
                                    order="off" if cfg.curriculum == "off" else cfg.curriculum_order,
                                    seed=cfg.seed)
    gains = {"pid": {"kp": cfg.kp, "ki": cfg.ki, "kd": cfg.kd},
             "pid-entropy": {"kp": cfg.kp, "ki": cfg.ki, "kd": cfg.kd},
             "balance": {"kp": cfg.kp, "ki": cfg.ki},
             "skywork": {"delta": cfg.skywork_delta}}[cfg.controller]
    controller = make_controller(cfg.controller, **{k: v for k, v in gains.items() if v is not None},
                                 **({"init": cfg.clip_high} if cfg.controller == "pid" else {}))
    schedule: EntropySchedule | None = None
    tracker = TrackingError()
    start_step, skipped_total = 0, 0
    if resume_from:
        state = torch.load(os.path.join(resume_from, "trainer_state.pt"), weights_only=False)
        load_optimizer(model, optimizer, resume_from)
        schedule = EntropySchedule(**state["schedule"]) if state["schedule"] else None
        controller.load_state_dict(state["controller"])
        curriculum.load_state_dict(state["curriculum"])
        tracker.load_state_dict(state["tracker"])
        start_step, skipped_total = state["step"], state["nonfinite_skipped"]
        if len(state["rng"]) == world_size:  # every random stream where it was: an exact continuation
            restore_rng(state["rng"][rank], sampling_rng)
        else:
            sampling_rng = seed_everything(cfg.seed + 1_000_003 * start_step, rank)
            if rank == 0:
                print(f"note: {resume_from} was written by {len(state['rng'])} rank(s) and resumes on "
                      f"{world_size}: model, optimizer, schedule, controller and curriculum are restored, "
                      f"the random streams are re-seeded from --seed and the step, so the run goes on "
                      f"faithfully but not bit-exactly (resume on {len(state['rng'])} rank(s) for that)")
    if rank == 0:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
        print(f"config: {json.dumps(dataclasses.asdict(cfg))}")
        print(f"policy: {model_path} ({num_params / 1e6:.2f}M "
              f"parameters), {len(train_problems)} training / {len(held_out)} held-out problems, "
              f"{world_size} rank(s) on {device.type}" + (f", resuming at step {start_step}" if resume_from else ""))
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if rank == 0:  # drop lines of steps after the checkpoint: they are redone now
        keep = []
        if resume_from and os.path.exists(metrics_path):
            with open(metrics_path) as f:
                keep = [line for line in f if line.strip() and json.loads(line)["step"] < start_step]
        with open(metrics_path, "w") as f:
            f.writelines(keep)
    ks = [int(k) for k in cfg.eval_k.split(",")]
    # evaluation generates as many sequences at once as a rollout batch does (same memory)
    eval_prompts_per_batch = max(1, cfg.prompts_per_step // world_size * cfg.group_size // cfg.eval_n)

    def evaluate(step: int) -> dict:
        """pass@k and entropy on the held-out set, prompts split across ranks (any split: a rank
        may get fewer prompts, or none)."""
        if rank == 0:
            tqdm.write(f"step {step}: held-out pass@k on {len(held_out)} prompts x {cfg.eval_n} samples "
                       f"x <= {cfg.max_new_tokens} tokens, over {world_size} rank(s)")
        with generation_mode(model):
            result = evaluate_passk(model, tokenizer, held_out[rank::world_size], reward_fn,
                                    cfg.eval_n, ks, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                    prompts_per_batch=eval_prompts_per_batch, chunk_size=cfg.logprob_chunk_size,
                                    micro_batch_size=cfg.micro_batch_size, progress=rank == 0, stop_ids=stop_ids)
        correct = all_gather_list(result["correct"])
        entropy = all_reduce_sum([result["entropy"] * result["tokens"], result["tokens"]], device)
        out = {f"eval/{k}": v for k, v in summarize(correct, cfg.eval_n, ks).items()}
        out["eval/entropy"] = entropy[0] / max(entropy[1], 1)
        if rank == 0:
            tqdm.write(f"step {step} held-out: " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in out.items()))
        out["eval/correct"] = correct  # per held-out prompt (rank order): for bootstrap intervals
        return out

    G = cfg.group_size
    no_signal_steps = 0  # consecutive steps in which no group had any reward variance
    pool = list(range(len(train_problems)))
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="RL",
               disable=rank != 0, dynamic_ncols=True)
    eval_metrics = evaluate(start_step) if start_step == 0 else {}
    for step in bar:
        t_step = time.time()
        # 1. prompts: the same global draw on every rank, each takes its slice
        phase = schedule.phase(step) if schedule else "stable"
        indices = curriculum.sample(cfg.prompts_per_step, phase)[rank::world_size]
        # 2-3. rollouts and rewards (with DAPO dynamic sampling)
        t0 = time.time()
        with generation_mode(model):
            rollouts, rewards, indices, sample_stats = collect_rollouts(
                model, tokenizer, train_problems, indices, cfg, sampling_rng, pool, reward_fn, stop_ids)
        rollout_s = time.time() - t0
        # 4. advantages, per group
        advantages = group_advantages(rewards, G, cfg.adv_scale)  # (B,)
        # 5. old log-probs and the entropy the controller sees (fused, chunked, no grad)
        t0 = time.time()
        with autocast(model):
            old_logprobs, entropy = policy_logprobs_and_entropy(
                model, rollouts, cfg.micro_batch_size, cfg.logprob_chunk_size, cfg.temperature)
            ref_logprobs = None if ref_model is None else policy_logprobs_and_entropy(
                ref_model, rollouts, cfg.micro_batch_size, cfg.logprob_chunk_size, cfg.temperature)[0]
        mask = rollouts.loss_mask
        mismatch = sampler_mismatch(rollouts, old_logprobs)  # (B, T): trainer vs sampler log-probs
        sums = all_reduce_sum([float((entropy * mask).sum()), float(mask.sum()),
                               sample_stats.pop("reward_sum"), float(rewards.numel()),
                               sample_stats.pop("accuracy_sum"), float(rewards.sum()),
                               float(mismatch.sum()), sample_stats.pop("groups/zero_std_frac")], device)
        measured_entropy, tokens = sums[0] / sums[1], sums[1]
        zero_std_frac = sums[7] / world_size  # every rank has the same number of groups
        no_signal_steps = no_signal_steps + 1 if zero_std_frac == 1.0 else 0
        if no_signal_steps == NO_SIGNAL_WARN_STEPS and rank == 0:
            warnings.warn(NO_SIGNAL_MESSAGE.format(steps=no_signal_steps, verifier=verifier_note))
        # 6. entropy control: the schedule gives H*(step), the controller the knob for this update
        if schedule is None:  # first step: targets may be relative to the entropy measured now
            schedule = make_schedule(cfg, measured_entropy)
            phase = schedule.phase(step)
        target = schedule.target(step)
        knob = controller.update(measured_entropy, target)
        knobs = {"clip_high": cfg.clip_high, "entropy_coef": 0.0, "adv_balance": 0.0,
                 controller.name: knob}
        track_err = tracker.add(measured_entropy, target, phase)
        # 7. policy update
        t0 = time.time()
        model.train()
        update_stats = policy_update(model, optimizer, rollouts, old_logprobs, advantages, cfg, knobs,
                                     device, world_size, ref_logprobs)
        update_s = time.time() - t0
        skipped_total += update_stats.pop("nonfinite_skipped")
        # curriculum: every rank folds in every rank's pass rates, so its state stays identical
        pass_rates = (rewards > 0.5).float().view(-1, G).mean(dim=1).tolist()
        curriculum.update(all_gather_list(indices), all_gather_list(pass_rates))
        # 8. log, evaluate, save
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
            eval_metrics = evaluate(step + 1)
        record = {"step": step, "reward/mean": sums[2] / sums[3], "reward/accuracy": sums[4] / sums[3],
                  "reward/batch_mean": sums[5] / sums[3],
                  "entropy": measured_entropy, "entropy/target": target, "entropy/knob": knob,
                  "entropy/knob_name": controller.name, "entropy/track_err": track_err,
                  **{f"entropy/track_err_{p}": v for p, v in tracker.summary().items()},
                  **update_stats, "response_length/mean": tokens / sums[3], "tokens": tokens,
                  "rollout/logp_mismatch": sums[6] / sums[1], "groups/zero_std_frac": zero_std_frac,
                  **sample_stats, "curriculum/phase": phase, **curriculum.stats(),
                  "nonfinite_skipped": skipped_total, "time/rollout_s": rollout_s,
                  "time/update_s": update_s, "time/step_s": time.time() - t_step, **eval_metrics}
        eval_metrics = {}
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(reward=f"{record['reward/mean']:.2f}", H=f"{measured_entropy:.3f}",
                            target="-" if target is None else f"{target:.3f}", knob=f"{knob:.3f}")
        done = step + 1 == cfg.steps
        if done or (cfg.save_every and (step + 1) % cfg.save_every == 0):
            save_checkpoint(step + 1, model, tokenizer, optimizer,
                            {"schedule": schedule.state_dict(), "controller": controller.state_dict(),
                             "curriculum": curriculum.state_dict(), "tracker": tracker.state_dict(),
                             "nonfinite_skipped": skipped_total, "config": dataclasses.asdict(cfg)},
                            cfg, rank, rng_state(sampling_rng))
    bar.close()
    if rank == 0:
        summary = {"tracking_error": tracker.summary(), "nonfinite_skipped": skipped_total}
        with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"done: {json.dumps(summary)}; metrics in {metrics_path}")
        with open(metrics_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(text_plot({"-": [r["entropy/target"] for r in rows], "*": [r["entropy"] for r in rows]},
                        "entropy (*) and its target (-), nats"))
        print(text_plot({"*": [r["reward/mean"] for r in rows]}, "mean reward (*)"))
        plot_metrics(metrics_path, os.path.join(cfg.out_dir, "metrics.png"))
    teardown_distributed()  # under torchrun: barrier, destroy, exit (see rollout.py)


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
            chunk = [v for v in values[col * steps // width : (col + 1) * steps // width] if v is not None]
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


def plot_metrics(metrics_path: str, png_path: str) -> None:
    """Entropy vs target, reward and the knob over steps, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["entropy"] for r in rows], label="measured")
    axes[0].plot(steps, [r["entropy/target"] if r["entropy/target"] is not None else math.nan for r in rows],
                 "--", label="target")
    axes[0].set(title="entropy (nats)", xlabel="step")
    axes[0].legend()
    axes[1].plot(steps, [r["reward/mean"] for r in rows])
    axes[1].set(title="mean reward", xlabel="step")
    axes[2].plot(steps, [r["entropy/knob"] for r in rows])
    axes[2].set(title=f"knob: {rows[-1]['entropy/knob_name']}", xlabel="step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
