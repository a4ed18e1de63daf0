"""Entropy Scheduling: a target entropy per step, and a controller that makes the policy follow it.

Wang et al., "Entropy Scheduling in Reinforcement Learning for Large Language Models" (Findings of
ACL 2026) argue that policy entropy plays the role in RL that the learning rate plays in
pre-training. Holding entropy stable (DAPO's clip-higher) keeps exploration alive; letting it fall
("annealing", usually called collapse) buys fast gains in pass@1. So schedule it, as one schedules a
learning rate, and control it at every step:

    H*(s)    = schedule(s)                                   target mean token entropy at step s
    e_s      = (H*(s) - H_s) / H*(s)                         relative tracking error
    knob_s   = clamp(k0 + Kp e_s + Ki sum e + Kd (e_s - e_{s-1}), low, high)

The paper's knob, as its public reviews describe it, is the upper clip bound eps_high of DAPO's
objective (`make_controller("pid")`): a larger eps_high lets low-probability tokens with positive
advantage grow, so entropy rises; a smaller one holds them back. That bound acts only on tokens
whose ratio pi / pi_old has left the clip band, so its authority depends on the task: on a task
whose every token decides the answer it barely moves entropy, and train.py's default controller
there is the same PID on a signed entropy coefficient ("pid-entropy"), which acts on entropy
directly (README says when each applies). The paper does not publish gains, targets or anneal
start; every number below is ours, and says what it was tuned on.

What is here:
  * `EntropySchedule`: none | constant | linear | cosine | stable-anneal | cyclic, with optional
    warm-up, in nats or relative to the starting entropy H0; `target(step)` and `phase(step)`
    ("stable" / "anneal", which curriculum.py follows).
  * `schedule_for_goal(k, ...)`: the pass@k goal -> schedule rule (ours; see its docstring).
  * Controllers with one interface, `update(measured, target) -> knob`, by name:
      "pid"          PIDController on eps_high: the paper's (relative error: scale-free gains);
      "pid-entropy"  the same PID on a signed entropy coefficient (bonus or minimisation);
      "skywork"      Skywork-OR1's bang-bang rule on an entropy-bonus coefficient;
      "balance"      EntroPIC's knob: the weight of negative vs positive advantages.
  * `loss_arguments(name, knob)`: the keyword arguments of loss.policy_loss a knob sets; the one
    way a controller reaches the loss.
  * `TrackingError`: mean |H - H*| / H* per phase, the measure of how well a controller follows.
Every object has state_dict / load_state_dict for checkpoints.

Left out, and why: the paper's own gains, targets and anneal start (unpublished); its
"parallelogram law" (an empirical observation about performance curves, not a mechanism);
temperature and covariance-based knobs (AEPO, Clip-Cov), which steer entropy too but are not what
the paper controls.

Run `python entropy_schedule.py` to draw the schedules (a PNG when matplotlib is installed, else a
text table). Copyable alone: standard library only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

SCHEDULES = ("none", "constant", "linear", "cosine", "stable-anneal", "cyclic")
ANNEAL_SHAPES = ("linear", "cosine")


# ----------------------------------------------------------------------------- schedules
class _Stateful:
    """state_dict / load_state_dict for a dataclass: its fields are its state (checkpoints)."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def _anneal(progress: float, start: float, end: float, shape: str) -> float:
    """Interpolate start -> end as progress goes 0 -> 1 (like an LR decay)."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    return start + (end - start) * progress


@dataclass
class EntropySchedule(_Stateful):
    """Target mean token entropy (nats) as a function of the training step.

    none:          no target; entropy is free (plain GRPO lets it collapse)
    constant:      H* = start                                       (DAPO-like stable entropy)
    linear/cosine: start -> end over the run                         (anneal from the first step)
    stable-anneal: start for `stable_frac` of the run, then `anneal_shape` to end
                   (warmup-stable-decay; the shape the paper finds best)
    cyclic:        cosine between start and end with period `period` steps (rise and fall)
    warmup_steps:  before them H* ramps linearly from H0 to start, as an LR warm-up does.

    Targets may be absolute (nats) or relative to H0, the entropy the policy has when training
    starts: leave `start` None for start = start_ratio x H0, `end` None for end = end_ratio x start.
    The trainer sets `initial_entropy` = H0 at its first step; phases never depend on it.

    >>> s = EntropySchedule("stable-anneal", start=1.0, end=0.2, total_steps=100, stable_frac=0.5,
    ...                     anneal_shape="linear")
    >>> [round(s.target(step), 3) for step in (0, 49, 50, 75, 100)]
    [1.0, 1.0, 1.0, 0.6, 0.2]
    >>> s = EntropySchedule("constant", total_steps=100)  # relative: held at H0
    >>> s.phase(0), s.initial_entropy
    ('stable', None)
    >>> s.initial_entropy = 0.8
    >>> s.target(0), s.end_value
    (0.8, 0.24)
    """

    name: str = "stable-anneal"
    start: float | None = None  # nats; None: start_ratio x H0
    end: float | None = None  # nats; None: end_ratio x start
    total_steps: int = 100
    stable_frac: float = 0.5
    anneal_shape: str = "cosine"
    period: int = 50
    warmup_steps: int = 0
    start_ratio: float = 1.0
    end_ratio: float = 0.3
    initial_entropy: float | None = None  # H0, measured by the trainer at its first step

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule: unknown name {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.anneal_shape not in ANNEAL_SHAPES:
            raise ValueError(f"anneal_shape must be 'linear' or 'cosine', got {self.anneal_shape!r}")
        if any(v is not None and v <= 0 for v in (self.start, self.end)) or \
                self.start_ratio <= 0 or self.end_ratio <= 0:
            raise ValueError(f"entropy targets must be > 0 nats (start={self.start}, end={self.end})")
        if not 0.0 <= self.stable_frac <= 1.0:
            raise ValueError(f"stable_frac must be in [0, 1], got {self.stable_frac}")
        if self.total_steps < 1 or self.period < 2 or self.warmup_steps < 0:
            raise ValueError("total_steps must be >= 1, period >= 2 and warmup_steps >= 0")

    @property
    def start_value(self) -> float:
        """The stable target in nats."""
        if self.start is not None:
            return self.start
        if self.initial_entropy is None:
            raise ValueError("this schedule's targets are relative to H0: set initial_entropy first")
        return self.start_ratio * self.initial_entropy

    @property
    def end_value(self) -> float:
        """The target at the end of the anneal, in nats."""
        return self.end if self.end is not None else self.end_ratio * self.start_value

    @property
    def anneal_start(self) -> int:
        """First step of the anneal phase."""
        if self.name in ("linear", "cosine"):
            return self.warmup_steps
        if self.name == "constant":
            return self.total_steps
        # stable-anneal (and, for curriculum phases only, none)
        return self.warmup_steps + round(self.stable_frac * (self.total_steps - self.warmup_steps))

    def target(self, step: int) -> float | None:
        """H*(step) in nats, or None for the "none" schedule."""
        if self.name == "none":
            return None
        start, end = self.start_value, self.end_value
        if step < self.warmup_steps:
            begin = start if self.initial_entropy is None else self.initial_entropy
            return begin + (start - begin) * step / self.warmup_steps
        if self.name == "constant":
            return start
        if self.name == "cyclic":
            position = ((step - self.warmup_steps) % self.period) / self.period
            return end + (start - end) * 0.5 * (1 + math.cos(2 * math.pi * position))
        shape = self.anneal_shape if self.name == "stable-anneal" else self.name
        span = max(self.total_steps - self.anneal_start, 1)
        return _anneal((step - self.anneal_start) / span, start, end, shape)

    def phase(self, step: int) -> str:
        """"stable" or "anneal". Cyclic: "anneal" while the target falls. None: time-based, from
        stable_frac, so that a curriculum has phases to follow even without control."""
        if self.name == "cyclic":
            position = ((step - self.warmup_steps) % self.period) / self.period
            return "anneal" if step >= self.warmup_steps and position < 0.5 else "stable"
        return "anneal" if step >= self.anneal_start else "stable"


def schedule_for_goal(k: int, total_steps: int, initial_entropy: float | None = None) -> EntropySchedule:
    """Propose a stable-anneal schedule for a pass@k goal (our rule; override any field after).

    The paper finds that an optimal constant entropy exists per k, lower for small k, and that the
    anneal should come late; larger k rewards diversity. We interpolate in u = log(k) / log(100),
    clipped to [0, 1] (pass@1 -> u = 0, pass@100 -> u = 1), relative to the base model's entropy H0
    (`initial_entropy`; None: the entropy the trainer measures at its first step):

        start       = H0 * (0.8 + 0.4 u)      pass@1: 0.8 H0     pass@100: 1.2 H0
        end         = H0 * (0.25 + 0.5 u)     pass@1: 0.25 H0    pass@100: 0.75 H0
        stable_frac = 0.3 + 0.5 u             pass@1: anneal after 30% of the run, pass@100: 80%

    >>> s = schedule_for_goal(1, total_steps=100, initial_entropy=1.0)
    >>> (s.start, s.end, s.stable_frac)
    (0.8, 0.25, 0.3)
    """
    if k < 1:
        raise ValueError(f"pass@k goal needs k >= 1, got {k}")
    u = min(max(math.log(k) / math.log(100), 0.0), 1.0)
    start_ratio, end_ratio = 0.8 + 0.4 * u, 0.25 + 0.5 * u  # of H0
    if initial_entropy is None:
        return EntropySchedule("stable-anneal", total_steps=total_steps, stable_frac=round(0.3 + 0.5 * u, 6),
                               start_ratio=start_ratio, end_ratio=end_ratio / start_ratio)
    return EntropySchedule("stable-anneal", start=round(initial_entropy * start_ratio, 6),
                           end=round(initial_entropy * end_ratio, 6), total_steps=total_steps,
                           stable_frac=round(0.3 + 0.5 * u, 6))


# ----------------------------------------------------------------------------- controllers
@dataclass
class PIDController(_Stateful):
    """PID on one knob; by default the paper's: DAPO's upper clip bound eps_high.

        e_s  = (H* - H_s) / H*                   (relative, so one set of gains serves any entropy
                                                  scale; e > 0 means "raise entropy")
        knob = clamp(init + kp e_s + ki sum(e) + kd (e_s - e_{s-1}), low, high)

    Anti-windup by conditional integration: the error is not added to the sum while the output sits
    on a bound and the error pushes further past it, so the controller leaves the bound as soon as
    the error changes sign instead of first unwinding a large sum.

    Knobs (`name`; `loss_arguments` maps it into the loss):
      clip_high     the paper's. eps_high above DAPO's 0.28 lets low-probability tokens with positive
                    advantage grow (entropy up); below it clips them early (entropy down). It acts
                    only on tokens whose ratio left [1 - eps_low, 1 + eps_high], so its authority
                    grows with how off-policy the updates are (DAPO: 16 mini-batches per rollout).
                    On a task whose every token decides the answer few tokens reach the clip
                    and the knob barely moves entropy (README gives the measurement).
      entropy_coef  a signed entropy coefficient (`make_controller("pid-entropy")`): > 0 is a bonus,
                    < 0 entropy minimisation. Direct authority both ways, at the price of a term
                    in the loss that is not the policy gradient.

    Default gains: tuned by hand on the simulated plant of tests/test_entropy_schedule.py and the
    built-in testbed (benchmarks/compare_schedules.py): a 50% entropy shortfall opens eps_high by
    kp * 0.5 = 0.25 at once; ki removes the steady offset over ~10 steps.
    """

    init: float = 0.28
    kp: float = 0.5
    ki: float = 0.05
    kd: float = 0.0
    low: float = 0.05
    high: float = 1.0
    name: str = "clip_high"
    integral: float = 0.0
    prev_error: float | None = None
    knob: float = 0.28

    def __post_init__(self):
        self.knob = self.init

    def update(self, measured: float, target: float | None) -> float:
        if target is None:  # no schedule: hold the initial value (plain DAPO / GRPO)
            return self.knob
        error = (target - measured) / target
        derivative = 0.0 if self.prev_error is None else error - self.prev_error
        self.prev_error = error
        candidate = self.integral + error
        raw = self.init + self.kp * error + self.ki * candidate + self.kd * derivative
        pushing_past_bound = (raw > self.high and error > 0) or (raw < self.low and error < 0)
        if not pushing_past_bound:  # anti-windup: integrate only while it can still act
            self.integral = candidate
        raw = self.init + self.kp * error + self.ki * self.integral + self.kd * derivative
        self.knob = min(max(raw, self.low), self.high)
        return self.knob


PIDClipController = PIDController  # the paper's controller under its own name


def pid_on_entropy_coef(**overrides) -> PIDController:
    """PID on a signed entropy coefficient in [-1, 0.5]. A wider range downwards than upwards:
    entropy minimisation must beat the policy gradient to anneal on time (on the built-in testbed
    a floor of -0.5 saturated and lagged the anneal). Twice the gains of the clip-high PID: the
    warm-started policy sharpens fast in its first ~25 steps, and on the testbed (seed 0, 64
    prompts a step) doubling kp and ki cut the error of those steps from 0.19 to 0.11
    (docs/results.md, "Is the testbed in the paper's regime?")."""
    return PIDController(**{"init": 0.0, "kp": 1.0, "ki": 0.1, "low": -1.0, "high": 0.5,
                            "name": "entropy_coef", **overrides})


@dataclass
class SkyworkController(_Stateful):
    """Skywork-OR1's adaptive entropy bonus (He et al. 2025), the widely used anchor.

    Once per step: coef += delta if H < H* else -delta, clipped to [0, high]; the bonus
    `-coef * H` is in the loss only while H < H* (so `update` returns 0 when entropy is above
    target). A bang-bang integral controller: it oscillates around the target, and it can only
    RAISE entropy. When the natural trend of RL lowers entropy more slowly than the schedule
    anneals, it cannot follow the anneal: the anneal-phase tracking error shows it.

    Defaults: Skywork-OR1 uses delta 1e-4, max 5e-3 for targets ~0.2 nats at 7B-32B scale; the
    tiny default model needs a larger push per step, tuned as PIDClipController's gains.
    """

    init: float = 0.0
    delta: float = 0.005
    high: float = 0.1
    coef: float = 0.0
    knob: float = 0.0
    name: str = "entropy_coef"

    def __post_init__(self):
        self.coef = self.init

    def update(self, measured: float, target: float | None) -> float:
        if target is None:
            self.knob = 0.0
            return self.knob
        self.coef += self.delta if measured < target else -self.delta
        self.coef = min(max(self.coef, 0.0), self.high)
        self.knob = self.coef if measured < target else 0.0
        return self.knob


@dataclass
class BalanceController(_Stateful):
    """EntroPIC's knob (arXiv 2511.15248): the balance b of negative vs positive samples.

    Positive-advantage tokens are mostly likely ones whose reinforcement sharpens the policy
    (entropy down); negative-advantage tokens push mass back to the rest (entropy up). With
    weights w+ = 1 - b and w- = 1 + b, a PI controller on the relative error sets
    b = clamp(kp e + ki sum(e), -limit, limit) (same anti-windup as PIDClipController). Pushes hard
    both ways.
    """

    kp: float = 1.0
    ki: float = 0.1
    limit: float = 0.8
    integral: float = 0.0
    knob: float = 0.0
    name: str = "adv_balance"

    def update(self, measured: float, target: float | None) -> float:
        if target is None:
            return self.knob
        error = (target - measured) / target
        raw = self.kp * error + self.ki * (self.integral + error)
        if abs(raw) <= self.limit or (raw > 0) != (error > 0):
            self.integral += error
        self.knob = min(max(self.kp * error + self.ki * self.integral, -self.limit), self.limit)
        return self.knob


CONTROLLERS = {"pid": PIDController, "pid-entropy": pid_on_entropy_coef,
               "skywork": SkyworkController, "balance": BalanceController}


def make_controller(name: str, **overrides):
    """A controller by name (see CONTROLLERS), its defaults overridden by keyword."""
    if name not in CONTROLLERS:
        raise ValueError(f"controller: unknown name {name!r}; choose one of {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name](**overrides)


def loss_arguments(knob_name: str, knob: float) -> dict[str, float]:
    """The keyword arguments of `loss.policy_loss` that a controller's knob sets (the others keep
    their configured values): the one way a controller reaches the loss.

    >>> loss_arguments("clip_high", 0.31), loss_arguments("adv_balance", 0.25)
    ({'clip_high': 0.31}, {'pos_weight': 0.75, 'neg_weight': 1.25})
    """
    if knob_name in ("clip_high", "entropy_coef"):
        return {knob_name: knob}
    if knob_name == "adv_balance":  # w+ = 1 - b, w- = 1 + b (BalanceController)
        return {"pos_weight": 1 - knob, "neg_weight": 1 + knob}
    raise ValueError(f"unknown knob {knob_name!r}: clip_high, entropy_coef or adv_balance")


# ----------------------------------------------------------------------------- tracking quality
@dataclass
class TrackingError(_Stateful):
    """Mean relative tracking error |H - H*| / H* per phase, over the controlled steps.

    >>> t = TrackingError()
    >>> t.add(0.9, 1.0, "stable"), t.add(0.5, 0.4, "anneal")
    (0.1, 0.25)
    >>> t.summary()
    {'stable': 0.1, 'anneal': 0.25}
    """

    sums: dict = field(default_factory=lambda: {"stable": 0.0, "anneal": 0.0})
    counts: dict = field(default_factory=lambda: {"stable": 0, "anneal": 0})

    def add(self, measured: float, target: float | None, phase: str) -> float | None:
        """Record one step; returns its relative error (None when there is no target)."""
        if target is None:
            return None
        error = abs(measured - target) / target
        self.sums[phase] += error
        self.counts[phase] += 1
        return round(error, 6)

    def summary(self) -> dict:
        return {p: round(self.sums[p] / self.counts[p], 6) if self.counts[p] else None for p in self.sums}


# ----------------------------------------------------------------------------- a picture
def _draw(path: str = "schedules.png", total_steps: int = 200) -> None:
    examples = [EntropySchedule("constant", 1.0, 1.0, total_steps),
                EntropySchedule("linear", 1.0, 0.3, total_steps),
                EntropySchedule("cosine", 1.0, 0.3, total_steps),
                EntropySchedule("stable-anneal", 1.0, 0.3, total_steps, stable_frac=0.5),
                EntropySchedule("cyclic", 1.0, 0.3, total_steps, period=100),
                schedule_for_goal(1, total_steps, 1.0)]
    labels = ["constant", "linear", "cosine", "stable-anneal", "cyclic", "goal pass@1"]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        steps = range(0, total_steps + 1, total_steps // 10)
        print("step  " + "".join(f"{name:>15}" for name in labels))
        for step in steps:
            print(f"{step:>4}  " + "".join(f"{s.target(step):>15.3f}" for s in examples))
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for s, label in zip(examples, labels):
        ax.plot([s.target(t) for t in range(total_steps + 1)], label=label)
    ax.set(xlabel="step", ylabel="target entropy (x H0)", title="Entropy schedules")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    import sys

    _draw(*sys.argv[1:2])
