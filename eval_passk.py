"""pass@k: the unbiased estimator, and a command that measures it for a model.

pass@k is the probability that at least one of k samples is correct. From n >= k samples of which c
are correct, the unbiased estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code", Eq. 1) is

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

and the product form never forms the huge binomials. The Entropy Scheduling paper picks its
schedule for a pass@k goal: small k rewards a sharp policy, large k a diverse one. This script
also reports the samples' mean token entropy, so that entropy and pass@k can be plotted against
each other across checkpoints.

    python eval_passk.py --model runs/default/checkpoints/latest --dataset arithmetic --n 16 --k 1,4,16
    torchrun --standalone --nproc_per_node=8 eval_passk.py --model Qwen/Qwen2.5-Math-1.5B \\
        --dataset math --split test --limit 500 --num_samples 16 --k 1,4,16 --out results.json

A checkpoint written by train.py (`--model` its directory, or the `checkpoints/latest` that names
it) is evaluated with the prompt format and sampling of its run, read from its train_config.json:
chat template, system prompt, max_new_tokens, temperature and top_p, each overridden by its flag.
Any other model gets the defaults train.py gives the same data set (`data.default_system_prompt`).

Under torchrun the prompts are split across ranks (`evaluate_on_ranks`, which train.py uses too)
and every rank gets the counts back in the problems' order. Left out: maj@k (majority voting) and
temperature sweeps; pass@k at one temperature is what the paper's goals are stated in.

`pass_at_k` is copyable alone (standard library); the command needs rollout.py, reward.py, data.py
and distributed.py beside it (testbed.py too for the built-in task), imported when it runs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (exact for n up to thousands).

    >>> pass_at_k(n=4, c=1, k=2)  # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    0.5
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n} samples per prompt; sample more "
                         f"(--n {k}) or ask for a smaller k")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize(correct: list[int], n: int, ks: list[int]) -> dict[str, float]:
    """Mean pass@k over prompts, from each prompt's number of correct samples (nan for no prompts).

    >>> summarize([0, 4, 1], n=4, ks=[1])  # (0 + 1 + 0.25) / 3
    {'pass@1': 0.4166666666666667}
    """
    if not correct:
        return {f"pass@{k}": math.nan for k in ks}
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}


def evaluate_passk(model, tokenizer, problems: list[dict], reward_fn, n: int, ks: list[int],
                   max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                   prompts_per_batch: int = 16, chunk_size: int = 256, micro_batch_size: int = 64,
                   progress: bool = False, stop_ids: list[int] | None = None,
                   keep_samples: int = 0) -> dict:
    """Sample n completions per problem; returns per-problem correct counts, pass@k and entropy.

    `problems` are dicts with "prompt" (already templated) and "answer"; `reward_fn(completion,
    answer)` returns 1.0 for a correct completion. The entropy is the token-mean over all samples
    of the full next-token distribution's entropy at this temperature. `progress` shows a bar with
    an ETA; an empty `problems` (a rank with no share) returns empty counts. "samples" holds the
    first completion of each of the first `keep_samples` problems, with its reward and the answer
    the verifier read in it: what to look at when every reward is 0.
    """
    import torch
    from tqdm import tqdm

    from reward import extract_answer
    from rollout import generate_rollouts, policy_logprobs_and_entropy

    correct, entropy_sum, tokens, samples = [], 0.0, 0, []
    bar = tqdm(total=len(problems), desc=f"pass@k ({n} samples)", unit="prompt", disable=not progress,
               leave=False, dynamic_ncols=True)
    for start in range(0, len(problems), prompts_per_batch):
        batch = problems[start : start + prompts_per_batch]
        rollouts = generate_rollouts(model, tokenizer, [p["prompt"] for p in batch], n,
                                     max_new_tokens, temperature, top_p, stop_ids)
        rewards = torch.tensor([reward_fn(text, batch[i // n]["answer"])
                                for i, text in enumerate(rollouts.completions)])
        correct += (rewards.view(len(batch), n) > 0.5).sum(dim=1).tolist()
        for i, problem in enumerate(batch[: max(keep_samples - start, 0)]):
            text = rollouts.completions[i * n]
            samples.append({"index": start + i, "prompt": problem["prompt"], "answer": problem["answer"],
                            "completion": text, "extracted": extract_answer(text),
                            "reward": float(rewards[i * n])})
        _, entropy = policy_logprobs_and_entropy(model, rollouts, micro_batch_size, chunk_size, temperature)
        entropy_sum += (entropy * rollouts.loss_mask).sum().item()
        tokens += int(rollouts.loss_mask.sum())
        bar.update(len(batch))
    bar.close()
    return {"correct": correct, "n": n, "entropy": entropy_sum / max(tokens, 1), "tokens": tokens,
            "samples": samples, **summarize(correct, n, ks)}


def describe(sample: dict, width: int = 160) -> str:
    """One line on a sample: the prompt's end, what the model wrote, what the verifier read in it,
    the reference and the reward.

    >>> describe({"prompt": "5+8=", "answer": "12", "extracted": "13", "reward": 0.0, "completion": "13"})
    "'5+8=' -> '13': read '13', answer '12', reward 0"
    """
    def tail(text, size):  # the end of a prompt is the question; the end of a completion its answer
        return repr(text if len(text) <= size else "..." + text[-size:])

    return (f"{tail(sample['prompt'], 60)} -> {tail(sample['completion'], width)}: read "
            f"{sample['extracted']!r}, answer {sample['answer']!r}, reward {sample['reward']:g}")


def evaluate_on_ranks(model, tokenizer, problems: list[dict], reward_fn, n: int, ks: list[int],
                      max_new_tokens: int, seed: int | None = None, **kwargs) -> dict:
    """`evaluate_passk` with the problems split across ranks: rank r samples problems[r::world]
    (any split: a rank may get fewer problems, or none). Every rank returns the whole result, its
    per-problem counts and samples in the problems' own order. One process: `evaluate_passk`.

    With `seed`, each rank samples from a random stream of its own (`own_random_stream`, seeded
    with seed and rank): the same model, problems and flags give the same result whatever ran
    before, and the caller's random streams go on as if no evaluation had run."""
    import torch.distributed as dist

    from distributed import all_gather_list

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = next(model.parameters()).device
    with own_random_stream(None if seed is None else seed + 1_000_003 * rank, device):
        part = evaluate_passk(model, tokenizer, problems[rank::world], reward_fn, n, ks,
                              max_new_tokens, **kwargs)
    parts = all_gather_list([part])
    correct = [0] * len(problems)
    for r, part in enumerate(parts):
        correct[r::world] = part["correct"]
    tokens = sum(part["tokens"] for part in parts)
    entropy = sum(part["entropy"] * part["tokens"] for part in parts) / max(tokens, 1)
    samples = sorted(({**sample, "index": r + sample["index"] * world}
                      for r, part in enumerate(parts) for sample in part["samples"]),
                     key=lambda sample: sample["index"])[: kwargs.get("keep_samples", 0)]
    return {"correct": correct, "n": n, "entropy": entropy, "tokens": tokens, "samples": samples,
            **summarize(correct, n, ks)}


