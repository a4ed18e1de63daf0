"""Reproduce the paper's comparison on the embedded default: same budget, same base models, 5 seeds.

    python benchmarks/compare_schedules.py            # default size: 9 arms x 5 seeds x 200 steps
    python benchmarks/compare_schedules.py --quick    # 1 seed, 30 steps, 64 held-out problems
    python benchmarks/compare_schedules.py --arms grpo,es --seeds 0,1 -- --lr 2e-4   # + train.py flags

Arms (each is one train.py command line; see ARMS):
  grpo          GRPO, no entropy control                         --loss grpo --schedule none
  dapo          DAPO: entropy held at a constant target          --schedule constant
  es            Entropy Scheduling: stable, then anneal          --schedule stable-anneal
  es-paper-pid  the same schedule, the paper's PID on clip-high  --controller pid
  es-balance    the same schedule, EntroPIC's advantage balance  --controller balance
  es-hard-easy  ES + the two-phase curriculum, hard problems in the stable phase
  es-easy-hard  ES + the two-phase curriculum, the other order
  es-k1         ES with the schedule chosen for pass@1           --passk_goal 1
  es-k16        ES with the schedule chosen for pass@16          --passk_goal 16
Every DAPO/ES arm uses DAPO's loss and train.py's default controller (`CONTROLLER`: the PID on a
signed entropy coefficient), but es-paper-pid and es-balance: the same stable-anneal schedule
driven by the other actuators (clip-high; EntroPIC's weight of negative vs positive advantages),
so that what the schedule does can be told apart from what its knob does (on this testbed
clip-high barely moves entropy: benchmarks/regime.py and docs/results.md measure it).

Every arm of a seed starts from the same warm-started base model (built once per seed) and runs the
same number of steps with the same batch. Reported per arm: held-out pass@1/4/16 with 95% bootstrap
intervals (resampling seeds, then held-out prompts within each seed), final entropy, the controller's
mean relative tracking error in the stable and the anneal phase, and wall time. Held-out pass@k and
entropy are also measured every `--eval_every` steps; over all those checkpoints the script fits
Cui et al.'s R = -a exp(H) + b (arXiv 2505.22617, Eq. 1). Outputs in --out_dir: results.json,
results.md (the tables and the command), entropy.png (entropy vs target per arm), passk.png (pass@k
vs k) and passk_vs_entropy.png. Runs already finished on disk are read, not redone.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.regime import build_base  # noqa: E402
from eval_passk import pass_at_k  # noqa: E402
from train import Config  # noqa: E402  (the default step count)

CONTROLLER: list[str] = []  # train.py's default controller (README "Results" says why not the paper's)
ARMS = {
    "grpo": ["--loss", "grpo", "--schedule", "none"],
    "dapo": ["--loss", "dapo", "--schedule", "constant", *CONTROLLER],
    "es": ["--loss", "dapo", "--schedule", "stable-anneal", *CONTROLLER],
    "es-paper-pid": ["--loss", "dapo", "--schedule", "stable-anneal", "--controller", "pid"],
    "es-balance": ["--loss", "dapo", "--schedule", "stable-anneal", "--controller", "balance"],
    "es-hard-easy": ["--loss", "dapo", "--schedule", "stable-anneal", *CONTROLLER,
                     "--curriculum", "two-phase", "--curriculum_order", "hard-first"],
    "es-easy-hard": ["--loss", "dapo", "--schedule", "stable-anneal", *CONTROLLER,
                     "--curriculum", "two-phase", "--curriculum_order", "easy-first"],
    "es-k1": ["--loss", "dapo", "--passk_goal", "1", *CONTROLLER],
    "es-k16": ["--loss", "dapo", "--passk_goal", "16", *CONTROLLER],
}
DEFAULT_ARMS = list(ARMS)
KS = [1, 2, 4, 8, 16]
REPORT_KS = [1, 4, 16]


# ----------------------------------------------------------------------------- running the arms
def run_arm(arm: str, seed: int, base: str, args) -> dict:
    """One train.py run (or the finished one on disk), summarised from its metrics.jsonl."""
    out_dir = os.path.join(args.out_dir, f"{arm}-seed{seed}")
    wall_file = os.path.join(out_dir, "wall_s")
    if not (os.path.exists(os.path.join(out_dir, "summary.json")) and os.path.exists(wall_file)):
        command = [sys.executable, os.path.join(ROOT, "train.py"), "--model", base, "--seed", str(seed),
                   "--steps", str(args.steps), "--out_dir", out_dir, "--save_every", "0",
                   "--overwrite", "--eval_k", ",".join(map(str, KS)), "--eval_prompts", str(args.eval_prompts),
                   "--eval_every", str(args.eval_every), *ARMS[arm], *args.extra]
        start = time.time()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # no oversubscription
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{arm} seed {seed} failed:\n{proc.stderr[-2000:]}")
        with open(wall_file, "w") as f:
            f.write(f"{time.time() - start:.1f}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(out_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(wall_file) as f:
        wall = float(f.read())
    tenth = max(1, len(rows) // 10)
    evals = [r for r in rows if "eval/correct" in r]
    return {"arm": arm, "seed": seed, "wall_s": wall,
            "correct": evals[-1]["eval/correct"], "correct_base": evals[0]["eval/correct"],
            "entropy_final": statistics.mean(r["entropy"] for r in rows[-tenth:]),
            "reward_first10": statistics.mean(r["reward/mean"] for r in rows[:tenth]),
            "reward_last10": statistics.mean(r["reward/mean"] for r in rows[-tenth:]),
            "track_stable": summary["tracking_error"].get("stable"),
            "track_anneal": summary["tracking_error"].get("anneal"),
            "checkpoints": [(r["eval/step"], r["eval/entropy"],
                             *(r[f"eval/pass@{k}"] for k in KS)) for r in evals],
            "curve": [(r["step"], r["entropy"], r["entropy/target"]) for r in rows]}


# ----------------------------------------------------------------------------- statistics
def passk_table(correct: list[int], n: int = 16) -> np.ndarray:
    """(prompts, len(KS)) unbiased pass@k of each prompt."""
    return np.array([[pass_at_k(n, c, k) for k in KS] for c in correct])


def bootstrap_ci(per_seed: list[np.ndarray], samples: int = 2000, seed: int = 0) -> tuple:
    """Mean and 95% percentile interval of the mean over a two-level bootstrap: resample the seeds
    with replacement, then the held-out prompts within each drawn seed. per_seed: (prompts, K) each.

    >>> m, lo, hi = bootstrap_ci([np.ones((4, 1)), np.zeros((4, 1))])
    >>> float(m[0]), bool(lo[0] < 0.5 < hi[0])
    (0.5, True)
    """
    rng = np.random.default_rng(seed)
    stacked = np.stack(per_seed)  # (S, P, K)
    S, P, _ = stacked.shape
    seeds = rng.integers(0, S, size=(samples, S))  # (B, S)
    prompts = rng.integers(0, P, size=(samples, S, P))  # (B, S, P)
    means = stacked[seeds[:, :, None], prompts].mean(axis=(1, 2))  # (B, K)
    return stacked.mean(axis=(0, 1)), np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def fit_exp(entropy: list[float], reward: list[float]) -> tuple[float, float, float]:
    """Least-squares fit of R = -a exp(H) + b (linear in exp(H)); returns a, b and R^2.

    >>> a, b, r2 = fit_exp([0.1, 0.5, 0.9], [-2 * math.exp(h) + 5 for h in (0.1, 0.5, 0.9)])
    >>> round(a, 6), round(b, 6), round(r2, 6)
    (2.0, 5.0, 1.0)
    """
    x, y = np.exp(np.array(entropy)), np.array(reward)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1 - float((residual ** 2).sum()) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)
    return float(-slope), float(intercept), r2


def fmt(values: list, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(results: list[dict], args) -> str:
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    cols = [KS.index(k) for k in REPORT_KS]
    lines = [f"Embedded default, {args.steps} steps, seeds {args.seeds}, held-out {args.eval_prompts} "
             f"problems x 16 samples. pass@k: mean over seeds and prompts [95% bootstrap interval]; "
             f"the other columns mean ± std over seeds.", "",
             "| arm | " + " | ".join(f"pass@{k}" for k in REPORT_KS) + " | final entropy | track err stable "
             "| track err anneal | reward first→last 10% | wall (s) |", "|" + "---|" * (len(REPORT_KS) + 6)]
    for arm in ["base", *arms]:
        rs = [r for r in results if r["arm"] == (arms[0] if arm == "base" else arm)]
        mean, lo, hi = bootstrap_ci([passk_table(r["correct_base" if arm == "base" else "correct"]) for r in rs])
        cells = [f"{mean[c]:.3f} [{lo[c]:.3f}, {hi[c]:.3f}]" for c in cols]
        if arm == "base":
            lines.append("| base model (before RL) | " + " | ".join(cells) + " | | | | | |")
            continue
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {fmt([r['entropy_final'] for r in rs])} | "
                     f"{fmt([r['track_stable'] for r in rs])} | {fmt([r['track_anneal'] for r in rs])} | "
                     f"{fmt([r['reward_first10'] for r in rs], 2)} → {fmt([r['reward_last10'] for r in rs], 2)} | "
                     f"{fmt([r['wall_s'] for r in rs], 0)} |")
    points = [c for r in results for c in r["checkpoints"]]
    lines += ["", f"Held-out pass@k against held-out entropy over {len(points)} checkpoints (every arm and "
              f"seed, every {args.eval_every} steps), fitted R = -a exp(H) + b:", ""]
    for k in REPORT_KS:
        a, b, r2 = fit_exp([p[1] for p in points], [p[2 + KS.index(k)] for p in points])
        lines.append(f"- pass@{k}: a = {a:.3f}, b = {b:.3f}, R^2 = {r2:.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def plot(results: list[dict], args) -> list[str]:
    """entropy.png, passk.png and passk_vs_entropy.png in --out_dir; returns the names written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no figures (pip install matplotlib; the tables are in results.md)")
        return []
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    fig, axes = plt.subplots(1, len(arms), figsize=(2.4 * len(arms), 2.6), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for i, run in enumerate(r for r in results if r["arm"] == arm):  # every seed, thin lines
            steps = [c[0] for c in run["curve"]]
            ax.plot(steps, [c[1] for c in run["curve"]], lw=0.7, color="C0", alpha=0.6,
                    label="entropy" if i == 0 else None)
            ax.plot(steps, [math.nan if c[2] is None else c[2] for c in run["curve"]], "--", lw=0.8,
                    color="C3", label="target" if i == 0 else None)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes[0][0].set_ylabel("mean token entropy (nats)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "entropy.png"), dpi=80)

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, arm in enumerate(["base", *arms]):
        rs = [r for r in results if r["arm"] == (arms[0] if arm == "base" else arm)]
        mean, lo, hi = bootstrap_ci([passk_table(r["correct_base" if arm == "base" else "correct"]) for r in rs])
        ax.errorbar(KS, mean, yerr=[mean - lo, hi - mean], marker="o", ms=3, capsize=2, lw=1,
                    label=arm, color="k" if arm == "base" else f"C{i}")
    ax.set(xscale="log", xlabel="k", ylabel="held-out pass@k", title="pass@k after RL (95% CI)")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "passk.png"), dpi=80)

    fig, axes = plt.subplots(1, len(REPORT_KS), figsize=(3.2 * len(REPORT_KS), 3), squeeze=False)
    points = [(r["arm"], c) for r in results for c in r["checkpoints"]]
    for ax, k in zip(axes[0], REPORT_KS):
        for i, arm in enumerate(arms):
            ps = [c for a, c in points if a == arm]
            ax.scatter([c[1] for c in ps], [c[2 + KS.index(k)] for c in ps], s=6, color=f"C{i + 1}", label=arm)
        a, b, r2 = fit_exp([c[1] for _, c in points], [c[2 + KS.index(k)] for _, c in points])
        hs = np.linspace(min(c[1] for _, c in points), max(c[1] for _, c in points), 50)
        ax.plot(hs, -a * np.exp(hs) + b, "k--", lw=1, label=f"-{a:.2f} exp(H) + {b:.2f}")
        ax.set(xlabel="held-out entropy (nats)", ylabel=f"held-out pass@{k}", title=f"pass@{k}, R²={r2:.2f}")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "passk_vs_entropy.png"), dpi=80)
    return ["entropy.png", "passk.png", "passk_vs_entropy.png"]


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="train.py flags go after --")
    parser.add_argument("--quick", action="store_true", help="1 seed, 30 steps, 64 held-out problems")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default train.py's)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 100,101,102,103,104)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help=f"comma-separated, from {', '.join(ARMS)} (default all)")
    parser.add_argument("--eval_prompts", type=int, default=None, help="held-out problems (default 128)")
    parser.add_argument("--eval_every", type=int, default=None, help="checkpoint evals (default steps / 4)")
    parser.add_argument("--out_dir", default=None, help="default runs/compare or runs/compare-quick")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    args = parser.parse_args(argv)
    args.extra = extra
    args.steps = args.steps or (30 if args.quick else Config().steps)
    args.eval_every = args.eval_every or max(1, args.steps // 4)
    args.seeds = [int(s) for s in (args.seeds or ("100" if args.quick else "100,101,102,103,104")).split(",")]
    args.eval_prompts = args.eval_prompts or (64 if args.quick else 128)
    args.out_dir = args.out_dir or os.path.join(ROOT, "runs", "compare-quick" if args.quick else "compare")
    arms = args.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    os.makedirs(args.out_dir, exist_ok=True)

    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    start = time.time()
    results = []
    jobs = [(arm, seed) for seed in args.seeds for arm in arms]
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(jobs), desc="runs") as bar:
        # one warm-started base model per seed, for every arm; `--jobs` built side by side
        paths = [os.path.join(args.out_dir, f"base-seed{seed}") for seed in args.seeds]
        flags = [[*args.extra, "--seed", str(seed)] for seed in args.seeds]
        bases = dict(zip(args.seeds, pool.map(build_base, paths, flags)))
        futures = [pool.submit(run_arm, arm, seed, bases[seed], args) for arm, seed in jobs]
        for future in futures:
            results.append(future.result())
            bar.update(1)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f)
    command = "python benchmarks/compare_schedules.py " + " ".join(sys.argv[1:])
    table = report(results, args) + f"\n\nWall time of this invocation: {time.time() - start:.0f} s " \
        f"({args.jobs} runs at a time, one thread each; runs found on disk are not re-timed)."
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(f"`{command.strip()}`\n\n{table}\n")
    figures = plot(results, args)
    print(table)
    print(f"\nwrote {args.out_dir}/results.md, results.json"
          + "".join(f", {name}" for name in figures))


if __name__ == "__main__":
    main()
