"""The noise floor of entropy tracking: how much the entropy a controller reads varies between
batches when the policy does not change at all.

    python train.py --schedule constant --out_dir runs/const          # a policy held at a target
    python benchmarks/entropy_noise.py --model runs/const/checkpoints/step_000200
    python benchmarks/entropy_noise.py --model PATH --prompts 32 64 128 --batches 24

train.py's controller reads H_s, the mean token entropy of one step's batch (step 5), and the
tracking error is mean |H_s - H*| / H* over those same readings. Prompts differ in how sure the
policy is of them (a trained policy is sure of short sums and unsure of long ones), so a policy
that sits exactly on its target still reads a little differently on every batch of prompts. With
readings spread with standard deviation sd around the target, the mean relative deviation
printed here is what a perfect controller would score: no controller can track below it with
this many prompts per step.

For each batch size P the script draws `--batches` batches of P training prompts at random (as
train.py's uniform curriculum does) and builds the step's batch with train.py's own
`collect_rollouts`: `--group_size` completions each and, under DAPO's loss, dynamic sampling (the
groups whose rewards all agree are replaced by fresh prompts; `-- --dynamic_sampling false` reads
the unfiltered batch instead). It measures the token-mean entropy exactly as train.py does. It
prints, per P: the mean entropy, its sd across batches and the mean |deviation| from the mean,
both relative to the mean. Nothing is trained; the model is only read.
"""
import argparse
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rollout import format_prompts, load_policy, policy_logprobs_and_entropy, stop_token_ids  # noqa: E402
from distributed import generation_mode  # noqa: E402
from train import collect_rollouts, load_data, parse_config  # noqa: E402


def batch_entropy(model, tokenizer, problems: list[dict], indices: list[int], cfg, rng, stop_ids) -> float:
    """Mean token entropy of the batch train.py trains on and its controller reads (H_s): G
    completions per prompt, after dynamic sampling when the config has it (DAPO's default)."""
    with generation_mode(model):
        rollouts = collect_rollouts(model, tokenizer, problems, indices, cfg, rng, stop_ids=stop_ids)[0]
    entropy = policy_logprobs_and_entropy(model, rollouts, cfg.micro_batch_size, cfg.logprob_chunk_size,
                                          cfg.temperature)[1]
    mask = rollouts.loss_mask
    return float((entropy * mask).sum() / mask.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="other train.py flags (e.g. --dataset, --group_size) go after --")
    parser.add_argument("--model", required=True, help="a checkpoint or HF model (a policy trained "
                        "under a constant target shows the floor where the controller works)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[32, 64, 128], help="prompts per batch")
    parser.add_argument("--batches", type=int, default=16, help="batches per size")
    parser.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    cfg = parse_config(["--model", args.model, *extra]).resolved()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, tokenizer = load_policy(args.model, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    problems, _ = load_data(cfg)
    problems = format_prompts(problems, tokenizer, cfg.chat_template, cfg.system_prompt)
    stop_ids = stop_token_ids(tokenizer, model)
    print(f"policy {args.model}, {cfg.group_size} completions per prompt, {args.batches} batches per size, "
          f"dynamic sampling {'on' if cfg.dynamic_sampling else 'off'}")
    print(f"{'prompts':>8} {'mean H':>8} {'sd / mean':>10} {'mean |dev| / mean':>18} {'s/batch':>8}")
    for size in args.prompts:
        start, readings = time.time(), []
        for _ in tqdm(range(args.batches), desc=f"{size} prompts", leave=False):
            batch = rng.sample(range(len(problems)), size)
            readings.append(batch_entropy(model, tokenizer, problems, batch, cfg, rng, stop_ids))
        mean = statistics.mean(readings)
        sd = statistics.stdev(readings)
        dev = statistics.mean(abs(h - mean) for h in readings)
        print(f"{size:>8} {mean:>8.3f} {sd / mean:>10.3f} {dev / mean:>18.3f} "
              f"{(time.time() - start) / args.batches:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
