"""The whole project on a GPU machine in one command: versions, CUDA tests, training, benchmarks.

    python benchmarks/gpu_check.py LOG_DIR                  # every GPU here; <= 8 min on one H200
    python benchmarks/gpu_check.py --cpu LOG_DIR            # the same parts, tiny, on a CPU
    python benchmarks/gpu_check.py LOG_DIR --parts tests,rl_step    # some (machine always runs)

On this workplace's device machine (one H200; torch and transformers installed, no network), one
call of the device tool's `run`, which runs a command in the repository root and brings back what
it writes under $OUT; give it timeout_s 560:

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py $OUT/gpu_check

With Liger-Kernel's wheel carried, part 6 measures it too. Here, once (.whl/ is git-ignored):
`pip download --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5` (it needs torch and
triton, both there); then `run` with carry [".whl"] and the command

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site
    .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3
    benchmarks/gpu_check.py $OUT/gpu_check                         (one line)

The parts, each one or more commands with their own time limits, so that one failure loses
nothing else. LOG_DIR/<n>_<part>.log holds every command ("$ ...") and its whole output;
LOG_DIR/table.md the table this prints last; LOG_DIR/results.json every number: 8 files, as
many as the device tool brings back. train.py and rl_step.py write into a temporary directory.

  1 machine         versions (torch, transformers, CUDA), the GPUs, and two limits measured on
                    GPU 0: HBM bandwidth (a 2 GiB device-to-device copy, bytes read + written)
                    and the bf16 matmul rate (8192^3, random data). Stops everything, with one
                    line, when a required package is missing or torch sees no GPU.
  2 tests           python -m pytest -q -m gpu tests/test_gpu.py
  3 train           python train.py --steps 50, the built-in default: reward first -> last 10% of
                    the steps, tracking error, seconds per step, rollout/logp_mismatch
  4 train_torchrun  torchrun --nproc_per_node=<GPUs> train.py --steps 20: FSDP2, bf16, NCCL (one
                    rank on one GPU); it starts from part 3's warm-started base model
  5 rl_step         benchmarks/rl_step.py at Qwen2.5-0.5B and 1.5B shapes x 512 and 2048 new
                    tokens x one process and torchrun: tokens/s, peak memory, % of the limits
  6 entropy_memory  benchmarks/entropy_memory.py, 16k tokens, H 1536, V 151936, bf16: fused vs
                    naive (vs Liger) time and peak memory

Part 5 runs last and gets what is left of --budget (460 s): its runs go in table order, and one
that cannot start in time is reported as skipped, not run. With --cpu every part is tiny, torchrun
runs 2 gloo ranks, and the limits are the CPU's copy bandwidth and fp32 matmul rate (a CPU
computes in fp32); CI runs it (tests/test_gpu_check.py), so the script cannot rot.

The % of the limits in part 5 divide the work a step must do by what the machine can do in the
time the phase took (`decode_bytes` and `update_flops` below):
  rollout  each decoding step reads every weight once in bf16 (2 bytes x parameters; the tied
           embedding is the lm_head, read once) and every sequence's KV cache so far (2 x layers x
           kv_heads x head_dim x 2 bytes per token); the prompt's prefill is left out.
  update   per sequence of S = prompt + T positions: 6 x (parameters - V x H) x S for the layers,
           8 x V x H x T for the fused head (forward, recomputed logits, and the two gradient
           matmuls: 2 V H per token more than a plain head), and 6 x layers x H x S^2 for causal
           attention (QK^T and AV, forward and backward).
A low rollout % means that decoding waits on something other than memory; with HF `generate`
that is usually Python launching every layer's kernels again for each new token.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("torch", "transformers", "tokenizers", "numpy", "tqdm", "pytest")
OPTIONAL = ("flash_attn", "liger_kernel", "triton", "math_verify", "datasets")
PARTS = ("machine", "tests", "train", "train_torchrun", "rl_step", "entropy_memory")
RUN_ORDER = ("machine", "tests", "train", "train_torchrun", "entropy_memory", "rl_step")


# ============================================================================ sizes
@dataclass
class Sizes:
    """What each part runs at: GPU for the real check, CPU for the tiny one CI runs."""

    copy_mib: int
    """part 1: MiB copied device to device to measure the memory bandwidth"""
    matmul_n: int
    """part 1: n of the n x n x n matmul that measures the matmul rate"""
    train: tuple[str, ...]
    """part 3: train.py's flags"""
    train_torchrun: tuple[str, ...]
    """part 4: train.py's flags under torchrun"""
    rl_step_shapes: tuple[str, ...]
    """part 5: rl_step.py --shape presets"""
    rl_step_tokens: tuple[int, ...]
    """part 5: rl_step.py --max_new_tokens values"""
    rl_step_prompts: int
    """part 5: prompts in the step, rounded up to a multiple of ranks x updates_per_step"""
    rl_step_updates: int
    """part 5: rl_step.py --updates_per_step"""
    rl_step_flags: tuple[str, ...]
    """part 5: rl_step.py's other flags"""
    entropy_memory: tuple[str, ...]
    """part 6: entropy_memory.py's flags"""
    timeouts: dict = field(default_factory=dict)
    """seconds each part's command may run (rl_step: each run); the budget may cut them shorter"""
    budget: float = 460.0
    """seconds for the whole check; a command never runs past it"""


