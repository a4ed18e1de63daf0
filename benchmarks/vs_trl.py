"""Our train.py against TRL's GRPOTrainer, side by side: the same model, prompts, batch, steps and
loss, no entropy control. Time, peak memory, where the time goes, and the learning curves.

    python benchmarks/vs_trl.py                       # 5 interleaved pairs x 30 RL steps (8 min)
    python benchmarks/vs_trl.py --pairs 7 --steps 50  # more of both
    python benchmarks/vs_trl.py --quick               # a smoke test (< 2 minutes)
    python benchmarks/vs_trl.py --make_model runs/smollm2-135m-random   # where compute dominates:
    python benchmarks/vs_trl.py --model runs/smollm2-135m-random --max_new_tokens 256 \
        --prompts_per_step 4 --group_size 4 --updates_per_step 2 --micro_batch_size 8 \
        --pairs 3 --steps 3                # a 135M model, 256-token completions (35 min)

Needs TRL (`pip install "trl>=1.16,<1.17"`, the range trl_entropy_schedule.py was tested with).

Both sides start from one base model (testbed.build_base_model, built once; or --model, a local
directory with its tokenizer) and train on the built-in task's 2000 problems, each in its own
process with one thread (OMP_NUM_THREADS=1). The built-in model (0.64M parameters, 4-token
answers) measures overhead: the framework's own work per step. `--make_model DIR` writes a model
that measures compute instead: a Llama with SmolLM2-135M's shapes (30 layers, width 576, 49152
tokens; 135M parameters), random weights, and the testbed's character tokenizer. Random weights
almost never sample EOS, so with `--max_new_tokens 256` every completion is 256 tokens long on
both sides, and no answer scores (the loss is computed and back-propagated all the same).

                ours: train.py                  TRL: GRPOTrainer (trl_entropy_schedule.trl_config)
  batch         --prompts_per_step P             generation batch P x G
                --group_size G                   num_generations G
  updates       --updates_per_step U             steps_per_generation U x A, num_iterations 1
                --ppo_epochs 1
  micro-batch   --micro_batch_size M             per_device_train_batch_size M,
                                                 gradient_accumulation_steps A = P G / (U M)
  loss          --loss dapo (token-mean,         loss_type dapo, epsilon 0.2, epsilon_high 0.28
                clip 0.2 / 0.28)
  no KL, no     --kl_coef 0, --schedule none     beta 0, entropy_coef 0
  entropy term
  sampling      temperature 1, top_p 1,          temperature 1, top_p 1, top_k 0,
                --max_new_tokens N (4)           max_completion_length N
  optimizer     AdamW, --lr, --lr_schedule       adamw_torch, learning_rate, lr_scheduler_type
                constant, no warm-up or decay,   constant, warmup 0, weight_decay 0,
                clip 1.0                         max_grad_norm 1.0
  precision     fp32                             fp32 (bf16 False), no gradient checkpointing

Differences that remain, and why they are left: train.py's DAPO preset turns dynamic sampling on;
TRL has none, so it is off here (`--dynamic_sampling false`). Advantages divide by std + 1e-6 here,
std + 1e-4 in TRL. Each of our mini-batches divides by its own token count, TRL's by the
generation batch's mean count per mini-batch. Prompts are drawn by each side's own sampler.

What is timed: the RL steps only, in wall-clock seconds and in the process's CPU seconds
(`time.process_time`; with one thread it equals wall time on an idle machine, and it is what other
processes' load does not inflate). Ours: `train.main` runs in a worker process with `rl_step`
wrapped; its held-out evaluation (1 prompt x 1 sample, at the start and the end), start-up and
final checkpoint are outside. TRL: `trainer.train()` from on_train_begin to on_train_end (its
loop, optimizer steps and logging included); start-up outside. The pairs are interleaved (ours
first in even pairs, TRL first in odd ones), so load from other processes drifts onto both sides
alike; the load average is printed next to the numbers.

Where the time goes, per RL step: generation (sampling + rewards), old log-probs (the no-grad
pass + advantages and bookkeeping), update (forward, backward, optimizer; for TRL also its loop
and logging). Ours wraps train.py's `collect_rollouts` and `policy_update`; TRL's wraps
GRPOTrainer's `_generate`, `_calculate_rewards` and `_generate_and_score_completions`, and its
no-grad calls of `_get_per_token_logps_and_entropies`.

The FLOP floor of one RL step: with N the parameters of the decoder layers, V x H the lm_head,
and T the real (unpadded) tokens of prompt + completion of all P x G sequences, C of them
completion tokens: generation 2 N T + 2 V H C, old log-probs the same, update 6 N T + 6 V H C
(attention's T^2 terms are negligible at these lengths). Divided by this CPU's fp32 matmul rate
on one thread (a 1024^3 matmul, measured here) it is the least time a step can take.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PHASES = ("generation", "old_logprobs", "update")
CLOCKS = ("cpu", "wall")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="interleaved (ours, TRL) pairs")
    parser.add_argument("--steps", type=int, default=30, help="RL steps (generations) a run")
    parser.add_argument("--prompts_per_step", type=int, default=64)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--updates_per_step", type=int, default=4)
    parser.add_argument("--micro_batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="completion length (default: the testbed's 4)")
    parser.add_argument("--warm_start_steps", type=int, default=600)
    parser.add_argument("--model", help="a local model directory with its tokenizer (default: the "
                        "testbed's base model, built in --out_dir)")
    parser.add_argument("--make_model", metavar="DIR", help="write a random-weight model with "
                        "SmolLM2-135M's shapes to DIR and exit")
    parser.add_argument("--out_dir", default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="2 pairs x 3 tiny steps: a smoke test")
    parser.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)  # one run
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.pairs, opts.steps, opts.prompts_per_step, opts.group_size = 2, 3, 8, 4
        opts.updates_per_step, opts.micro_batch_size, opts.warm_start_steps = 2, 8, 25
    if opts.max_new_tokens is None:
        from testbed import MAX_NEW_TOKENS

        opts.max_new_tokens = MAX_NEW_TOKENS
    return opts


# SmolLM2-135M's config.json (a Llama): the shapes that set the cost of a step
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                    tie_word_embeddings=True)


def make_model(path: str, seed: int = 0) -> None:
    """A random-weight Llama with SmolLM2-135M's shapes and the testbed's character tokenizer
    (which encodes the prompts; the model samples from all 49152 tokens), saved to `path`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from testbed import char_tokenizer

    tokenizer = char_tokenizer()
    config = AutoConfig.for_model("llama", **SMOLLM2_135M, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id,
                                  bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"wrote {path}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


# ---------------------------------------------------------------------------- timing
class Clock:
    """Wall and CPU seconds spent inside wrapped functions, by name."""

    def __init__(self):
        self.spent = {clock: defaultdict(float) for clock in CLOCKS}

    def wrap(self, name: str, function, when=lambda: True):
        def timed(*args, **kwargs):
            if not when():
                return function(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent["wall"][name] += time.perf_counter() - wall
                self.spent["cpu"][name] += time.process_time() - cpu
        return timed

    def now(self) -> dict:
        """The totals so far, and the two clocks' readings ("step")."""
        return {clock: {**self.spent[clock], "step": reading()}
                for clock, reading in (("wall", time.perf_counter), ("cpu", time.process_time))}


def phases(before: dict, after: dict, generation: list[str], update: str | None) -> dict:
    """Seconds of each phase between two `Clock.now()` readings, per clock. The step is split into
    generation (the named functions), update (the named function, or all that is outside
    `score`) and old log-probs (the rest of the step, or of `score`)."""
    out = {}
    for clock in CLOCKS:
        spent = {k: after[clock].get(k, 0.0) - before[clock].get(k, 0.0) for k in after[clock]}
        gen = sum(spent.get(name, 0.0) for name in generation)
        upd = spent[update] if update else spent["step"] - spent["score"]
        out[clock] = {"generation": gen, "update": upd, "old_logprobs": spent["step"] - gen - upd,
                      "old_logprobs_forward": spent.get("old_logprobs_forward", 0.0)}
    return out


def ours_worker(opts) -> None:
    """train.main in this process, its RL step and phases timed; rows to --result."""
    import train

    clock, rows = Clock(), []
    train.collect_rollouts = clock.wrap("generation", train.collect_rollouts)
    train.policy_update = clock.wrap("update", train.policy_update)
    train.policy_logprobs_and_entropy = clock.wrap("old_logprobs_forward",
                                                   train.policy_logprobs_and_entropy)
    rl_step = train.rl_step

    def timed_step(run, step):
        before = clock.now()
        record = rl_step(run, step)
        rows.append({**phases(before, clock.now(), ["generation"], "update"),
                     "reward": record["reward/mean"], "entropy": record["loss/entropy"],
                     "tokens": record["tokens"]})
        return record

    train.rl_step = timed_step
    train.main(["--model", opts.model, "--out_dir", os.path.join(opts.out_dir, "run"),
                "--seed", str(opts.seed), "--steps", str(opts.steps),
                "--prompts_per_step", str(opts.prompts_per_step),
                "--group_size", str(opts.group_size),
                "--updates_per_step", str(opts.updates_per_step), "--ppo_epochs", "1",
                "--micro_batch_size", str(opts.micro_batch_size), "--lr", str(opts.lr),
                "--lr_warmup_steps", "0", "--lr_schedule", "constant", "--loss", "dapo",
                "--dynamic_sampling", "false", "--kl_coef", "0", "--schedule", "none",
                "--temperature", "1", "--top_p", "1", "--max_new_tokens", str(opts.max_new_tokens),
                "--eval_prompts", "1", "--eval_n", "1", "--eval_k", "1", "--save_every", "0"])
    write_result(opts.result, rows)
    shutil.rmtree(os.path.join(opts.out_dir, "run", "checkpoints"), ignore_errors=True)  # weights
    # and optimizer state: 1.6 GB a run for a 135M model, and nothing here reads them


def trl_worker(opts) -> None:
    """One GRPOTrainer run with its RL steps (U optimizer steps each) and phases timed."""
    import torch
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from transformers.utils import logging as hf_logging

    from trl_entropy_schedule import build_trainer, require_trl, trl_config

    require_trl()
    hf_logging.disable_progress_bar()
    U, sequences = opts.updates_per_step, opts.prompts_per_step * opts.group_size
    cfg = trl_config(os.path.join(opts.out_dir, "trl"), opts.steps * U, opts.prompts_per_step,
                     opts.group_size, U, opts.micro_batch_size, opts.lr, opts.max_new_tokens,
                     opts.seed)
    trainer = build_trainer(opts.model, cfg)
    for quiet in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(quiet)
    clock, rows = Clock(), []
    trainer._generate = clock.wrap("generate", trainer._generate)
    trainer._calculate_rewards = clock.wrap("rewards", trainer._calculate_rewards)
    trainer._generate_and_score_completions = clock.wrap("score",
                                                         trainer._generate_and_score_completions)
    trainer._get_per_token_logps_and_entropies = clock.wrap(  # its no-grad calls: old log-probs
        "old_logprobs_forward", trainer._get_per_token_logps_and_entropies,
        lambda: not torch.is_grad_enabled())

    class Steps(TrainerCallback):
        """Closes an RL step every U optimizer steps: its phases, reward and entropy."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.before, self.entropies, self.reward, self.tokens = clock.now(), [], None, None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "entropy" not in logs:
                return
            self.entropies.append(logs["entropy"])
            if logs.get("reward") is not None:  # logged once a generation, at its first step
                self.reward = logs["reward"]
                self.tokens = logs.get("completions/mean_length", 0.0) * sequences
            if state.global_step % U == 0:
                after = clock.now()
                rows.append({**phases(self.before, after, ["generate", "rewards"], None),
                             "reward": self.reward, "tokens": self.tokens,
                             "entropy": sum(self.entropies) / len(self.entropies)})
                self.before, self.entropies = after, []

    trainer.add_callback(Steps())
    trainer.train()
    write_result(opts.result, rows)


def write_result(path: str, rows: list[dict]) -> None:
    totals = {f"{clock}_s": sum(r[clock][p] for r in rows for p in PHASES) for clock in CLOCKS}
    with open(path, "w") as f:
        json.dump({"steps": rows, **totals}, f)


def run_side(side: str, opts, base: str, out_dir: str, seed: int) -> dict:
    """One run in its own process (this file as a worker), so that its peak RSS is its own."""
    os.makedirs(out_dir, exist_ok=True)
    result, log_path = os.path.join(out_dir, "result.json"), os.path.join(out_dir, "log.txt")
    args = [sys.executable, os.path.abspath(__file__), "--worker", side, "--model", base,
            "--seed", str(seed), "--result", result, "--out_dir", out_dir,
            "--steps", str(opts.steps), "--prompts_per_step", str(opts.prompts_per_step),
            "--group_size", str(opts.group_size), "--updates_per_step", str(opts.updates_per_step),
            "--micro_batch_size", str(opts.micro_batch_size), "--lr", str(opts.lr),
            "--max_new_tokens", str(opts.max_new_tokens)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    if os.waitstatus_to_exitcode(status) != 0:
        with open(log_path) as f:
            raise SystemExit(f"{side} run failed (see {log_path}):\n{f.read()[-3000:]}")
    with open(result) as f:
        return {**json.load(f), "peak_mb": usage.ru_maxrss / 1024}  # Linux reports kB


# ---------------------------------------------------------------------------- the FLOP floor
def matmul_rate(size: int = 1024, repeats: int = 20) -> float:
    """This CPU's fp32 matmul rate on one thread (FLOP/s), the best of `repeats` (the one least
    disturbed by other processes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    torch.set_num_threads(threads)
    return 2 * size**3 / best


def step_flops(base: str, opts, completion_tokens: float) -> dict:
    """FLOPs of one RL step (module docstring): generation, old log-probs, update."""
    from transformers import AutoConfig

    from testbed import arithmetic_problems

    config = AutoConfig.from_pretrained(base)
    H, V, L = config.hidden_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (H // config.num_attention_heads)
    # per token and layer: the q and o projections, k and v, the gated MLP's three matrices
    body = L * (2 * H * H + 2 * H * kv + 3 * H * config.intermediate_size)
    prompts = arithmetic_problems(2000, seed=0)
    prompt_tokens = statistics.mean(len(p["prompt"]) for p in prompts)  # one token per character
    sequences = opts.prompts_per_step * opts.group_size
    T = sequences * prompt_tokens + completion_tokens
    forward = 2 * body * T + 2 * V * H * completion_tokens
    return {"generation": forward, "old_logprobs": forward, "update": 3 * forward,
            "params_body": body}


# ---------------------------------------------------------------------------- the report
def spread(values: list[float], digits: int = 2) -> str:
    """median [min, max]"""
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{middle:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def phase_seconds(runs: list[dict], phase: str, clock: str) -> list[float]:
    """Mean seconds per RL step of one phase (or "step": all three), one value per run."""
    names = PHASES if phase == "step" else (phase,)
    return [statistics.mean(sum(s[clock][p] for p in names) for s in run["steps"]) for run in runs]


def report(opts, results: dict, base: str, load: list[tuple[float, float, float]]) -> str:
    ours, trl = results["ours"], results["trl"]
    lines = [f"{len(ours)} interleaved pairs x {opts.steps} RL steps of {opts.prompts_per_step} "
             f"prompts x {opts.group_size} completions of up to {opts.max_new_tokens} tokens, "
             f"{opts.updates_per_step} updates a step in micro-batches of {opts.micro_batch_size}, "
             f"one thread each; model {base}",
             "load average (1, 5, 15 min) before each pair and at the end: "
             + "; ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in load), "",
             "| median [min, max] over runs | ours (train.py) | TRL GRPOTrainer |", "|---|---|---|"]
    for clock in CLOCKS:
        lines.append(f"| RL steps, {clock} s | {spread([r[f'{clock}_s'] for r in ours], 1)} "
                     f"| {spread([r[f'{clock}_s'] for r in trl], 1)} |")
    lines.append(f"| peak RSS, MB | {spread([r['peak_mb'] for r in ours], 0)} "
                 f"| {spread([r['peak_mb'] for r in trl], 0)} |")
    for phase in PHASES:
        lines.append(f"| {phase.replace('_', ' ')}, cpu s per RL step "
                     f"| {spread(phase_seconds(ours, phase, 'cpu'), 3)} "
                     f"| {spread(phase_seconds(trl, phase, 'cpu'), 3)} |")
    tenth = max(1, opts.steps // 10)
    for key in ("reward", "entropy"):
        for label, part in (("first", slice(0, tenth)), ("last", slice(-tenth, None))):
            cells = []
            for runs in (ours, trl):
                values = [statistics.mean(s[key] for s in r["steps"][part]) for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
            lines.append(f"| {key}, {label} 10% of steps (mean ± sd over runs) "
                         f"| {cells[0]} | {cells[1]} |")
    lines.append("")
    for clock in CLOCKS:
        ratios = [t[f"{clock}_s"] / o[f"{clock}_s"] for o, t in zip(ours, trl)]
        verdict = "met" if statistics.median(ratios) >= 1.5 else "not met"
        lines.append(f"throughput ours / TRL by {clock} time, pair by pair: median "
                     f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}); "
                     f"goal >= 1.5x: {verdict}")
    tokens = statistics.mean(s["tokens"] for r in ours for s in r["steps"])  # completion tokens
    flops, rate = step_flops(base, opts, tokens), matmul_rate()
    lines += ["", "where the time goes: cpu seconds per RL step (median over runs) against the "
              f"FLOP floor ({flops['params_body'] / 1e6:.2f}M parameters in the decoder layers, "
              f"{tokens:.0f} completion tokens a step; fp32 matmul on one thread: "
              f"{rate / 1e9:.1f} GFLOP/s)",
              "| phase | GFLOP | floor | ours | TRL | TRL / ours | ours / floor |",
              "|---|---|---|---|---|---|---|"]
    for phase in (*PHASES, "step"):
        o = statistics.median(phase_seconds(ours, phase, "cpu"))
        t = statistics.median(phase_seconds(trl, phase, "cpu"))
        gflop = sum(flops[p] for p in (PHASES if phase == "step" else (phase,))) / 1e9
        floor = gflop * 1e9 / rate
        lines.append(f"| {phase.replace('_', ' ')} | {gflop:.2f} | {floor:.3f} | {o:.3f} | "
                     f"{t:.3f} | {t / o:.2f} | {o / floor:.1f}x |")
    forward = [statistics.median(statistics.mean(s["cpu"]["old_logprobs_forward"]
                                                 for s in r["steps"]) for r in runs)
               for runs in (ours, trl)]
    lines.append(f"(old log-probs: the no-grad forward is {forward[0]:.3f} s of ours and "
                 f"{forward[1]:.3f} s of TRL's; the rest is advantages and bookkeeping)")
    lines += ["", "learning curves, mean over runs: reward, and entropy (nats) during the update",
              "| RL step | reward ours | reward TRL | entropy ours | entropy TRL |",
              "|---|---|---|---|---|"]
    for step in sorted(set(range(0, opts.steps, max(1, opts.steps // 10))) | {opts.steps - 1}):
        cells = [f"{statistics.mean(r['steps'][step][key] for r in runs):.3f}"
                 for key in ("reward", "entropy") for runs in (ours, trl)]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    opts = parse(argv)
    if opts.worker:
        (ours_worker if opts.worker == "ours" else trl_worker)(opts)
        return
    if opts.make_model:
        make_model(opts.make_model)
        return
    from trl_entropy_schedule import require_trl

    require_trl()
    root = opts.out_dir or tempfile.mkdtemp(prefix="vs_trl_")
    base = opts.model or os.path.join(root, "base_model")
    if opts.model and not os.path.isdir(opts.model):
        raise SystemExit(f"--model {opts.model}: no such directory (--make_model writes one)")
    if not os.path.exists(base):
        from testbed import build_base_model

        print(f"building the base model ({opts.warm_start_steps} warm-start steps) in {base}",
              flush=True)
        build_base_model(base, seed=0, warm_start_steps=opts.warm_start_steps)
    results, load = {"ours": [], "trl": []}, []
    started = time.time()
    for pair in range(opts.pairs):
        load.append(os.getloadavg())
        for side in ("ours", "trl") if pair % 2 == 0 else ("trl", "ours"):
            run = run_side(side, opts, base, os.path.join(root, f"pair{pair}", side), seed=pair)
            results[side].append(run)
            print(f"pair {pair} {side}: RL steps {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s "
                  f"cpu, peak {run['peak_mb']:.0f} MB", flush=True)
    load.append(os.getloadavg())
    print(report(opts, results, base, load))
    print(f"\nwhole invocation: {time.time() - started:.0f} s; runs in {root}")
    with open(os.path.join(root, "vs_trl.json"), "w") as f:
        json.dump({"options": vars(opts), "load": load, **results}, f)


if __name__ == "__main__":
    main()
