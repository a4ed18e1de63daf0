"""One RL step at a real model's shapes: rollout, old log-probs, policy update; time, tokens/s, memory.

    python benchmarks/rl_step.py --shape tiny --prompts 4 --group_size 4 --max_new_tokens 32   # a CPU
    torchrun --standalone --nproc_per_node=2 benchmarks/rl_step.py --shape tiny \\
        --prompts 4 --group_size 4 --max_new_tokens 32                  # FSDP2 on 2 CPU ranks (gloo)
    python benchmarks/rl_step.py --shape qwen2.5-1.5b --max_new_tokens 2048 --warmup   # one GPU
    torchrun --standalone --nproc_per_node=1 benchmarks/rl_step.py --shape qwen2.5-1.5b \\
        --max_new_tokens 2048 --warmup                                  # one GPU, FSDP2 path
    torchrun --standalone --nproc_per_node=8 benchmarks/rl_step.py --shape qwen2.5-1.5b \\
        --prompts 64 --max_new_tokens 2048 --warmup --out rl_step.json  # a multi-GPU box

The model is a Qwen2 (a Llama for llama-50m) with random weights, built on the device from the
preset's shapes (PRESETS; nothing is downloaded), in fp32: the master weights train.py keeps. On a
GPU the compute is bf16, as in train.py: autocast in one process, FSDP2 mixed precision under
torchrun. The tokenizer is character-level and only encodes the synthetic prompts (each exactly
--prompt_len tokens); their ids are far below the preset's vocabulary, which sets the cost of the
lm_head and of sampling.

Random weights sample almost uniformly over 151,936 tokens, so any token is EOS with probability
about 1/152k and (nearly) every completion runs to --max_new_tokens. That is the fixed-length worst
case a throughput benchmark wants; a real policy stops earlier and unevenly. Tokens are counted
from the loss mask, so a row that does stop early is counted as what it is (HF generate keeps
decoding finished rows until the longest one is done, so their compute is spent anyway).

The step, each phase timed separately (the code under test in the right column):
  1. rollout        --prompts x --group_size completions    rollout.generate_rollouts inside
                                                             distributed.generation_mode
  2. old log-probs  no-grad pass over prompt + completion   rollout.policy_logprobs_and_entropy
                                                             inside distributed.autocast
  3. update         random 0/1 rewards -> advantages         loss.group_advantages,
                                                             train.policy_update (AdamW)
Rewards are random because there is no verifier to time here; a reward function costs little next
to the model. `policy_update` splits the batch into --updates_per_step disjoint mini-batches, so
every completion token goes through one forward and one backward however many optimizer steps
there are. "tokens" is therefore the same count in every row: completion tokens (the sum of the
loss mask) over all ranks, and tokens/s is that count over the phase's seconds. Prompt tokens are
processed by phases 2 and 3 too, but not counted. Under torchrun the prompts are split over the
ranks, every phase starts behind a barrier, and its time is the slowest rank's.

Memory, per rank, the maximum over ranks:
  * CUDA: torch.cuda.max_memory_allocated, reset before each phase, so each phase's own peak
    (weights, gradients and optimizer state alive during it included); "start" is what was
    allocated when the phase began.
  * CPU: the process's peak resident set during the phase (Linux VmHWM, reset before each phase by
    writing 5 to /proc/self/clear_refs), so Python, torch and the model are included; where the
    reset is refused, the high-water mark since the process started (getrusage ru_maxrss), which
    only grows. "start" is the resident set (VmRSS) when the phase began.

--warmup runs one untimed step first, which takes one-off costs out of the timed step (CUDA context
and kernel selection, AdamW allocating its state on the first update). Without it they are in it.
Those costs do not grow with the completion length, so `--warmup_tokens 16` makes the untimed step
short (decoding 2048 tokens a second time would double the benchmark's wall time for nothing).
Left out: reward functions, DAPO's dynamic-sampling rounds, the reference model (kl_coef 0),
evaluation, checkpoints.
"""
import argparse
import dataclasses
import json
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import train  # noqa: E402
from distributed import autocast, generation_mode, setup_distributed, shard_model, teardown_distributed  # noqa: E402,E501
from loss import group_advantages  # noqa: E402
from rollout import generate_rollouts, policy_logprobs_and_entropy  # noqa: E402
from testbed import char_tokenizer  # noqa: E402

