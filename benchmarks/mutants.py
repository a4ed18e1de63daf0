"""Mutation check: would the tests catch the bugs that matter most? A development tool, not CI.

    python benchmarks/mutants.py                          # every mutant (12 min on 2 cores)
    python benchmarks/mutants.py --only pid-absolute-error train-knob-disconnected
    python benchmarks/mutants.py --tests-at 0793736       # the same mutants against older tests
    python benchmarks/mutants.py --list                   # the mutants and their tests
    python benchmarks/mutants.py --only train-lr-zero --tests "tests/test_train.py -k default_run"
                                                          # other tests than the mutants' own

A mutant is one small edit of the product: a file, an exact snippet of it, the snippet's
replacement, the tests that should catch it and one line on why it matters. For each, a throwaway
copy of the repository (the files git tracks or would track; no .git, no runs/) gets the edit, and
the mutant's tests run there (`pytest -x`, with a timeout). The result is one of:

    caught    the tests failed (the name of the first failing test is shown)
    SURVIVED  the tests passed: either they miss the bug, or the mutant cannot matter (say which
              in docs/mutation.md)
    timeout   the tests ran past --timeout
    stale     the snippet is no longer in the file, or not once: the code moved; update the mutant
    no test   none of the mutant's test files exist (--tests-at an older commit)

Before the mutants, every distinct test selection runs once on the unmutated copy: a selection
that fails there would "catch" every mutant, so its mutants are reported as "baseline fails".
`--tests-at REV` replaces the copy's tests/ by the tests/ of commit REV: the table of an older
suite against today's product. The table prints as markdown (mutant, file, caught by, seconds);
docs/mutation.md keeps the last one, before and after.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutant:
    name: str
    file: str
    original: str  # must occur exactly once in `file`
    replacement: str
    tests: str  # pytest arguments, run from the repository root
    why: str


LOSS = "tests/test_loss.py loss.py"
SCHEDULE = "tests/test_entropy_schedule.py entropy_schedule.py"
BEHAVIOUR = "tests/test_behaviour.py"
MUTANTS = [
    # ---- loss.py: the objective
    Mutant("adv-no-baseline", "loss.py",
           "centred = grouped - grouped.mean(dim=1, keepdim=True)", "centred = grouped",
           LOSS, "GRPO's group baseline: without it every reward is an advantage"),
    Mutant("adv-biased-std", "loss.py",
           "grouped.std(dim=1, keepdim=True)", "grouped.std(dim=1, keepdim=True, correction=0)",
           LOSS, "verl's unbiased std; the scale of every advantage"),
    Mutant("loss-negated-advantage", "loss.py",
           "unclipped = -advantages * ratio", "unclipped = advantages * ratio",
           LOSS, "the sign of the policy gradient: the trainer unlearns"),
    Mutant("clip-bounds-swapped", "loss.py",
           "ratio.clamp(1 - clip_low, 1 + clip_high)", "ratio.clamp(1 - clip_high, 1 + clip_low)",
           LOSS, "DAPO's clip-higher: the asymmetric band"),
    Mutant("clip-min-not-max", "loss.py",
           "token_loss = torch.maximum(unclipped, clipped)", "token_loss = torch.minimum(unclipped, clipped)",
           LOSS, "the pessimistic bound of PPO's clip"),
    Mutant("dual-clip-max", "loss.py",
           "torch.minimum(token_loss, -advantages * dual_clip)", "torch.maximum(token_loss, -advantages * dual_clip)",
           LOSS, "dual-clip caps the loss of exploded negative samples"),
    Mutant("log-ratio-reversed", "loss.py",
           "log_ratio = (logprobs - old_logprobs).clamp(-20, 20)",
           "log_ratio = (old_logprobs - logprobs).clamp(-20, 20)",
           LOSS, "the importance ratio pi / pi_old"),
    Mutant("token-mean-over-padding", "loss.py",
           "denominator = mask.sum() if num_tokens is None else num_tokens",
           "denominator = mask.numel() if num_tokens is None else num_tokens",
           LOSS, "token-mean divides by real tokens, not padded positions"),
    Mutant("seq-mean-over-padding", "loss.py",
           "per_seq = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)",
           "per_seq = (values * mask).sum(dim=1) / values.shape[1]",
           LOSS, "GRPO's per-sequence mean over the sequence's own length"),
    Mutant("dr-grpo-max-len-ignored", "loss.py",
           "return (values * mask).sum() / (seqs * (max_len or values.shape[1]))",
           "return (values * mask).sum() / (seqs * values.shape[1])",
           LOSS, "Dr. GRPO's constant divides by the budget, not the batch's width"),
    Mutant("entropy-bonus-sign", "loss.py",
           "loss = loss - entropy_coef * agg(entropy)", "loss = loss + entropy_coef * agg(entropy)",
           LOSS, "a bonus that lowers entropy: the pid-entropy knob acts backwards"),
    Mutant("kl-penalty-sign", "loss.py",
           "loss = loss + kl_coef * agg(kl_estimate(", "loss = loss - kl_coef * agg(kl_estimate(",
           LOSS, "the KL penalty pushes away from the reference"),
    Mutant("k3-wrong-direction", "loss.py",
           "return (torch.exp(-log_ratio) + log_ratio - 1).clamp(-10, 10)",
           "return (torch.exp(log_ratio) - log_ratio - 1).clamp(-10, 10)",
           LOSS, "k3 estimates KL(pi || pi_ref), not the reverse"),
    Mutant("balance-weights-swapped", "loss.py",
           "advantages * pos_weight, advantages * neg_weight", "advantages * neg_weight, advantages * pos_weight",
           LOSS, "EntroPIC's knob: which side is weighted up"),
    Mutant("covariance-mean-over-padding", "loss.py",
           "(a - (a * m).sum() / count)", "(a - a.mean())",
           LOSS, "Clip-Cov / KL-Cov: means over real tokens only"),
    Mutant("covariance-logp-mean-over-padding", "loss.py",
           "(logp - (logp * m).sum() / count)", "(logp - logp.mean())",
           LOSS, "the same for the log-prob mean (padding log-probs are garbage)"),
    Mutant("kl-cov-picks-padding", "loss.py",
           "valid & (_rank(torch.where(valid, cov, -torch.inf))", "(_rank(cov)",
           LOSS, "KL-Cov must never restrain a padded position"),
    Mutant("clip-cov-picks-padding", "loss.py",
           "in_band = valid & ~clipped &", "in_band = ~clipped &",
           LOSS, "Clip-Cov must never restrain a padded position"),
    Mutant("clip-cov-no-effect", "loss.py",
           "token_loss = torch.where(restrained, 0.0, token_loss)", "token_loss = token_loss",
           LOSS, "Clip-Cov's restrained tokens get no gradient"),
    Mutant("kl-cov-no-penalty", "loss.py",
           "unclipped + KL_COV_COEF * log_ratio.abs()", "unclipped",
           LOSS, "KL-Cov's |log r| penalty"),
    Mutant("approx-kl-sign", "loss.py",
           '"approx_kl": mean(-log_ratio)', '"approx_kl": mean(log_ratio)',
           LOSS, "the logged KL(pi_old || pi) estimate, off-policy"),
    Mutant("clipfrac-low-any-sign", "loss.py",
           "mean((ratio < 1 - clip_low) & (advantages < 0))", "mean(ratio < 1 - clip_low)",
           LOSS, "the lower clip binds only for A < 0"),
    Mutant("clipfrac-high-any-sign", "loss.py",
           "clipped_high = (ratio > 1 + clip_high) & (advantages > 0)", "clipped_high = ratio > 1 + clip_high",
           LOSS, "the upper clip binds only for A > 0 (clip_high_p reads it)"),
    Mutant("stats-over-padding", "loss.py",
           "tokens = m.sum().clamp(min=1)", "tokens = torch.tensor(float(m.numel()))",
           LOSS, "logged statistics are means over real tokens"),
    Mutant("tis-not-applied", "loss.py",
           "token_loss = token_loss * is_weights", "token_loss = token_loss",
           LOSS, "truncated importance sampling's weights reach the loss"),
    Mutant("tis-not-truncated", "loss.py",
           "torch.exp(old_logprobs - sampler_logprobs).clamp(max=cap).detach()",
           "torch.exp(old_logprobs - sampler_logprobs).detach()",
           LOSS, "the cap C of TIS"),
    # ---- entropy_schedule.py: schedules and controllers
    Mutant("pid-absolute-error", "entropy_schedule.py",
           "error = (target - measured) / target\n        derivative",
           "error = target - measured\n        derivative",
           SCHEDULE, "the paper's relative error: the same gains at any entropy scale"),
    Mutant("pid-no-lower-clamp", "entropy_schedule.py",
           "self.knob = min(max(raw, self.low), self.high)", "self.knob = min(raw, self.high)",
           SCHEDULE, "eps_high below its floor (negative: a clip that inverts)"),
    Mutant("pid-no-anti-windup", "entropy_schedule.py",
           "if not pushing_past_bound:", "if True:",
           SCHEDULE, "a wound-up integral pins the knob at a bound long after the error flips"),
    Mutant("pid-no-target-resets-knob", "entropy_schedule.py",
           "no schedule: hold the initial value (plain DAPO / GRPO)\n            return self.knob",
           "no schedule: hold the initial value (plain DAPO / GRPO)\n            return self.init",
           SCHEDULE, "a step without a target holds the knob where it is"),
    Mutant("pid-no-target-integrates", "entropy_schedule.py",
           "no schedule: hold the initial value (plain DAPO / GRPO)\n            return self.knob",
           "no schedule: hold the initial value (plain DAPO / GRPO)\n            target = measured",
           SCHEDULE, "a step without a target leaves the controller's state alone"),
    Mutant("skywork-no-target-keeps-bonus", "entropy_schedule.py",
           "if target is None:\n            self.knob = 0.0", "if target is None:\n            self.knob = self.coef",
           SCHEDULE, "no target: no entropy bonus"),
    Mutant("balance-absolute-error", "entropy_schedule.py",
           "error = (target - measured) / target\n        raw = self.kp * error",
           "error = target - measured\n        raw = self.kp * error",
           SCHEDULE, "the balance controller's relative error"),
    Mutant("balance-no-anti-windup", "entropy_schedule.py",
           "if abs(raw) <= self.limit or (raw > 0) != (error > 0):", "if True:",
           SCHEDULE, "the balance controller's anti-windup"),
    Mutant("balance-knob-swapped", "entropy_schedule.py",
           '{"pos_weight": 1 - knob, "neg_weight": 1 + knob}', '{"pos_weight": 1 + knob, "neg_weight": 1 - knob}',
           SCHEDULE, "b > 0 must weight the negative samples up (entropy up)"),
    Mutant("cosine-anneal-inverted", "entropy_schedule.py",
           "return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))",
           "return end + (start - end) * 0.5 * (1 - math.cos(math.pi * progress))",
           SCHEDULE, "the cosine anneal goes from start to end"),
    Mutant("anneal-starts-at-zero", "entropy_schedule.py",
           "return self.warmup_steps + round(self.stable_frac * (self.total_steps - self.warmup_steps))",
           "return self.warmup_steps",
           SCHEDULE, "stable-anneal holds before it anneals"),
    Mutant("tracking-error-absolute", "entropy_schedule.py",
           "error = abs(measured - target) / target", "error = abs(measured - target)",
           SCHEDULE, "the logged tracking error is relative"),
    # ---- eval_passk.py and reward.py
    Mutant("passk-product-range", "eval_passk.py",
           "for i in range(n - c + 1, n + 1))", "for i in range(n - c, n + 1))",
           "tests/test_eval_passk.py eval_passk.py", "Chen et al.'s product form"),
    Mutant("passk-all-correct-shortcut", "eval_passk.py",
           "if n - c < k:", "if n - c <= k:",
           "tests/test_eval_passk.py eval_passk.py", "pass@k = 1 only when every k-subset holds a correct one"),
    Mutant("decimal-tolerance-for-exact-fractions", "reward.py",
           "if places and not _terminates(exact) and", "if places and",
           "tests/test_reward.py tests/test_reward_tables.py -k 'not math_verify'",
           "a fraction with a finite expansion must be written exactly"),
    Mutant("terminates-ignores-5", "reward.py",
           "for p in (2, 5):", "for p in (2,):",
           "tests/test_reward.py tests/test_reward_tables.py -k 'not math_verify'",
           "1/5^k has a finite expansion too"),
    Mutant("decimal-tolerance-10x", "reward.py",
           "abs(decimal - exact) < Fraction(1, 10**places)", "abs(decimal - exact) < Fraction(10, 10**places)",
           "tests/test_reward.py tests/test_reward_tables.py -k 'not math_verify'",
           "within one unit of the last digit, not ten"),
    Mutant("overlong-penalty-sign", "reward.py",
           "return min(-(length - (max_length - buffer)) / buffer * penalty, 0.0)",
           "return max((length - (max_length - buffer)) / buffer * penalty, 0.0)",
           "tests/test_reward.py reward.py", "DAPO's overlong shaping punishes, not rewards"),
    # ---- rollout.py: what the loss is computed on
    Mutant("mask-drops-eos", "rollout.py",
           "return (eos_before == 0).long()", "return (eos_before + is_eos == 0).long()",
           "tests/test_rollout.py rollout.py", "the first EOS stays in the loss (the model learns to stop)"),
    Mutant("fused-entropy-sign", "rollout.py",
           "entropy[start:end] = lse_c - p_times_z.sum(-1)", "entropy[start:end] = p_times_z.sum(-1) - lse_c",
           "tests/test_rollout.py rollout.py", "H = logsumexp(z) - sum p z"),
    # ---- train.py: the wiring only end-to-end behaviour can see
    Mutant("train-negated-advantages", "train.py",
           "advantages = group_advantages(rewards, G, cfg.adv_scale)",
           "advantages = -group_advantages(rewards, G, cfg.adv_scale)",
           BEHAVIOUR, "the trainer unlearns; every formula test still passes"),
    Mutant("train-lr-zero", "train.py",
           'group["lr"] = lr', 'group["lr"] = 0.0',
           BEHAVIOUR, "the learning rate never reaches the optimizer"),
    Mutant("train-update-dropped", "train.py",
           "        optimizer.step()\n", "",
           BEHAVIOUR, "gradients computed, never applied"),
    Mutant("train-knob-disconnected", "train.py",
           "loss_arguments(run.controller.name, knob)", "{}",
           BEHAVIOUR, "the controller's knob never reaches the loss: no entropy scheduling at all"),
    Mutant("train-controller-blind", "train.py",
           "knob = run.controller.update(measured, target)", "knob = run.controller.update(measured, None)",
           BEHAVIOUR, "the controller never sees the target"),
    Mutant("train-local-token-count", "train.py",
           "logprobs, old_logprobs[rows], advantages[rows], mask[rows], num_tokens=tokens,",
           "logprobs, old_logprobs[rows], advantages[rows], mask[rows], num_tokens=None,",
           "tests/test_train.py -k objective", "the objective must not depend on the micro-batch split"),
]


# ----------------------------------------------------------------------------- running them
def repository_files(root: str) -> list[str]:
    """What git tracks or would track (tracked, and untracked but not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return [path for path in out.splitlines() if os.path.isfile(os.path.join(root, path))]


def make_copy(root: str, tests_at: str | None) -> str:
    copy = tempfile.mkdtemp(prefix="mutants-")
    for path in repository_files(root):
        os.makedirs(os.path.join(copy, os.path.dirname(path)), exist_ok=True)
        shutil.copy2(os.path.join(root, path), os.path.join(copy, path))
    if tests_at:  # the tests of another commit against this product
        shutil.rmtree(os.path.join(copy, "tests"))
        archive = subprocess.run(["git", "archive", tests_at, "tests"], cwd=root, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", copy], input=archive, check=True)
    return copy


def existing_args(copy: str, tests: str) -> tuple[list[str], bool]:
    """The mutant's pytest arguments without the paths this copy lacks, and whether a path is left."""
    args, kept, has_path, i = shlex.split(tests), [], False, 0
    while i < len(args):
        if args[i] == "-k":  # an option with a value
            kept += args[i : i + 2]
            i += 2
            continue
        if args[i].startswith("-"):
            kept.append(args[i])
        elif os.path.exists(os.path.join(copy, args[i].split("::")[0])):
            kept.append(args[i])
            has_path = True
        i += 1
    return kept, has_path


def run_tests(copy: str, args: list[str], timeout: float) -> tuple[str, str, float]:
    """(status, first failing test, seconds) of `pytest -x args` in the copy."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.time()
    try:
        proc = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - start
    seconds = time.time() - start
    if proc.returncode == 0:
        return "passed", "", seconds
    failed = [line.split()[1] for line in proc.stdout.splitlines()
              if line.startswith(("FAILED ", "ERROR ")) and len(line.split()) > 1]
    if proc.returncode == 5:  # nothing collected
        return "no test", "", seconds
    return "failed", short(failed[0]) if failed else f"exit {proc.returncode}", seconds


def short(node_id: str, width: int = 90) -> str:
    """A test's id for the table: without tests/, at most `width` characters, no "|"."""
    node_id = node_id.removeprefix("tests/").replace("|", "/")
    return node_id if len(node_id) <= width else node_id[: width - 3] + "..."


def try_mutant(copy: str, mutant: Mutant, timeout: float) -> dict:
    path = os.path.join(copy, mutant.file)
    with open(path) as f:
        source = f.read()
    row = {"mutant": mutant.name, "file": mutant.file, "caught_by": "", "seconds": 0.0}
    if source.count(mutant.original) != 1:
        return {**row, "status": "stale"}
    args, has_path = existing_args(copy, mutant.tests)
    if not has_path:
        return {**row, "status": "no test"}
    with open(path, "w") as f:
        f.write(source.replace(mutant.original, mutant.replacement))
    try:
        status, caught_by, seconds = run_tests(copy, args, timeout)
    finally:
        with open(path, "w") as f:
            f.write(source)
    status = {"failed": "caught", "passed": "SURVIVED"}.get(status, status)
    return {**row, "status": status, "caught_by": caught_by, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to run (default: all)")
    parser.add_argument("--tests-at", default=None, help="use the tests/ of this git commit")
    parser.add_argument("--tests", default=None, help="pytest arguments for every mutant, instead of "
                        "each one's own (e.g. \"tests/test_train.py -k 'default_run or variants_run'\")")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant's tests")
    parser.add_argument("--jobs", type=int, default=1, help="mutants at a time, each in its own copy")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.tests:
        mutants = [dataclasses.replace(m, tests=args.tests) for m in mutants]
    unknown = set(args.only or []) - {m.name for m in MUTANTS}
    if unknown:
        sys.exit(f"error: unknown mutants {sorted(unknown)}; --list shows them")
    if args.list:
        for m in mutants:
            print(f"{m.name:<40} {m.file:<20} {m.tests}\n{'':<40} {m.why}")
        return
    copies = [make_copy(ROOT, args.tests_at) for _ in range(max(args.jobs, 1))]
    started = time.time()
    try:
        broken = set()
        if not args.no_baseline:  # a selection that fails unmutated would catch everything
            for tests in dict.fromkeys(m.tests for m in mutants):
                selection, has_path = existing_args(copies[0], tests)
                if not has_path:
                    continue
                status, failing, seconds = run_tests(copies[0], selection, args.timeout)
                print(f"baseline {tests}: {status} {failing} ({seconds:.0f} s)", flush=True)
                if status not in ("passed", "no test"):
                    broken.add(tests)

        def work(index_and_mutant):
            index, mutant = index_and_mutant
            if mutant.tests in broken:
                return {"mutant": mutant.name, "file": mutant.file, "status": "baseline fails",
                        "caught_by": "", "seconds": 0.0}
            row = try_mutant(copies[index % len(copies)], mutant, args.timeout)
            print(f"{row['mutant']}: {row['status']} {row['caught_by']} ({row['seconds']:.0f} s)", flush=True)
            return row

        if len(copies) == 1:
            rows = [work((0, m)) for m in mutants]
        else:  # each worker owns one copy: mutant i runs in copy i mod jobs, one at a time
            lanes = [[(j, m) for j, m in enumerate(mutants) if j % len(copies) == lane]
                     for lane in range(len(copies))]
            with ThreadPoolExecutor(len(copies)) as pool:
                done = list(pool.map(lambda lane: [work(item) for item in lane], lanes))
            by_name = {row["mutant"]: row for lane in done for row in lane}
            rows = [by_name[m.name] for m in mutants]
    finally:
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)
    print(f"\n{len(rows)} mutants, {time.time() - started:.0f} s"
          + (f", tests of {args.tests_at}" if args.tests_at else "") + "\n")
    print("| mutant | file | result | caught by | s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mutant']} | {row['file']} | {row['status']} | {row['caught_by']} | "
              f"{row['seconds']:.0f} |")
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