PROMPT_AND_SAMPLING = ("chat_template", "system_prompt", "max_new_tokens", "temperature", "top_p")


def checkpoint_settings(model_path: str) -> dict:
    """The prompt format and sampling a train.py checkpoint's run used (its train_config.json);
    {} for any other model."""
    path = os.path.join(model_path, "train_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        config = json.load(f)
    return {key: config[key] for key in PROMPT_AND_SAMPLING if key in config}


@contextlib.contextmanager
def own_random_stream(seed: int | None, device=None):
    """Inside, torch's generators (the CPU's, and `device`'s when it is a GPU: `generate` samples
    there) are seeded with `seed`; after, they are back where they were. None: no change."""
    if seed is None:
        yield
        return
    import torch

    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="HF hub name, local directory, or a train.py run's checkpoints/latest")
    parser.add_argument("--attn_implementation", default=None,
                        help="eager | sdpa | flash_attention_2 | ...; default: FlashAttention 2 on GPUs, "
                             "else the model's own")
    parser.add_argument("--dataset", default="arithmetic", help="arithmetic | gsm8k | math | dapo-math | FILE")
    parser.add_argument("--split", default="test", help="split of a hub data set")
    parser.add_argument("--limit", type=int, default=200,
                        help="number of problems, a seeded random sample of the set, the same for "
                             "every run (data.HELD_OUT_SEED; 0: all)")
    parser.add_argument("--prompt_field", default="prompt")
    parser.add_argument("--answer_field", default="answer")
    parser.add_argument("--chat_template", default=None, choices=["auto", "none"],
                        help="auto: the tokenizer's chat template when it has one (None: the "
                             "checkpoint's run's, else auto)")
    parser.add_argument("--system_prompt", default=None,
                        help="instruction put before each problem (None: the checkpoint's run's, "
                             "else train.py's default for --dataset; '' for none)")
    parser.add_argument("--verifier", default="auto", choices=["builtin", "math-verify", "auto"],
                        help="auto: math-verify when installed, else the built-in rule")
    parser.add_argument("--n", "--num_samples", dest="n", type=int, default=16,
                        help="samples per problem (under torchrun write --num_samples: torchrun "
                             "itself takes --n as a prefix of its own --nnodes)")
    parser.add_argument("--k", default="1,4,16", help="comma-separated k values, each <= n")
    parser.add_argument("--temperature", type=float, default=None,
                        help="None: the checkpoint's run's, else 1.0")
    parser.add_argument("--top_p", type=float, default=None, help="None: the checkpoint's run's, else 1.0")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="None: the checkpoint's run's, else data.default_max_new_tokens (4 for "
                             "arithmetic, 1024 otherwise)")
    parser.add_argument("--prompts_per_batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the samples' own random stream (each rank its own)")
    parser.add_argument("--out", default=None,
                        help="write per-problem counts, the summary and --samples completions here")
    parser.add_argument("--samples", type=int, default=8,
                        help="problems whose first completion --out keeps, with reward and answer")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    for k in ks:
        if not 1 <= k <= args.n:
            parser.error(f"--k {k}: each k must be between 1 and --n {args.n} (samples per problem)")

    import torch

    from data import HELD_OUT_SEED, default_max_new_tokens, default_system_prompt, load_problems
    from distributed import setup_distributed, teardown_distributed
    from reward import make_verifier
    from rollout import format_prompts, load_policy_or_exit, resolve_model_path

    try:  # a checkpoints/latest pointer: the step_N/ it names; a missing directory: one line
        model_path = resolve_model_path(args.model)
    except FileNotFoundError as e:
        print(f"error: --model {e}", file=sys.stderr)
        sys.exit(2)
    recorded = checkpoint_settings(model_path)
    defaults = {"chat_template": "auto", "system_prompt": default_system_prompt(args.dataset),
                "max_new_tokens": default_max_new_tokens(args.dataset), "temperature": 1.0,
                "top_p": 1.0}
    for key in PROMPT_AND_SAMPLING:  # a flag, else the checkpoint's run, else the default
        if getattr(args, key) is None:
            setattr(args, key, recorded[key] if key in recorded else defaults[key])

    try:
        reward_fn, verifier_note = make_verifier(args.verifier)
    except ValueError as e:  # math-verify asked for but not installed: say how to fix it
        parser.error(str(e))
    rank, world, device = setup_distributed()
    if rank == 0:
        print(f"verifier: {verifier_note}", flush=True)
        source = (f"{model_path}/train_config.json, the run's, where no flag is given" if recorded
                  else f"defaults for --dataset {args.dataset} where no flag is given")
        print(f"prompts and sampling ({source}): chat_template {args.chat_template}, "
              f"system_prompt {args.system_prompt!r}, max_new_tokens {args.max_new_tokens}, "
              f"temperature {args.temperature}, top_p {args.top_p}", flush=True)
    # each rank holds a whole copy (no optimizer, no gradients): bf16 on a GPU, fp32 on a CPU
    model, tokenizer = load_policy_or_exit(args.model, model_path, rank, device=device,
                                           dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                                           attn_implementation=args.attn_implementation)
    model.eval()
    problems = load_problems(args.dataset, args.split, args.prompt_field, args.answer_field,
                             limit=args.limit or None, sample_seed=HELD_OUT_SEED)
    problems = format_prompts(problems, tokenizer, args.chat_template, args.system_prompt)
    max_new = args.max_new_tokens
    if rank == 0:
        named = args.model if model_path == args.model else f"{args.model} ({model_path})"
        print(f"pass@k of {named} ({model.config.model_type}, {model.config._attn_implementation} "
              f"attention): {len(problems)} prompts x {args.n} samples x <= {max_new} tokens, "
              f"over {world} rank(s) on {device.type}", flush=True)
    result = evaluate_on_ranks(model, tokenizer, problems, reward_fn, args.n, ks, max_new,
                               temperature=args.temperature, top_p=args.top_p,
                               prompts_per_batch=args.prompts_per_batch, progress=rank == 0,
                               keep_samples=args.samples, seed=args.seed)
    if rank == 0:
        print(f"\n{args.model} on {args.dataset} ({len(problems)} problems, n={args.n}, "
              f"T={args.temperature})")
        print("  " + "  ".join(f"{key:>9}" for key in [f"pass@{k}" for k in ks] + ["entropy"]))
        print("  " + "  ".join(f"{result[key]:>9.4f}" for key in [f"pass@{k}" for k in ks] + ["entropy"]))
        for sample in result["samples"][:2]:
            print("  sample: " + describe(sample))
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"model": args.model, "dataset": args.dataset, "args": vars(args),
                           "verifier_used": verifier_note,
                           "summary": {k: v for k, v in result.items() if k not in ("correct", "samples")},
                           "samples": result["samples"],
                           "per_problem": [{"prompt": p["prompt"], "answer": p["answer"], "correct": c}
                                           for p, c in zip(problems, result["correct"])]}, f, indent=1)
            print(f"wrote {args.out}")
    teardown_distributed()  # under torchrun: barrier, destroy, exit (see distributed.py)
    return result


if __name__ == "__main__":
    main()