# Config fields of each shape (Qwen2 unless model_type says otherwise); the two Qwen2.5 rows are the
# hub checkpoints' config.json values. llama-50m: a 50M-parameter Llama with Llama 2's vocabulary,
# small enough that at hundreds of tokens its activations, not its weights, fill the memory.
PRESETS = {
    "tiny": dict(vocab_size=151936, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama-50m": dict(model_type="llama", vocab_size=32000, hidden_size=512, intermediate_size=1536,
                      num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8,
                      tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
}
PROMPT_CHARS = "0123456789+-*=() abcdefghijklmnopqrstuvwxyz"
PHASES = ("rollout", "old log-probs", "update")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=list(PRESETS), default="qwen2.5-0.5b", help="model shape preset")
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the step, over all ranks")
    parser.add_argument("--group_size", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--max_new_tokens", type=int, default=1024, help="completion length (see docstring)")
    parser.add_argument("--prompt_len", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--micro_batch_size", type=int, default=4,
                        help="sequences per forward/backward (old log-probs and update)")
    parser.add_argument("--updates_per_step", type=int, default=2, help="optimizer steps (mini-batches) per step")
    parser.add_argument("--logprob_chunk_size", type=int, default=256, help="tokens per chunk of the fused head")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="recompute layer activations")
    parser.add_argument("--warmup", action="store_true", help="run one untimed step first")
    parser.add_argument("--warmup_tokens", type=int, default=None,
                        help="completion length of the --warmup step (default: --max_new_tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results to this JSON file")
    return parser.parse_args(argv)


def check_args(args, world_size: int) -> None:
    """Every setting this script can get wrong, with the flag that fixes it (train.validate's rules
    for the same quantities, under this script's flag names)."""
    def need(ok: bool, message: str):
        if not ok:
            raise train.ConfigError(message)

    need(args.group_size >= 2, f"--group_size must be >= 2 (group-relative advantages), got {args.group_size}")
    need(args.prompts >= world_size and args.prompts % world_size == 0,
         f"--prompts {args.prompts} must be a multiple of the number of ranks ({world_size})")
    local = args.prompts // world_size
    need(args.updates_per_step >= 1 and local % args.updates_per_step == 0,
         f"--updates_per_step {args.updates_per_step} must divide the prompts per rank ({local})")
    for name in ("max_new_tokens", "prompt_len", "micro_batch_size", "logprob_chunk_size"):
        need(getattr(args, name) >= 1, f"--{name} must be >= 1, got {getattr(args, name)}")
    need(args.warmup_tokens is None or args.warmup_tokens >= 1,
         f"--warmup_tokens must be >= 1, got {args.warmup_tokens}")
    need(args.prompt_len + args.max_new_tokens <= 32768,
         f"--prompt_len + --max_new_tokens must fit Qwen2.5's 32768 positions, got "
         f"{args.prompt_len + args.max_new_tokens}")


# ----------------------------------------------------------------------------- model, tokenizer, prompts
def build_model(shape: str, device: torch.device):
    """Random-weight causal LM of a preset, fp32, built directly on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import is_flash_attn_2_available

    attn = "flash_attention_2" if device.type == "cuda" and is_flash_attn_2_available() else "sdpa"  # as load_policy
    fields = dict(PRESETS[shape])
    config = AutoConfig.for_model(fields.pop("model_type", "qwen2"), **fields, max_position_embeddings=32768,
                                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1,
                                  bos_token_id=1, attn_implementation=attn)
    with device:  # no full fp32 copy in host memory on the way to a GPU
        model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    return model


def make_prompts(n: int, length: int, seed: int) -> list[str]:
    """n random strings of `length` characters, so `length` tokens each (no padding in the batch)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(PROMPT_CHARS) for _ in range(length)) for _ in range(n)]