TRAIN_TINY = ("--prompts_per_step", "8", "--group_size", "4", "--eval_prompts", "8",
              "--eval_n", "4", "--eval_k", "1,4", "--warm_start_steps", "25")
GPU = Sizes(copy_mib=2048, matmul_n=8192,
            train=("--steps", "50"), train_torchrun=("--steps", "20"),
            rl_step_shapes=("qwen2.5-0.5b", "qwen2.5-1.5b"), rl_step_tokens=(512, 2048),
            rl_step_prompts=8, rl_step_updates=2,
            rl_step_flags=("--group_size", "8", "--warmup", "--warmup_tokens", "16"),
            entropy_memory=("--n", "16384", "--hidden", "1536", "--vocab", "151936",
                            "--dtype", "bfloat16", "--device", "cuda"),
            timeouts={"machine": 120, "tests": 150, "train": 240, "train_torchrun": 180,
                      "entropy_memory": 120, "rl_step": 150})
CPU = Sizes(copy_mib=256, matmul_n=1024,
            train=("--steps", "2", *TRAIN_TINY), train_torchrun=("--steps", "2", *TRAIN_TINY),
            rl_step_shapes=("tiny",), rl_step_tokens=(4,), rl_step_prompts=2, rl_step_updates=1,
            rl_step_flags=("--group_size", "2", "--prompt_len", "8",
                           "--warmup", "--warmup_tokens", "2"),
            entropy_memory=("--n", "256", "--hidden", "64", "--vocab", "4096", "--device", "cpu"),
            timeouts={"machine": 60, "tests": 120, "train": 180, "train_torchrun": 240,
                      "entropy_memory": 120, "rl_step": 180},
            budget=900.0)
MIN_START_S = {"gpu": 30.0, "cpu": 5.0}  # a command is not started with less of the budget left


# ============================================================================ the work models
def decode_bytes(run: dict, element_bytes: int) -> float:
    """Bytes one rank's rollout must read (weights once per decoding step, then the KV cache).

    `run` is rl_step.py's --out record. Per step t (0 .. T-1) a rank reads its weights and, for
    each of its B sequences, the keys and values of the prompt and of the t tokens before.

    >>> run = {"shape": {"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
    ...                  "num_attention_heads": 2, "num_key_value_heads": 1,
    ...                  "tie_word_embeddings": True},
    ...        "parameters": 100, "world_size": 1, "sequences": 1, "completion_width": 3,
    ...        "args": {"prompt_len": 2}}
    >>> decode_bytes(run, 2)  # 3 x 200 weight bytes + 8 bytes/token x (2 + 3 + 4) tokens read
    672.0
    """
    shape, T, prompt = run["shape"], run["completion_width"], run["args"]["prompt_len"]
    V, H = shape["vocab_size"], shape["hidden_size"]
    weights = run["parameters"] - (0 if shape.get("tie_word_embeddings") else V * H)  # no lookup
    head_dim = H // shape["num_attention_heads"]
    kv_heads, layers = shape["num_key_value_heads"], shape["num_hidden_layers"]
    kv_per_token = 2 * layers * kv_heads * head_dim * element_bytes  # keys and values
    sequences = run["sequences"] / run["world_size"]
    cache_tokens = T * prompt + T * (T - 1) / 2  # sum over the steps of the context read
    return T * weights * element_bytes + sequences * kv_per_token * cache_tokens


