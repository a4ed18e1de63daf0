"""One reward-neutral fork under the PPO-clip loss: when the upper clip bound moves its entropy.

    python benchmarks/clip_high_fork_sim.py                          # the tables of docs/results.md
    python benchmarks/clip_high_fork_sim.py --weights 30 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1

No model: the fork is one categorical distribution softmax(z) over K choices (a token whose choice
the verifier ignores, like a variable's name), shared by every prompt and starting at `--weights`.
Each step samples prompts x G choices and gives each a reward that does not depend on the choice
(Bernoulli `--p_correct`: the answer after the fork is right or not), forms GRPO advantages per
group, drops groups without signal (DAPO's dynamic sampling) and minimises loss.py's clipped
surrogate over `--epochs` passes of `--mini_batches` Adam steps on z, with the step's old
log-probs throughout, as train.py's policy_update does. Printed: the fork's entropy every 10% of
the steps, per eps_high, mean over seeds (~1 minute on one core).

What it shows (docs/results.md, "When clip-high can steer entropy"): with one pass over the batch
the bound hardly acts: every ratio stays near 1. With several passes the advantages' noise moves
ratios through the band [1 - eps_low, 1 + eps_high]: a small eps_high lets a choice fall faster
than it can rise, and the fork collapses; a large one lets the rare choices rise, and on a peaked
fork raises its entropy. Clip-high steers entropy only where both hold: tokens whose advantage is
noise, and ratios that move.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loss import group_advantages, groups_with_signal, policy_loss  # noqa: E402


def simulate(eps_high: float, lr: float, epochs: int, mini_batches: int, steps: int, seed: int,
             weights: tuple, prompts: int = 64, group_size: int = 8, p_correct: float = 0.3,
             eps_low: float = 0.2) -> list[float]:
    """The fork's entropy (nats) at the start of every step."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor(weights, dtype=torch.float)
    logits = torch.log(w / w.sum()).requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=lr)
    entropies = []
    for _ in range(steps):
        with torch.no_grad():
            p = torch.softmax(logits, 0)
            entropies.append(float(-(p * p.log()).sum()))
            choices = torch.multinomial(p, prompts * group_size, replacement=True,
                                        generator=gen)  # (B,)
            rewards = (torch.rand(prompts * group_size, generator=gen) < p_correct).float()  # noise
            keep = groups_with_signal(rewards, group_size).repeat_interleave(group_size)
            choices, rewards = choices[keep], rewards[keep]
            if choices.numel() == 0:
                continue
            advantages = group_advantages(rewards, group_size)
            old = torch.log_softmax(logits, 0)[choices]
        size = max(1, choices.numel() // mini_batches)
        for _ in range(epochs):
            for start in range(0, choices.numel(), size):
                rows = slice(start, start + size)
                logp = torch.log_softmax(logits, 0)[choices[rows]]
                loss, _ = policy_loss(logp[:, None], old[rows, None], advantages[rows],
                                      torch.ones(logp.shape[0], 1), clip_low=eps_low,
                                      clip_high=eps_high)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return entropies


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eps_high", type=float, nargs="+", default=[0.05, 0.2, 0.28, 1.0])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.03])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--mini_batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--weights", type=float, nargs="+", default=[8, 4, 2, 2, 1, 1, 1, 1],
                        help="the starting weights of the K choices")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    marks = list(range(0, args.steps, max(1, args.steps // 10))) + [args.steps - 1]
    lines = [f"fork entropy (nats), mean of {args.seeds} seeds; choices weighted {args.weights}, "
             f"{args.mini_batches} mini-batches", "",
             "| lr | epochs | eps_high | " + " | ".join(f"step {m}" for m in marks) + " |",
             "|---|---|---|" + "---|" * len(marks)]
    for lr in args.lr:
        for epochs in args.epochs:
            for eps in args.eps_high:
                runs = [simulate(eps, lr, epochs, args.mini_batches, args.steps, seed,
                                 tuple(args.weights)) for seed in range(args.seeds)]
                mean = [sum(r[m] for r in runs) / len(runs) for m in marks]
                lines.append(f"| {lr} | {epochs} | {eps} | "
                             + " | ".join(f"{v:.2f}" for v in mean) + " |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
