"""Does the trainer learn, and does the controller control? Short runs of train.py on the testbed.

The formula tests pin each piece of an RL step against numbers worked out by hand. They cannot see
a trainer that runs every piece and still does not learn: advantages with the wrong sign, a
learning rate that never reaches the optimizer, an update computed and then dropped, a controller
whose knob never reaches the loss. These runs can. Each is train.py's own `configure`, `setup` and
`rl_step`, in this process, from one warm-started base model that the session builds once. The
runs are small (16 prompts x 8 samples, 16 or 24 steps) and train on a set of 16 prompts, every
one in every step, so that a step's reward and entropy measure the policy, not which prompts were
drawn.

Each bound separates the working trainer from the broken variants that the tests run beside it
(monkeypatched in this file). It was chosen from the distribution of each over seeds 0-9, written
beside it; re-measure them with `python tests/test_behaviour.py` (60 runs, about 5 minutes of
CPU).
"""
import contextlib
import io
import os
import statistics
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # as a script too
import train  # noqa: E402
from testbed import build_base_model  # noqa: E402

pytestmark = pytest.mark.slow  # ~70 s of train.py runs: the full suite, not the edit-test loop

WARM_START_STEPS = 300  # half the default: ~20 s, and a base whose reward rises within 16 steps
STEPS = 16  # of the learning runs
HOLD_STEPS = 24  # of the held-target runs: the controller's integral needs ~10 steps to catch up
WINDOW = 4  # steps averaged at each end of a learning run
COMMON = ["--loss", "grpo", "--prompts_per_step", "16", "--max_problems", "16", "--group_size", "8",
          "--save_every", "0"]
LEARN = [*COMMON, "--schedule", "none"]  # plain GRPO
HOLD = [*COMMON, "--schedule", "constant", "--controller", "pid-entropy"]  # H* = H0 throughout


# ----------------------------------------------------------------------------- the measures
def reward_gain(rows) -> float:
    """Mean reward of the last WINDOW steps minus that of the first WINDOW."""
    rewards = [r["reward/mean"] for r in rows]
    return statistics.mean(rewards[-WINDOW:]) - statistics.mean(rewards[:WINDOW])


def entropy_ratio(rows) -> float:
    """Mean entropy of the last WINDOW steps over the entropy at step 0."""
    return statistics.mean(r["entropy"] for r in rows[-WINDOW:]) / rows[0]["entropy"]


