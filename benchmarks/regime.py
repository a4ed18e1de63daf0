"""Is a configuration in the regime the paper studies? The checks R1-R3, measured.

    python benchmarks/regime.py                     # 3 seeds x 7 runs of train.py's 200 steps, 2 at a time
    python benchmarks/regime.py --quick             # 1 seed x 7 runs of 60 steps, 64 held-out prompts
    python benchmarks/regime.py --only r1 r2 r3knob r3default r3pid --seeds 40 41 42   # docs/results.md's table
    python benchmarks/regime.py --seeds 0 1 2 -- --lr 3e-4 --updates_per_step 8   # + train.py flags

Everything after `--` goes to every train.py run (and to the warm start of the base models)
unchanged. Each run is one train.py subprocess with OMP_NUM_THREADS=1, `--jobs` at a time (2), in
runs/regime/<tag>/seed<S>/<run> (the tag names the flags and the step count); a finished run
(summary.json written) is read, not redone (--rerun redoes it). The seeds (40, 41, 42) are not the
ones the testbed was tuned on (0, 10-12), nor those an earlier testbed was checked on (20-22, 30-32).
Every run of a seed starts from the same warm-started base model, runs/regime/<tag>/seed<S>/base_model,
built once (R2 evaluates it with eval_passk.py):

    grpo           --loss grpo --schedule none                              R1
    eps-low        --loss dapo --schedule none --clip_high 0.05             R3, the knob's authority
    eps-high       --loss dapo --schedule none --clip_high 1.0              (the ends of PIDController's range)
    pid-const      --loss dapo --schedule constant --controller pid         R3, the paper's PID tracking
    pid-sa         --loss dapo --schedule stable-anneal --controller pid        a constant and stable-anneal
    default-const  --loss dapo --schedule constant                          R3, train.py's default
    default-sa     --loss dapo --schedule stable-anneal                         controller, the same

The requirements, checked per seed; a requirement PASSES when every seed passes it.
H_0 is the mean token entropy of the step-0 rollouts, H_end the mean over the last 10% of steps,
reward rises when its mean over the last 10% of steps is above that over the first 10%.

    R1 collapse   grpo: H_end <= 0.40 H_0 while the training reward rises
    R2 headroom   the base model, by eval_passk.py on --r2_prompts (512) held-out prompts x 16 samples
                  (128 prompts left a std of ~0.035 on pass@16): pass@1 in [0.1, 0.4], pass@16 <= 0.85
    R3 knob       |H_end(eps-high) - H_end(eps-low)| >= 0.30 H_0. The sign is printed: "+" when the
                  larger eps_high ends with the higher entropy, as the paper's PID assumes (arXiv
                  2509.26114 shows it can be "-"); a "-" knob cannot be tracked by that PID.
    R3 tracking   *-const: track_err_stable <= 0.10; *-sa: stable <= 0.10 and anneal <= 0.20
                  (train.py's running means of |H - H*| / H* per phase, last step of the run), for
                  the paper's PID on clip-high (r3pid) and for train.py's default controller (r3default)
    R4 budget     printed, not judged here: wall time of every run and of the whole benchmark
"""
import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from entropy_schedule import PIDController  # noqa: E402  (the knob's range: its low and high ends)
from train import Config  # noqa: E402

DEFAULT_CONTROLLER = Config().controller

EPS_LOW, EPS_HIGH = PIDController().low, PIDController().high
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # every subprocess: one core each
RUNS = {
    "grpo": ["--loss", "grpo", "--schedule", "none"],
    "eps-low": ["--loss", "dapo", "--schedule", "none", "--clip_high", str(EPS_LOW)],
    "eps-high": ["--loss", "dapo", "--schedule", "none", "--clip_high", str(EPS_HIGH)],
    "pid-const": ["--loss", "dapo", "--schedule", "constant", "--controller", "pid"],
    "pid-sa": ["--loss", "dapo", "--schedule", "stable-anneal", "--controller", "pid"],
    "default-const": ["--loss", "dapo", "--schedule", "constant"],
    "default-sa": ["--loss", "dapo", "--schedule", "stable-anneal"],
}


