"""A two-phase curriculum that follows the entropy schedule's phases.

The Entropy Scheduling paper observes that the stable-entropy and the annealing phases learn
differently, and feeds each phase its own data. It does not publish the mapping, so here it is a
config choice, measured by benchmarks/compare_schedules.py:

  hard-first  stable phase -> the harder half, anneal -> the easier half.
              Why it could win: while entropy is high the policy explores, and only hard prompts
              (solved sometimes, not always) give a reward signal worth exploring for; once entropy
              anneals the policy sharpens, and half-solved prompts consolidate into pass@1.
  easy-first  the reverse, the classic curriculum. Why it could win: a policy that cannot yet solve
              hard prompts gets all-zero groups there (no gradient); it should first learn the
              basics, then spend the sharpening phase where pass@1 is still low.
  off         uniform over all prompts (no pools, no down-weighting).

Difficulty of prompt i, in [0, 1]:
  * a prior from the data set's own labels when it has them (MATH levels 1-5, the built-in task's
    number of terms), scaled to [0, 1]; 0.5 when it has none;
  * replaced, once the prompt has been sampled, by an exponential moving average of its failure
    rate 1 - (correct / group_size), which the rollouts measure for free.
Prompts whose average says "always solved" or "never solved" carry no GRPO signal (every
completion gets the same reward, so zero advantage), so their sampling weight is cut to
`saturated_weight`, the soft version of DAPO's dynamic sampling.

Sampling is weighted without replacement (Efraimidis-Spirakis keys u^(1/w)), deterministic given the
seed; the whole state (averages, RNG) goes through state_dict / load_state_dict.
Left out: more than two pools, and difficulty from a judge model. Two pools mirror the paper's two
phases, and pass rates come free with every GRPO group.

Copyable alone: standard library only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

ORDERS = ("off", "hard-first", "easy-first")


@dataclass
class TwoPhaseCurriculum:
    """Samples prompt indices for a step; `phase` comes from EntropySchedule.phase(step).

    >>> c = TwoPhaseCurriculum(levels=[1, 1, 5, 5], order="hard-first", seed=0)
    >>> sorted(c.sample(2, phase="stable")), sorted(c.sample(2, phase="anneal"))
    ([2, 3], [0, 1])
    """

    levels: list  # one label per prompt (int or None)
    order: str = "hard-first"
    seed: int = 0
    ema: float = 0.7  # weight of the old estimate in the moving average
    saturated_weight: float = 0.1  # sampling weight of prompts always / never solved
    in_pool_weight: float = 1.0  # weight of a prompt in the phase's pool ...
    out_pool_weight: float = 0.0  # ... and outside it (0: the pools are strict)
    fail_rate: dict = field(default_factory=dict)  # prompt index -> EMA of its failure rate

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"curriculum order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        known = [lv for lv in self.levels if lv is not None]
        lo, hi = (min(known), max(known)) if known else (0, 0)
        self.prior = [0.5 if lv is None or hi == lo else (lv - lo) / (hi - lo) for lv in self.levels]
        self._rng = random.Random(self.seed)

    def difficulty(self, i: int) -> float:
        """Measured failure rate once seen, else the label prior."""
        return self.fail_rate.get(i, self.prior[i])

    def weights(self, phase: str) -> list[float]:
        """Sampling weight of every prompt in this phase."""
        n = len(self.levels)
        if self.order == "off":  # uniform: a baseline gets no curriculum effect at all
            return [1.0] * n
        ranked = sorted(range(n), key=lambda i: (self.difficulty(i), i))
        harder_half = set(ranked[n // 2 :])
        want_hard = (phase == "stable") == (self.order == "hard-first")
        in_pool = [(i in harder_half) == want_hard for i in range(n)]
        weights = []
        for i in range(n):
            w = self.in_pool_weight if in_pool[i] else self.out_pool_weight
            rate = self.fail_rate.get(i)
            if rate is not None and (rate < 0.01 or rate > 0.99):
                w *= self.saturated_weight
            weights.append(w)
        return weights

    def sample(self, n: int, phase: str) -> list[int]:
        """n distinct prompt indices, drawn by weight; when fewer than n prompts have a weight, all
        of those, and the rest uniformly from the others."""
        weights = self.weights(phase)
        keys = [(self._rng.random() ** (1.0 / w), i) for i, w in enumerate(weights) if w > 0]
        chosen = [i for _, i in sorted(keys, reverse=True)[:n]]
        if len(chosen) < n:  # the pool is smaller than the batch
            others = [i for i, w in enumerate(weights) if w <= 0]
            chosen += self._rng.sample(others, min(n - len(chosen), len(others)))
        return chosen

    def update(self, indices: list[int], pass_rates: list[float]) -> None:
        """Fold this step's measured pass rates (correct / group_size) into the averages."""
        for i, rate in zip(indices, pass_rates):
            fail = 1.0 - float(rate)
            old = self.fail_rate.get(i)
            self.fail_rate[i] = fail if old is None else self.ema * old + (1 - self.ema) * fail

    def stats(self) -> dict:
        seen = list(self.fail_rate.values())
        return {"curriculum/seen": len(seen),
                "curriculum/mean_fail_rate": sum(seen) / len(seen) if seen else None}

    def state_dict(self) -> dict:
        return {"fail_rate": dict(self.fail_rate), "rng_state": self._rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.fail_rate = {int(k): v for k, v in state["fail_rate"].items()}
        version, internal, gauss = state["rng_state"]
        self._rng.setstate((version, tuple(internal), gauss))