def update_flops(run: dict) -> float:
    """FLOPs of the update over all ranks: every sequence once forward and backward.

    Per sequence of S = prompt + T positions: 6 x layer parameters x S (a matmul's forward is 2
    FLOPs per weight and token, its backward 4); the fused head's 4 matmuls of 2 V H per
    completion token (forward, the logits recomputed in backward, the gradients of hidden and
    weight); and causal attention, whose QK^T and AV products are S^2 H / 2 multiply-adds each per
    layer forward: 2 S^2 H FLOPs, 6 S^2 H with the backward.

    >>> run = {"shape": {"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1,
    ...                  "num_attention_heads": 2, "num_key_value_heads": 1,
    ...                  "tie_word_embeddings": True},
    ...        "parameters": 100, "sequences": 2, "completion_width": 3, "args": {"prompt_len": 2}}
    >>> update_flops(run)  # 2 sequences x (6 x 60 x 5 + 8 x 40 x 3 + 6 x 1 x 4 x 25)
    6720.0
    """
    shape, T, prompt = run["shape"], run["completion_width"], run["args"]["prompt_len"]
    V, H, L = shape["vocab_size"], shape["hidden_size"], shape["num_hidden_layers"]
    layers = run["parameters"] - V * H * (1 if shape.get("tie_word_embeddings") else 2)
    S = prompt + T
    return float(run["sequences"] * (6 * layers * S + 8 * V * H * T + 6 * L * H * S**2))


def limits_fractions(run: dict, machine: dict, on_gpu: bool) -> dict:
    """Rollout and update of an rl_step.py record as fractions of the machine's measured limits
    (per-rank work over the slowest rank's time, against one device's limit)."""
    phases = run["phases"]
    ranks = run["world_size"]
    per_rank_bytes = decode_bytes(run, 2 if on_gpu else 4)
    bandwidth = per_rank_bytes / phases["rollout"]["seconds"]
    rate = update_flops(run) / ranks / phases["update"]["seconds"]
    return {"decode_bytes_per_s": bandwidth, "update_flops_per_s": rate,
            "hbm_fraction": bandwidth / machine["limits"]["copy_bytes_per_s"],
            "matmul_fraction": rate / machine["limits"]["matmul_flops_per_s"]}


# ============================================================================ part 1, in a child
def measure_machine(copy_mib: int, matmul_n: int, on_gpu: bool) -> dict:
    """Versions, devices and the two limits; runs in its own process (part 1's command)."""
    from importlib.metadata import PackageNotFoundError, version

    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        return {"missing": missing}
    import torch

    def package_version(name):
        try:
            return version({"flash_attn": "flash-attn", "liger_kernel": "liger-kernel",
                            "math_verify": "math-verify"}.get(name, name))
        except PackageNotFoundError:
            return "installed" if importlib.util.find_spec(name) else None

    info = {"python": sys.version.split()[0], "torch_cuda": torch.version.cuda,
            "versions": {name: package_version(name) for name in REQUIRED + OPTIONAL},
            "gpus": [], "cuda_available": torch.cuda.is_available()}
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        info["gpus"].append({"name": props.name, "memory_gib": props.total_memory / 2**30,
                             "capability": f"{props.major}.{props.minor}",
                             "multiprocessors": props.multi_processor_count})
    if on_gpu and not info["gpus"]:
        return info
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    source = torch.empty(copy_mib * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), device)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    a, b = (torch.randn(matmul_n, matmul_n, device=device, dtype=dtype) for _ in range(2))
    matmul_s = timed(lambda: a @ b, device)
    info["limits"] = {"copy_bytes_per_s": 2 * source.numel() / seconds,  # read + written
                      "matmul_flops_per_s": 2 * matmul_n**3 / matmul_s,
                      "matmul_dtype": str(dtype).removeprefix("torch."), "device": str(device),
                      "threads": torch.get_num_threads()}
    return info


