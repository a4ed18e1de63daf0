"""Reproduce the paper's comparison on the embedded default: same budget, same base models, 3 seeds.

    python benchmarks/compare_schedules.py            # default size: ~30-40 minutes on 2 CPU cores
    python benchmarks/compare_schedules.py --quick    # 1 seed, 30 steps: a few minutes
    python benchmarks/compare_schedules.py --arms grpo,es-pid --seeds 0,1

Arms (each is one train.py command line; see ARMS):
  grpo          GRPO, no entropy control                      --loss grpo --schedule none
  dapo          DAPO, stable entropy (PID on clip-high)       --loss dapo --schedule constant
  es-pid        Entropy Scheduling, the paper's PID on clip-high   --schedule stable-anneal
  es-pid-curr   the same + the two-phase curriculum (hard-first)
  es-skywork    the same schedule, Skywork's bang-bang entropy bonus
  es-pid-ent    the same schedule, PID on a signed entropy coefficient (the default of train.py)

Every arm of a seed starts from the same warm-started base model (built once per seed) and runs
the same number of steps with the same batch. Reported per run: held-out pass@1/4/16 (128 problems
x 16 samples), final entropy, the controller's mean relative tracking error in the stable and the
anneal phase, and wall time; the table gives mean +- std over seeds. Outputs go to --out_dir:
results.json, results.md (the table), entropy.png (entropy vs target, seed 0) and passk.png.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARMS = {
    "grpo": ["--loss", "grpo", "--schedule", "none"],
    "dapo": ["--loss", "dapo", "--schedule", "constant", "--controller", "pid"],
    "es-pid": ["--loss", "dapo", "--schedule", "stable-anneal", "--controller", "pid"],
    "es-pid-curr": ["--loss", "dapo", "--schedule", "stable-anneal", "--controller", "pid",
                    "--curriculum", "two-phase"],
    "es-skywork": ["--loss", "dapo", "--schedule", "stable-anneal", "--controller", "skywork"],
    "es-pid-ent": ["--loss", "dapo", "--schedule", "stable-anneal", "--controller", "pid-entropy"],
}
KS = [1, 2, 4, 8, 16]


def run_arm(arm: str, seed: int, base: str, args) -> dict:
    out_dir = os.path.join(args.out_dir, f"{arm}-seed{seed}")
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--model", base, "--seed", str(seed),
               "--steps", str(args.steps), "--out_dir", out_dir, "--save_every", "0",
               "--eval_k", ",".join(map(str, KS)), "--eval_prompts", str(args.eval_prompts),
               *ARMS[arm], *args.extra]
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.jobs > 1 else None  # no oversubscription
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed:\n{proc.stderr[-2000:]}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    with open(os.path.join(out_dir, "summary.json")) as f:
        summary = json.load(f)
    last = rows[-1]
    tail = rows[-max(1, len(rows) // 10):]
    return {"arm": arm, "seed": seed, "wall_s": time.time() - start,
            **{f"pass@{k}": last[f"eval/pass@{k}"] for k in KS},
            "pass@1_start": rows[0]["eval/pass@1"],
            "entropy_final": statistics.mean(r["entropy"] for r in tail),
            "reward_first10": statistics.mean(r["reward/mean"] for r in rows[: max(1, len(rows) // 10)]),
            "reward_last10": statistics.mean(r["reward/mean"] for r in tail),
            "track_stable": summary["tracking_error"]["stable"],
            "track_anneal": summary["tracking_error"]["anneal"],
            "curve": [(r["step"], r["entropy"], r["entropy/target"]) for r in rows]}


def fmt(values: list, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(results: list[dict], args) -> str:
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    header = ("| arm | pass@1 | pass@4 | pass@16 | final entropy | track err stable | track err anneal "
              "| reward first→last 10% | wall (s) |")
    lines = [f"Embedded default, {args.steps} steps, seeds {args.seeds}, held-out {args.eval_prompts} "
             f"problems x 16 samples; mean ± std over seeds.", "", header, "|" + "---|" * 9]
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        lines.append(f"| {arm} | {fmt([r['pass@1'] for r in rs])} | {fmt([r['pass@4'] for r in rs])} | "
                     f"{fmt([r['pass@16'] for r in rs])} | {fmt([r['entropy_final'] for r in rs])} | "
                     f"{fmt([r['track_stable'] for r in rs])} | {fmt([r['track_anneal'] for r in rs])} | "
                     f"{fmt([r['reward_first10'] for r in rs], 2)} → {fmt([r['reward_last10'] for r in rs], 2)} | "
                     f"{fmt([r['wall_s'] for r in rs], 0)} |")
    start = [r["pass@1_start"] for r in results if r["arm"] == arms[0]]
    lines += ["", f"Base models before RL: held-out pass@1 {fmt(start)}."]
    return "\n".join(lines)


def plot(results: list[dict], args) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no figures")
        return
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    seed = min(r["seed"] for r in results)
    fig, axes = plt.subplots(1, len(arms), figsize=(2.6 * len(arms), 2.6), sharey=True)
    for ax, arm in zip(axes if len(arms) > 1 else [axes], arms):
        run = next(r for r in results if r["arm"] == arm and r["seed"] == seed)
        steps = [c[0] for c in run["curve"]]
        ax.plot(steps, [c[1] for c in run["curve"]], lw=1, label="entropy")
        ax.plot(steps, [c[2] if c[2] is not None else float("nan") for c in run["curve"]], "--",
                lw=1, label="target")
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes[0].set_ylabel("mean token entropy (nats)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "entropy.png"), dpi=80)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        ax.plot(KS, [statistics.mean(r[f"pass@{k}"] for r in rs) for k in KS], marker="o", label=arm)
    ax.set(xscale="log", xlabel="k", ylabel="pass@k (held-out)", title="pass@k after RL")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "passk.png"), dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 30 steps, 64 held-out problems")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default 200)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--eval_prompts", type=int, default=None)
    parser.add_argument("--out_dir", default=None, help="default runs/compare or runs/compare-quick")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (1 thread each when > 1)")
    parser.add_argument("extra", nargs="*", help="more train.py flags for every arm, after --")
    args = parser.parse_args()
    args.steps = args.steps or (30 if args.quick else 200)
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    args.eval_prompts = args.eval_prompts or (64 if args.quick else 128)
    args.out_dir = args.out_dir or os.path.join(ROOT, "runs", "compare-quick" if args.quick else "compare")
    arms = args.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    os.makedirs(args.out_dir, exist_ok=True)

    import train
    from tqdm import tqdm

    from concurrent.futures import ThreadPoolExecutor

    bases = {}
    for seed in tqdm(args.seeds, desc="base models"):
        bases[seed] = os.path.join(args.out_dir, f"base-seed{seed}")
        if not os.path.exists(bases[seed]):  # one warm-started base model per seed, for every arm
            train.build_embedded_default(bases[seed], train.Config(seed=seed))
    results = []
    jobs = [(arm, seed) for seed in args.seeds for arm in arms]
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(jobs), desc="runs") as bar:
        futures = [pool.submit(run_arm, arm, seed, bases[seed], args) for arm, seed in jobs]
        for future in futures:
            results.append(future.result())
            bar.update(1)
            with open(os.path.join(args.out_dir, "results.json"), "w") as f:
                json.dump(results, f)  # nothing lost if the comparison is interrupted
    table = report(results, args)
    command = "python benchmarks/compare_schedules.py " + " ".join(sys.argv[1:])
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(f"`{command.strip()}`\n\n{table}\n")
    plot(results, args)
    print(table)
    print(f"\nwrote {args.out_dir}/results.md, results.json, entropy.png, passk.png")


if __name__ == "__main__":
    main()