def tracking_error(rows) -> float:
    """Mean |H - H*| / H* over the second half of the run (the first half lets the integral act)."""
    return statistics.mean(r["entropy/track_err"] for r in rows[len(rows) // 2 :])


# ----------------------------------------------------------------------------- broken trainers
@contextlib.contextmanager
def broken(variant: str, run):
    """The trainer with one bug: what a one-line slip in train.py would do."""
    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    if variant == "negated advantages":
        advantages = train.group_advantages
        patch(train, "group_advantages", lambda *args, **kwargs: -advantages(*args, **kwargs))
    elif variant == "learning rate 0":
        patch(train, "learning_rate", lambda cfg, step: 0.0)
    elif variant == "update dropped":
        patch(run.optimizer, "step", lambda *args, **kwargs: None)
    elif variant == "knob disconnected":
        patch(train, "loss_arguments", lambda knob_name, knob: {})
    elif variant != "working":
        raise ValueError(variant)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def train_rows(base: str, out_dir: str, flags: list[str], seed: int = 0, variant: str = "working",
               steps: int = STEPS) -> list[dict]:
    """`steps` RL steps of train.py in this process; their metrics.jsonl lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        cfg, reward_fn, verifier = train.configure(
            ["--model", base, "--out_dir", out_dir, "--steps", str(steps), "--seed", str(seed), *flags], 0, 1)
        run, _ = train.setup(cfg, reward_fn, verifier, 0, 1, torch.device("cpu"))
    with broken(variant, run):
        return [train.rl_step(run, step) for step in range(steps)]


@pytest.fixture(scope="module", autouse=True)
def threads():
    """train.setup runs the tiny model on one thread; the tests after these get theirs back."""
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("behaviour") / "base_model")
    build_base_model(path, seed=0, warm_start_steps=WARM_START_STEPS)
    return path


@pytest.fixture(scope="module")
def learning_run(base, tmp_path_factory):
    return train_rows(base, str(tmp_path_factory.mktemp("learn")), LEARN)


# ----------------------------------------------------------------------------- the tests
# Reward gain, seeds 0-9 (last 4 steps' mean minus the first 4's):
#   working             +0.164 .. +0.297  (mean +0.244)
#   learning rate 0     -0.037 .. +0.025  (mean -0.006: the policy never moves, the gain is noise)
#   update dropped      the same numbers as learning rate 0, step for step
#   negated advantages  -0.076 .. -0.039  (mean -0.050: the reward falls to ~0)
# 0.095 sits 0.070 above the best broken run and 0.069 below the worst working one.
REWARD_GAIN_BOUND = 0.095


def test_reward_rises(learning_run):
    assert reward_gain(learning_run) > REWARD_GAIN_BOUND, [round(r["reward/mean"], 3) for r in learning_run]


@pytest.mark.parametrize("variant", ["negated advantages", "learning rate 0", "update dropped"])
def test_a_broken_trainer_stays_below_the_reward_bound(base, tmp_path, variant):
    rows = train_rows(base, str(tmp_path), LEARN, variant=variant)
    assert reward_gain(rows) < REWARD_GAIN_BOUND, [round(r["reward/mean"], 3) for r in rows]


# Entropy (last 4 steps) over its start under plain GRPO, seeds 0-9: working 0.604 .. 0.693 (mean
# 0.657); with the policy frozen (learning rate 0) 0.988 .. 1.013. Nothing holds entropy up, and
# sharpening onto the right answers lowers it: the collapse Entropy Scheduling exists to control.
ENTROPY_FALL_BOUND = 0.85


def test_entropy_falls_under_grpo_without_a_schedule(learning_run):
    assert [r["entropy/target"] for r in learning_run] == [None] * STEPS
    assert [r["entropy/knob"] for r in learning_run] == [0.0] * STEPS  # no target: no entropy term
    assert entropy_ratio(learning_run) < ENTROPY_FALL_BOUND


# Mean |H - H*| / H* over steps 12-23, the target held at H0 by the pid-entropy controller (its
# default gains), seeds 0-9:
#   working            0.026 .. 0.099  (mean 0.065)
#   knob disconnected  0.356 .. 0.462  (mean 0.394: plain GRPO, with a target nobody acts on)
# 0.2 sits 0.101 above the worst working run and 0.156 below the best disconnected one.
TRACKING_BOUND = 0.2


@pytest.mark.parametrize("variant", ["working", "knob disconnected"])
def test_entropy_tracks_a_held_target_only_through_the_knob(base, tmp_path, variant):
    rows = train_rows(base, str(tmp_path), HOLD, variant=variant, steps=HOLD_STEPS)
    assert all(r["entropy/target"] == rows[0]["entropy"] for r in rows)  # H* = H0 throughout
    error = tracking_error(rows)
    assert error < TRACKING_BOUND if variant == "working" else error > TRACKING_BOUND, \
        [round(r["entropy"], 3) for r in rows]


# ----------------------------------------------------------------------------- re-measuring
def measure(seeds: range, out_root: str) -> None:
    """Every measure above for the working trainer and each broken one, over `seeds`."""
    base_path = os.path.join(out_root, "base_model")
    if not os.path.exists(base_path):
        build_base_model(base_path, seed=0, warm_start_steps=WARM_START_STEPS)
    cases = [("reward gain", LEARN, reward_gain, v) for v in
             ("working", "negated advantages", "learning rate 0", "update dropped")]
    cases += [("entropy ratio", LEARN, entropy_ratio, v) for v in ("working", "learning rate 0")]
    cases += [("tracking error", HOLD, tracking_error, v) for v in ("working", "knob disconnected")]
    runs = {}
    for measure_name, flags, fn, variant in cases:
        values = []
        for seed in seeds:
            key = (tuple(flags), variant, seed)
            if key not in runs:
                steps = HOLD_STEPS if flags is HOLD else STEPS
                runs[key] = train_rows(base_path, tempfile.mkdtemp(dir=out_root), flags, seed, variant, steps)
            values.append(fn(runs[key]))
        print(f"{measure_name:<15} {variant:<20} min {min(values):+.3f} max {max(values):+.3f} "
              f"mean {statistics.mean(values):+.3f}  [{', '.join(f'{v:+.3f}' for v in values)}]", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    measure(range(int(sys.argv[1]) if len(sys.argv) > 1 else 10), tempfile.mkdtemp())