def describe_machine(info: dict) -> None:
    """Part 1's log: every version, every GPU, and nvidia-smi's view of them when it is there."""
    for name, found in info.get("versions", {}).items():
        print(f"{name:<14}{found or 'not installed'}")
    print(f"{'python':<14}{info.get('python')}\n{'CUDA (torch)':<14}{info.get('torch_cuda')}")
    for i, gpu in enumerate(info.get("gpus", [])):
        print(f"GPU {i}: {gpu['name']}, {gpu['memory_gib']:.1f} GiB, compute capability "
              f"{gpu['capability']}, {gpu['multiprocessors']} multiprocessors")
    if info.get("gpus"):
        try:
            query = "--query-gpu=index,name,memory.total,driver_version,clocks.max.sm"
            smi = subprocess.run(["nvidia-smi", query, "--format=csv"], capture_output=True,
                                 text=True, timeout=60)
            print(smi.stdout + smi.stderr)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"nvidia-smi: {e}")
    for name, value in info.get("limits", {}).items():
        print(f"limit {name}: {value:.4g}" if isinstance(value, float) else
              f"limit {name}: {value}")


def timed(fn, device, warmup: int = 3, repeats: int = 10) -> float:
    """Mean seconds of fn() after `warmup` untimed calls (the device synchronised around)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


# ============================================================================ running commands
class Check:
    """One invocation: sizes, budget, where logs and work go, and what each part found."""

    def __init__(self, args, work_dir: str):
        self.mode = "cpu" if args.cpu else "gpu"
        self.sizes = CPU if args.cpu else GPU
        self.log_dir = os.path.abspath(args.log_dir)
        self.work_dir = work_dir
        self.start = time.time()
        self.deadline = self.start + (args.budget or self.sizes.budget)
        self.python = sys.executable
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_OFFLINE": "1"}  # nothing is downloaded: a stray hub call fails at once
        if args.cpu:  # a CPU even where there is a GPU; one thread per process, as the tests run
            self.env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
        self.machine: dict = {}
        self.results: dict = {}
        self.rl_step_rows: list[dict] = []

    @property
    def on_gpu(self) -> bool:
        return self.mode == "gpu"

    def ranks(self) -> int:
        return len(self.machine.get("gpus", [])) if self.on_gpu else 2

    def torchrun(self, ranks: int) -> list[str]:
        return [self.python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={ranks}"]

    def log_path(self, part: str) -> str:
        return os.path.join(self.log_dir, f"{PARTS.index(part) + 1}_{part}.log")

    def time_left(self) -> float:
        return self.deadline - time.time()

    def run(self, part: str, cmd: list[str]) -> dict:
        """Run `cmd` from the repository root with its output appended to the part's log, after
        a "$ command" line; at its time limit stop it and everything it started. Returns rc (None
        when stopped or not started), seconds and the output."""
        limit = min(self.sizes.timeouts[part], self.time_left())
        shown = shlex.join(cmd)
        with open(self.log_path(part), "a") as log:
            log.write(f"$ {shown}\n")
            if limit < MIN_START_S[self.mode]:
                log.write(f"[not started: {max(limit, 0):.0f} s left of the --budget]\n")
                return {"rc": None, "seconds": 0.0, "output": "", "status": "skipped (budget)"}
            print(f"  $ {shown}", flush=True)
            log.flush()
            offset = log.tell()
            started = time.time()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                    start_new_session=True)  # its own group, workers included
            try:
                rc, status = proc.wait(timeout=limit), None
            except subprocess.TimeoutExpired:
                stop(proc)
                rc, status = None, f"TIMEOUT ({limit:.0f} s)"
            seconds = time.time() - started
            log.write(f"[{status or f'rc {rc}'} after {seconds:.1f} s]\n\n")
        with open(self.log_path(part)) as f:
            f.seek(offset)
            output = f.read()
        return {"rc": rc, "seconds": seconds, "output": output,
                "status": status or ("ok" if rc == 0 else f"FAILED (rc {rc})")}


def stop(proc: subprocess.Popen) -> None:
    """End a command started in a process group of its own, and everything it started. torchrun
    puts each worker in a session of its own, out of the group's reach, and stops them when it
    gets SIGTERM: so SIGTERM first, then SIGKILL for whatever is left of the group."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=40)  # torchrun gives its workers 30 s before it kills them
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has ended
        pass
    proc.wait()