# ----------------------------------------------------------------------------- running train.py
def run(name: str, seed: int, base: str | None, args) -> dict:
    """One train.py run (or the one already on disk), summarised from its metrics.jsonl."""
    out_dir = os.path.join(args.out_dir, f"seed{seed}", name)
    metrics = os.path.join(out_dir, "metrics.jsonl")
    done = os.path.exists(os.path.join(out_dir, "summary.json")) and not args.rerun
    wall = None
    if not done:
        command = [sys.executable, os.path.join(ROOT, "train.py"), "--seed", str(seed),
                   "--steps", str(args.steps), "--out_dir", out_dir, "--save_every", "0",
                   "--overwrite", *(["--model", base] if base else []), *RUNS[name], *args.extra]
        print(f"  {name:10s} seed {seed}: {' '.join(command[2:])}", flush=True)
        start = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ONE_THREAD)
        wall = time.time() - start
        with open(os.path.join(out_dir, "train.log"), "w") as f:
            f.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} seed {seed} failed:\n{proc.stderr[-2000:]}")
        with open(os.path.join(out_dir, "wall_s"), "w") as f:
            f.write(f"{wall:.1f}")
    elif os.path.exists(os.path.join(out_dir, "wall_s")):
        with open(os.path.join(out_dir, "wall_s")) as f:
            wall = float(f.read())
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tenth = max(1, len(rows) // 10)
    mean = lambda key, part: statistics.mean(r[key] for r in part)  # noqa: E731
    return {"run": name, "seed": seed, "out_dir": out_dir, "wall_s": wall,
            "step_s": mean("time/step_s", rows),
            "H0": rows[0]["entropy"], "H_end": mean("entropy", rows[-tenth:]),
            "reward_start": mean("reward/mean", rows[:tenth]), "reward_end": mean("reward/mean", rows[-tenth:]),
            "pass@1_base": rows[0].get("eval/pass@1"), "pass@16_base": rows[0].get("eval/pass@16"),
            "pass@1_end": rows[-1].get("eval/pass@1"), "pass@16_end": rows[-1].get("eval/pass@16"),
            "track_stable": rows[-1].get("entropy/track_err_stable"),
            "track_anneal": rows[-1].get("entropy/track_err_anneal")}


def build_base(path: str, train_flags: list[str]) -> str:
    """Warm-start the built-in base model into `path` (unless it is there), in a subprocess with
    one thread, so that `--jobs` of them build side by side. Returns `path`."""
    if not os.path.exists(os.path.join(path, "config.json")):
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); import torch; torch.set_num_threads(1); "
                f"import train, testbed; cfg = train.parse_config({train_flags!r}); "
                f"testbed.build_base_model({path!r}, cfg.seed, cfg.warm_start_steps)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ONE_THREAD)
        if proc.returncode != 0:
            raise RuntimeError(f"building the base model {path} failed:\n{proc.stderr[-2000:]}")
    return path


def base_model(seed: int, args) -> str | None:
    """The warm-started base model of this seed, built once for all its runs (None: the caller
    passed its own --model in the train.py flags)."""
    if "--model" in args.extra:
        return None
    return build_base(os.path.join(args.out_dir, f"seed{seed}", "base_model"), [*args.extra, "--seed", str(seed)])


def base_headroom(seed: int, base: str | None, args) -> dict:
    """R2's numbers: the base model's pass@1 and pass@16 on `--r2_prompts` held-out prompts x 16
    samples, by eval_passk.py (train.py's held-out set: its 128 problems are the first of these)."""
    out = os.path.join(args.out_dir, f"seed{seed}", f"base_eval_{args.r2_prompts}.json")
    if not os.path.exists(out) or args.rerun:
        model = base or args.extra[args.extra.index("--model") + 1]
        command = [sys.executable, os.path.join(ROOT, "eval_passk.py"), "--model", model, "--n", "16",
                   "--k", "1,16", "--limit", str(args.r2_prompts), "--seed", str(seed), "--out", out]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ONE_THREAD)
        if proc.returncode != 0:
            raise RuntimeError(f"base eval seed {seed} failed:\n{proc.stderr[-2000:]}")
    with open(out) as f:
        summary = json.load(f)["summary"]
    return {"pass@1_base": summary["pass@1"], "pass@16_base": summary["pass@16"], "prompts": args.r2_prompts}


# ----------------------------------------------------------------------------- the requirements
def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def check_r1(grpo: dict) -> tuple[bool, str]:
    """R1 collapse: plain GRPO ends with H_end <= 0.40 H_0 while the reward rises."""
    ratio = grpo["H_end"] / grpo["H0"]
    ok = ratio <= 0.40 and grpo["reward_end"] > grpo["reward_start"]
    return ok, (f"H {grpo['H0']:.3f} -> {grpo['H_end']:.3f} ({ratio:.0%} of H0, need <= 40%), "
                f"reward {grpo['reward_start']:.2f} -> {grpo['reward_end']:.2f}, "
                f"held-out pass@1 {grpo['pass@1_base']:.3f} -> {grpo['pass@1_end']:.3f}")


def check_r2(base: dict) -> tuple[bool, str]:
    """R2 headroom: the base model's held-out pass@1 in [0.1, 0.4] and pass@16 <= 0.85."""
    p1, p16 = base["pass@1_base"], base["pass@16_base"]
    ok = 0.1 <= p1 <= 0.4 and p16 <= 0.85
    return ok, (f"base pass@1 {p1:.3f} (need 0.1-0.4), pass@16 {p16:.3f} (need <= 0.85), "
                f"{base['prompts']} held-out prompts x 16")