# ----------------------------------------------------------------------------- measuring
def over_ranks(values: list[float], op, device: torch.device) -> list[float]:
    """Reduce a few numbers over all ranks with `op` (dist.ReduceOp.SUM / MAX); identity on one process."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def proc_status_gib(field: str) -> float:
    """A memory field of this process's /proc/self/status (VmRSS: now, VmHWM: the peak), in GiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Start a new peak-RSS measurement (Linux: VmHWM := VmRSS); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


PEAK_RESETS = reset_peak_rss()  # whether CPU peaks are per phase or since the process started


def measure(phase_fn, device: torch.device):
    """(phase_fn(), {"seconds", "start_gib", "peak_gib"}) for this rank; every rank starts together."""
    if dist.is_initialized():
        dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_gib = torch.cuda.memory_allocated(device) / 2**30
    else:
        reset_peak_rss()
        start_gib = proc_status_gib("VmRSS")
    t0 = time.perf_counter()
    result = phase_fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    elif PEAK_RESETS:
        peak_gib = proc_status_gib("VmHWM")
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return result, {"seconds": seconds, "start_gib": start_gib, "peak_gib": peak_gib}


def rl_step(model, tokenizer, optimizer, prompts: list[str], cfg: train.Config, device: torch.device,
            world_size: int) -> dict:
    """One RL step on this rank's prompts; returns each phase's time and memory over all ranks."""
    def rollout_phase():
        with generation_mode(model):
            return generate_rollouts(model, tokenizer, prompts, cfg.group_size, cfg.max_new_tokens,
                                     cfg.temperature, cfg.top_p)

    rollouts, rollout_m = measure(rollout_phase, device)

    def old_logprob_phase():
        with autocast(model):
            return policy_logprobs_and_entropy(model, rollouts, cfg.micro_batch_size,
                                               cfg.logprob_chunk_size, cfg.temperature)

    (old_logprobs, _entropy), old_m = measure(old_logprob_phase, device)
    B = rollouts.completion_ids.shape[0]
    rewards = torch.randint(0, 2, (B,), device=device).float()  # (B,) no verifier: random 0/1
    advantages = group_advantages(rewards, cfg.group_size, cfg.adv_scale)  # (B,)

    def update_phase():
        return train.policy_update(model, optimizer, rollouts, old_logprobs, advantages, cfg, {},
                                   device, world_size)

    update_stats, update_m = measure(update_phase, device)
    mask = rollouts.loss_mask
    counts = over_ranks([float(mask.sum()), float(B), float(B * mask.shape[1]),
                         float(rollouts.prompt_mask.sum())], dist.ReduceOp.SUM, device)
    per_phase = [rollout_m, old_m, update_m]
    maxima = over_ranks([v for m in per_phase for v in (m["seconds"], m["start_gib"], m["peak_gib"])],
                        dist.ReduceOp.MAX, device)
    tokens = counts[0]
    phases = {}
    for i, name in enumerate(PHASES):
        seconds, start_gib, peak_gib = maxima[3 * i : 3 * i + 3]
        phases[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                        "start_gib": start_gib, "peak_gib": peak_gib}
    total = sum(p["seconds"] for p in phases.values())
    phases["step"] = {"seconds": total, "tokens": tokens, "tokens_per_s": tokens / total,
                      "start_gib": phases["rollout"]["start_gib"],
                      "peak_gib": max(p["peak_gib"] for p in phases.values())}
    return {"phases": phases, "completion_tokens": tokens, "sequences": counts[1],
            "decoded_positions": counts[2], "prompt_tokens": counts[3],
            "completion_width": int(mask.shape[1]), "update_stats": update_stats}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    import transformers

    args = parse_args(argv)
    rank, world_size, device = setup_distributed()
    try:
        check_args(args, world_size)
    except train.ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    cfg = train.Config(prompts_per_step=args.prompts, group_size=args.group_size,
                       max_new_tokens=args.max_new_tokens, updates_per_step=args.updates_per_step,
                       micro_batch_size=args.micro_batch_size, logprob_chunk_size=args.logprob_chunk_size,
                       gradient_checkpointing=args.gradient_checkpointing).resolved()
    warmup_cfg = dataclasses.replace(cfg, max_new_tokens=args.warmup_tokens or args.max_new_tokens)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = build_model(args.shape, device)
    num_params = sum(p.numel() for p in model.parameters())  # before sharding: the whole model
    embed_params = model.get_input_embeddings().weight.numel()
    train.disable_dropout(model)  # as train.setup
    if cfg.gradient_checkpointing:
        train.enable_activation_checkpointing(model)
    if dist.is_initialized():  # FSDP2 under torchrun, one rank included (as train.py)
        shard_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tokenizer = char_tokenizer(PROMPT_CHARS)
    prompts = make_prompts(args.prompts, args.prompt_len, args.seed)[rank::world_size]
    torch.manual_seed(args.seed + rank)  # ranks sample different completions

    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"cpu, {torch.get_num_threads()} thread(s)"
        compute = ("bf16 (FSDP2 mixed precision)" if dist.is_initialized() else "bf16 (autocast)") \
            if device.type == "cuda" else "fp32"
        parallel = f"FSDP2 over {world_size} rank(s), {dist.get_backend()}" if dist.is_initialized() else \
            "one process, no FSDP"
        p = PRESETS[args.shape]
        print(f"device: {name}; {parallel}; torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"model: {args.shape} {model.config.model_type} (vocab {p['vocab_size']}, hidden {p['hidden_size']}, "
              f"intermediate {p['intermediate_size']}, {p['num_hidden_layers']} layers, "
              f"{p['num_attention_heads']} heads / {p['num_key_value_heads']} kv heads, tied), "
              f"{num_params / 1e6:.1f}M parameters ({embed_params / 1e6:.1f}M in the embedding), random init, "
              f"fp32 master weights, {compute} compute, {model.config._attn_implementation} attention")
        print(f"step: {args.prompts} prompts x {args.group_size} = {args.prompts * args.group_size} sequences "
              f"({len(prompts) * args.group_size} per rank), prompt {args.prompt_len} + completion "
              f"{args.max_new_tokens} tokens; micro-batch {args.micro_batch_size}, {args.updates_per_step} "
              f"updates per step, chunk {args.logprob_chunk_size}, gradient checkpointing "
              f"{'on' if args.gradient_checkpointing else 'off'}, warmup step "
              f"{warmup_cfg.max_new_tokens if args.warmup else 'none'}")

    if args.warmup:
        rl_step(model, tokenizer, optimizer, prompts, warmup_cfg, device, world_size)
    result = rl_step(model, tokenizer, optimizer, prompts, cfg, device, world_size)

    if rank == 0:
        memory = "CUDA max allocated, per phase" if device.type == "cuda" else \
            ("CPU peak RSS, per phase" if PEAK_RESETS else "CPU peak RSS since process start (no reset here)")
        print(f"memory: {memory}, GiB, max over ranks; tokens: completion tokens over all ranks "
              f"({result['completion_tokens']:.0f} of {result['decoded_positions']:.0f} decoded positions are in "
              f"the loss mask), each once through every phase")
        print(f"{'phase':<15}{'time (s)':>10}{'tokens':>9}{'tokens/s':>11}{'start (GiB)':>13}{'peak (GiB)':>12}")
        for name, ph in result["phases"].items():
            print(f"{name:<15}{ph['seconds']:>10.2f}{ph['tokens']:>9.0f}{ph['tokens_per_s']:>11.1f}"
                  f"{ph['start_gib']:>13.2f}{ph['peak_gib']:>12.2f}")
        stats = result["update_stats"]
        print(f"update: loss/policy {stats['loss/policy']:.4f}, grad_norm {stats['grad_norm']:.3f}, "
              f"non-finite updates skipped {stats['nonfinite_skipped']} (random weights and advantages: "
              f"the numbers only show the update ran)")
        if args.out:
            record = {"args": vars(args), "shape": PRESETS[args.shape], "parameters": num_params,
                      "world_size": world_size, "device": str(device), "memory": memory,
                      "torch": torch.__version__, "transformers": transformers.__version__, **result}
            with open(args.out, "w") as f:
                json.dump(record, f, indent=2)
            print(f"wrote {args.out}")
    teardown_distributed()  # under torchrun: barrier, destroy, exit (see distributed.py)


if __name__ == "__main__":
    main()