# ============================================================================ the parts
def part_machine(check: Check) -> dict:
    """This script again, as `measure_machine` in a process of its own; its last line is JSON."""
    cmd = [check.python, "benchmarks/gpu_check.py", "--measure_machine",
           "--copy_mib", str(check.sizes.copy_mib), "--matmul_n", str(check.sizes.matmul_n)]
    cmd += [] if check.on_gpu else ["--cpu"]
    out = check.run("machine", cmd)
    found = [line for line in out["output"].splitlines() if line.startswith("MACHINE ")]
    if not found:  # not started (the budget), killed, or broken: nothing else can run without it
        return {**out, "status": f"FAILED ({out['status']})", "fatal": True,
                "summary": "error: the machine's measurement gave no answer (see its log)"}
    info = check.machine = json.loads(found[-1].removeprefix("MACHINE "))
    if info.get("missing"):
        names = " ".join(info["missing"])
        return {**out, "status": "FAILED", "fatal": True, "summary": (
            f"error: required package(s) missing here: {names}. This machine cannot install from a "
            f"package registry: download the wheels where pip works (pip download --no-deps "
            f"--only-binary=:all: -d .whl {names}), carry .whl/ and install them here (pip install "
            f"--no-index --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site)")}
    if check.on_gpu and not info["gpus"]:
        return {**out, "status": "FAILED", "fatal": True, "summary": (
            f"error: torch {info['versions']['torch']} sees no CUDA GPU on this machine; for the "
            f"small CPU version run: python benchmarks/gpu_check.py --cpu LOG_DIR")}
    return {**out, "summary": machine_line(info)}


def machine_line(info: dict) -> str:
    """versions, devices and limits in one line: GPUs in TB/s and TFLOP/s, a CPU in G."""
    v, limits, gpus = info["versions"], info["limits"], info["gpus"]
    devices = ", ".join(f"{g['name']} ({g['memory_gib']:.1f} GiB)" for g in gpus) if gpus else \
        f"CPU, {limits['threads']} thread(s)"
    prefix, scale = ("T", 1e12) if gpus else ("G", 1e9)
    return (f"torch {v['torch']} (CUDA {info['torch_cuda']}), transformers {v['transformers']}; "
            f"{devices}; copy {limits['copy_bytes_per_s'] / scale:.2f} {prefix}B/s, "
            f"{limits['matmul_dtype']} matmul {limits['matmul_flops_per_s'] / scale:.0f} "
            f"{prefix}FLOP/s on {limits['device']}")