def check_r3_knob(low: dict, high: dict) -> tuple[bool, str]:
    """R3 authority: eps_high at the two ends of the PID's range ends >= 30% of H_0 apart."""
    h0 = (low["H0"] + high["H0"]) / 2
    diff = high["H_end"] - low["H_end"]
    sign = "+" if diff > 0 else "-"
    ok = abs(diff) >= 0.30 * h0
    return ok, (f"H_end eps {EPS_LOW}: {low['H_end']:.3f}, eps {EPS_HIGH}: {high['H_end']:.3f}, "
                f"difference {abs(diff) / h0:.0%} of H0 {h0:.3f} (need >= 30%), sign {sign} "
                f"({'as' if sign == '+' else 'opposite to'} the PID's assumption); "
                f"reward end {low['reward_end']:.2f} / {high['reward_end']:.2f}")


def check_r3_pid(const: dict, sa: dict) -> tuple[bool, str]:
    """R3 tracking: the PID on eps_high follows a constant target and the stable-anneal schedule."""
    c, s, a = const["track_stable"], sa["track_stable"], sa["track_anneal"]
    ok = c <= 0.10 and s <= 0.10 and a is not None and a <= 0.20
    return ok, (f"constant {c:.3f} (need <= 0.10); stable-anneal: stable {s:.3f} (<= 0.10), "
                f"anneal {a if a is None else round(a, 3)} (<= 0.20)")


CHECKS = {"r1": ("R1 collapse", check_r1, ["grpo"]), "r2": ("R2 headroom", check_r2, ["base-eval"]),
          "r3knob": ("R3 knob", check_r3_knob, ["eps-low", "eps-high"]),
          "r3pid": ("R3 tracking, the paper's PID on clip-high", check_r3_pid, ["pid-const", "pid-sa"]),
          "r3default": (f"R3 tracking, train.py's default controller ({DEFAULT_CONTROLLER})", check_r3_pid,
                        ["default-const", "default-sa"])}


# ----------------------------------------------------------------------------- main
def tag_of(extra: list[str], steps: int) -> str:
    """A directory name for a set of train.py flags: ['--lr', '3e-4'] -> 'lr_3e-4_steps200'.

    A path passed as a value is shortened to its last part; then, and when the name is long, a
    hash of all the flags is added, so two different sets of flags never share a directory.
    """
    parts = [a.rstrip("/").split("/")[-1] if "/" in a else a.lstrip("-") for a in extra]
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts) or "default")[:90]
    if any("/" in a for a in extra) or len(text) == 90:
        text += "_" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:8]
    return f"{text}_steps{steps}"


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="train.py flags go after --")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 40 41 42 (--quick: 40)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default train.py's, --quick 60)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps, 64 held-out prompts")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS),
                        help="which requirements to measure (and so which runs to do)")
    parser.add_argument("--out_dir", default=None, help="default runs/regime/<tag>")
    parser.add_argument("--rerun", action="store_true", help="redo runs already on disk")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--r2_prompts", type=int, default=None,
                        help="held-out prompts of R2's base-model eval (default 512, --quick 64)")
    args = parser.parse_args(argv)
    args.r2_prompts = args.r2_prompts or (64 if args.quick else 512)
    args.seeds = args.seeds or ([40] if args.quick else [40, 41, 42])  # not the seeds we tuned on (0, 10-12)
    args.steps = args.steps or (60 if args.quick else Config().steps)
    args.extra = (["--eval_prompts", "64"] if args.quick else []) + extra  # the caller's flags win
    args.out_dir = args.out_dir or os.path.join(ROOT, "runs", "regime", tag_of(extra, args.steps))
    names = [n for n in [*RUNS, "base-eval"] if any(n in CHECKS[c][2] for c in args.only)]
    print(f"runs {names} x seeds {args.seeds}, {args.steps} steps, extra flags {extra} -> {args.out_dir}")

    import torch
    torch.set_num_threads(1)  # as train.py: a spinning second thread beside the runs slows the warm start 40x

    start = time.time()
    jobs = [(name, seed) for seed in args.seeds for name in names]
    with ThreadPoolExecutor(args.jobs) as pool:  # each base model, eval and run is a subprocess with one thread
        bases = dict(zip(args.seeds, pool.map(lambda seed: base_model(seed, args), args.seeds)))

        def do(name: str, seed: int) -> dict:
            return base_headroom(seed, bases[seed], args) if name == "base-eval" else run(name, seed, bases[seed], args)

        futures = {job: pool.submit(do, *job) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    total = time.time() - start

    lines = [f"# regime check: train.py {' '.join(extra) or '(defaults)'}, {args.steps} steps, seeds {args.seeds}", ""]
    for key in args.only:
        title, check, needs = CHECKS[key]
        outcomes = [(seed, *check(*[results[n, seed] for n in needs])) for seed in args.seeds]
        lines.append(f"{title}: {verdict(all(ok for _, ok, _ in outcomes))}")
        lines += [f"  seed {seed}: {verdict(ok)}  {text}" for seed, ok, text in outcomes]
    lines.append("wall time (R4): " + ", ".join(
        f"{name}/s{seed} {r['wall_s']:.0f} s" if r["wall_s"] is not None else f"{name}/s{seed} -"
        for (name, seed), r in results.items() if name != "base-eval") + f"; this invocation {total:.0f} s")
    report = "\n".join(lines)
    print(report)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump([r for r in results.values()], f, indent=1)
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