def part_tests(check: Check) -> dict:
    out = check.run("tests", [check.python, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py"])
    last = [line for line in out["output"].splitlines()
            if re.match(r"\W*\d+ (passed|failed|skipped|deselected|errors?)\b", line)][-1:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                     "".join(last))}
    summary = ", ".join(f"{n} {word}" for word, n in counts.items()) or "no summary line"
    if out["rc"] == 0 and check.on_gpu and counts.get("skipped"):
        out["status"] = "FAILED (tests skipped on a GPU machine)"
    if not check.on_gpu:
        summary += " (no CUDA: skipped, as on any CPU)"
    return {**out, "summary": summary, "counts": counts}


def train_summary(out_dir: str) -> tuple[str, dict]:
    """Reward first -> last 10% of the steps, tracking error, s/step and the largest logp
    mismatch, read from a train.py run's metrics.jsonl and summary.json."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(out_dir, "summary.json")) as f:
        tracking = json.load(f)["tracking_error"]
    tenth = max(1, len(rows) // 10)
    data = {"steps": len(rows),
            "reward_first": sum(r["reward/mean"] for r in rows[:tenth]) / tenth,
            "reward_last": sum(r["reward/mean"] for r in rows[-tenth:]) / tenth,
            "tracking_error": tracking,
            "seconds_per_step": sum(r["time/step_s"] for r in rows) / len(rows),
            "logp_mismatch_max": max(r["rollout/logp_mismatch"] for r in rows)}
    track = " / ".join(f"{v:.3f} {k}" for k, v in tracking.items() if v is not None) or "-"
    return (f"reward {data['reward_first']:.2f} -> {data['reward_last']:.2f}, tracking error "
            f"{track}, {data['seconds_per_step']:.2f} s/step, logp mismatch <= "
            f"{data['logp_mismatch_max']:.1e}"), data


def part_train(check: Check) -> dict:
    out_dir = os.path.join(check.work_dir, "train")
    out = check.run("train", [check.python, "train.py", *check.sizes.train, "--out_dir", out_dir,
                              "--overwrite"])
    return with_train_summary(out, out_dir)


def part_train_torchrun(check: Check) -> dict:
    out_dir = os.path.join(check.work_dir, "train_torchrun")
    base = os.path.join(check.work_dir, "train", "base_model")  # part 3's warm start, if made
    start = ["--model", base] if os.path.exists(os.path.join(base, "config.json")) else []
    ranks = check.ranks()
    out = check.run("train_torchrun", [*check.torchrun(ranks), "train.py",
                                       *check.sizes.train_torchrun, "--out_dir", out_dir,
                                       "--overwrite", *start])
    out = with_train_summary(out, out_dir)
    backend = "nccl" if check.on_gpu else "gloo"
    out["summary"] = f"FSDP2 over {ranks} rank(s), {backend}; " + out["summary"]
    return out


def with_train_summary(out: dict, out_dir: str) -> dict:
    try:
        summary, data = train_summary(out_dir)
    except (OSError, ValueError, KeyError, ZeroDivisionError) as e:
        return {**out, "summary": f"no metrics ({type(e).__name__}: {e})"}
    return {**out, "summary": summary, "data": data}


def part_rl_step(check: Check) -> dict:
    """Every shape x length x launch, in that order, until the budget runs out."""
    s, ranks = check.sizes, check.ranks()
    for tokens in s.rl_step_tokens:
        for shape in s.rl_step_shapes:
            for launch, world in (("python", 1), ("torchrun", ranks)):
                unit = world * s.rl_step_updates  # every rank splits its prompts into mini-batches
                prompts = math.ceil(s.rl_step_prompts / unit) * unit
                record = os.path.join(check.work_dir, f"rl_step_{shape}_{tokens}_{launch}.json")
                cmd = ([check.python] if launch == "python" else check.torchrun(world)) + [
                    "benchmarks/rl_step.py", "--shape", shape, "--max_new_tokens", str(tokens),
                    "--prompts", str(prompts), "--updates_per_step", str(s.rl_step_updates),
                    *s.rl_step_flags, "--out", record]
                out = check.run("rl_step", cmd)
                row = {"shape": shape, "tokens": tokens, "launch": f"{launch} x{world}",
                       "status": out["status"], "seconds": out["seconds"]}
                if out["rc"] == 0:
                    with open(record) as f:
                        run = json.load(f)
                    phases = run["phases"]
                    row.update(rollout_tokens_per_s=phases["rollout"]["tokens_per_s"],
                               update_tokens_per_s=phases["update"]["tokens_per_s"],
                               peak_gib=phases["step"]["peak_gib"], record=run,
                               **limits_fractions(run, check.machine, check.on_gpu))
                check.rl_step_rows.append(row)
    done = sum(r["status"] == "ok" for r in check.rl_step_rows)
    failed = [r for r in check.rl_step_rows if r["status"] not in ("ok", "skipped (budget)")]
    status = "ok" if done == len(check.rl_step_rows) else \
        "FAILED" if failed else "PARTIAL (budget)"
    return {"status": status, "seconds": sum(r["seconds"] for r in check.rl_step_rows),
            "summary": f"{done} of {len(check.rl_step_rows)} runs ok (table below)"}


def part_entropy_memory(check: Check) -> dict:
    liger = importlib.util.find_spec("liger_kernel") is not None
    cmd = [check.python, "benchmarks/entropy_memory.py", *check.sizes.entropy_memory]
    out = check.run("entropy_memory", cmd + (["--liger"] if liger else []))
    variants = {}
    for line in out["output"].splitlines():
        cells = line.split()
        if len(cells) == 4 and cells[0] in ("naive", "fused", "liger"):
            variants[cells[0]] = {"seconds": float(cells[1]), "peak_mb": float(cells[2])}
    agreement = [line.split(": ", 1)[1] for line in out["output"].splitlines()
                 if line.startswith("max |naive - fused|: ")]
    summary = "; ".join(f"{name} {v['seconds']:.2f} s, {v['peak_mb'] / 1024:.2f} GiB peak"
                        for name, v in variants.items()) or "no results"
    if not liger:
        summary += "; Liger not installed"
    if agreement:  # Markdown cells take no "|"
        summary += f"; naive and fused differ by at most {agreement[0]}"
    if out["rc"] == 0 and not {"naive", "fused"} <= set(variants):
        out["status"] = "FAILED (a variant gave no result)"
    return {**out, "summary": summary, "variants": variants}


PART_FUNCTIONS = {"machine": part_machine, "tests": part_tests, "train": part_train,
                  "train_torchrun": part_train_torchrun, "rl_step": part_rl_step,
                  "entropy_memory": part_entropy_memory}


# ============================================================================ the table
def table(check: Check) -> str:
    """What each part found, then part 5's runs, in Markdown."""
    gpus = check.machine.get("gpus") or []
    where = f"{len(gpus)} x {gpus[0]['name']}" if gpus else "a CPU"
    parts = [[f"{i} {part}", r["status"], r["summary"], f"{r['seconds']:.0f}"]
             for i, part in enumerate(PARTS, 1)
             for r in [check.results.get(part, {"status": "not run", "summary": "", "seconds": 0})]]
    text = [f"gpu_check on {where}, {time.time() - check.start:.0f} s", "",
            markdown(["part", "status", "result", "s"], parts)]
    if check.rl_step_rows:
        rate = "bf16" if check.on_gpu else "fp32"
        runs = [[r["shape"], str(r["tokens"]), r["launch"], r["status"]]
                + ([f"{r['rollout_tokens_per_s']:.0f}", f"{100 * r['hbm_fraction']:.1f}",
                    f"{r['update_tokens_per_s']:.0f}", f"{100 * r['matmul_fraction']:.1f}",
                    f"{r['peak_gib']:.1f}"] if "peak_gib" in r else [""] * 5)
                + [f"{r['seconds']:.0f}"] for r in check.rl_step_rows]
        text += ["", f"rl_step.py: completion tokens/s over all ranks; % of part 1's limits per "
                 f"device (rollout: bytes read / copy bandwidth, update: FLOPs / {rate} matmul "
                 f"rate; the models are in gpu_check.py's docstring); peak GiB on one rank", "",
                 markdown(["shape", "new tokens", "launch", "status", "rollout tok/s",
                           "% bandwidth", "update tok/s", f"% {rate} rate", "peak GiB", "s"], runs)]
    return "\n".join(text)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """
    >>> print(markdown(["a", "b"], [["1", "x"]]))
    | a | b |
    | --- | --- |
    | 1 | x |
    """
    return "\n".join("| " + " | ".join(cells) + " |"
                     for cells in [header, ["---"] * len(header), *rows])


# ============================================================================ main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log_dir", nargs="?", help="for the logs, table.md and results.json")
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on a CPU (what CI runs)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {','.join(PARTS)} (machine always runs)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (default: 460 on a GPU, 900 with --cpu)")
    parser.add_argument("--work_dir", default=None,
                        help="where train.py and rl_step.py write, kept (default: a temporary "
                             "directory, removed at the end: LOG_DIR holds the logs alone)")
    parser.add_argument("--measure_machine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--copy_mib", type=int, default=GPU.copy_mib, help=argparse.SUPPRESS)
    parser.add_argument("--matmul_n", type=int, default=GPU.matmul_n, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.measure_machine and not args.log_dir:
        parser.error("LOG_DIR is required: python benchmarks/gpu_check.py LOG_DIR")
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown part(s) {','.join(sorted(unknown))}; "
                     f"the parts are {','.join(PARTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure_machine:  # part 1's own process
        info = measure_machine(args.copy_mib, args.matmul_n, not args.cpu)
        describe_machine(info)
        print("MACHINE " + json.dumps(info))
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        return run_check(Check(args, args.work_dir or scratch), {"machine", *args.parts.split(",")})


def run_check(check: Check, chosen: set[str]) -> int:
    """The chosen parts in RUN_ORDER, then the table; 1 when a part failed, else 0."""
    os.makedirs(check.log_dir, exist_ok=True)
    for part in PARTS:
        if os.path.exists(check.log_path(part)):
            os.remove(check.log_path(part))
    for part in RUN_ORDER:
        if part not in chosen:
            continue
        print(f"[{PARTS.index(part) + 1}/6] {part}", flush=True)
        result = PART_FUNCTIONS[part](check)
        result.pop("output", None)
        check.results[part] = result
        print(f"  -> {result['status']}: {result['summary']}", flush=True)
        if result.get("fatal"):
            print(result["summary"], file=sys.stderr)
            break
    text = table(check)
    with open(os.path.join(check.log_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(check.log_dir, "results.json"), "w") as f:
        json.dump({"mode": check.mode, "seconds": time.time() - check.start,
                   "machine": check.machine, "parts": check.results,
                   "rl_step": check.rl_step_rows}, f, indent=1)
    print("\n" + text)
    passed = ("ok", "skipped", "PARTIAL")  # a part the budget cut short did not fail
    return 1 if any(not r["status"].startswith(passed) for r in check.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
