"""Entropy Scheduling inside TRL's GRPOTrainer: a callback that runs our schedule and controller.

    python trl_entropy_schedule.py                       # demo: the built-in testbed, pid-entropy
    python trl_entropy_schedule.py --controller pid      # the paper's knob, epsilon_high
    python trl_entropy_schedule.py --steps 60 --prompts_per_step 16   # a shorter run

TRL is an optional dependency (tested: trl 1.16.0 with transformers 5.24 and torch 2.13;
`pip install "trl>=1.16,<1.17"`). Copy this file next to entropy_schedule.py; a TRL user adds:

    from entropy_schedule import EntropySchedule, make_controller
    from trl_entropy_schedule import EntropyScheduleCallback
    args = GRPOConfig(..., logging_steps=1, entropy_coef=1e-8)  # nonzero: TRL builds the term
    trainer = GRPOTrainer(model, reward_funcs=my_reward, args=args, train_dataset=data)
    trainer.add_callback(EntropyScheduleCallback(trainer, EntropySchedule("stable-anneal"),
                                                 make_controller("pid-entropy")))
    trainer.train()

Where it plugs in (read from TRL 1.16's grpo_trainer.py):
  * GRPOTrainer keeps `epsilon_high` and `entropy_coef` as attributes and reads both every time it
    computes the loss: set between optimizer steps, they act from the next step on.
  * Whether the entropy term is in the loss at all is decided once, at construction
    (`entropy_coef != 0` or `use_adaptive_entropy`). So the entropy-coefficient knob needs a
    trainer built with a nonzero `entropy_coef` (any value: the callback sets the coefficient
    before the first step); the callback fails at once, naming that fix, otherwise.
  * TRL logs the masked mean token entropy of each optimizer step's micro-batches as `entropy`
    (all-reduced over ranks). With `logging_steps=1` every optimizer step is logged, and `on_log`
    receives it after the step and before the next one. That is the only hook that has the
    entropy; callbacks are handed the model and optimizer, not the trainer, so the callback is built
    with the trainer and added with `trainer.add_callback` (a documented transformers API).
  * `on_log` hands one `logs` dict to the callbacks in their list order, and the reporters
    (TensorBoard, W&B, the printer) come before any added callback. So when training begins the
    callback moves itself to the front of the trainer's list: the target, knob and tracking error
    it writes into `logs` then reach every reporter, and the trainer's log history, at that step.

One optimizer step s, in the callback's `on_log` (schedule steps are optimizer steps; the
schedule's `total_steps` is set to the trainer's `max_steps` when training begins):

    H_s  = logs["entropy"]                       the policy before step s's update, its mini-batch
    H*   = schedule.target(s)                    relative targets: H0 is step 0's entropy
    knob = controller.update(H_s, H*)            -> trainer.epsilon_high or trainer.entropy_coef

The difference from train.py: there the controller reads the old policy's entropy of the whole
rollout batch before the update and sets the knob for that same update; here TRL measures during
the update, so the knob set from step s acts on step s + 1, and a step is one optimizer step (one
mini-batch). Every rank runs its own copy of the controller on the same all-reduced entropy, so
all ranks set the same knob. Left out: the callback's state is not saved in TRL's checkpoints
(`callback.state_dict()` gives it; restore with `load_state_dict` before `trainer.train(resume)`).

The demo (`main`) trains GRPOTrainer on the built-in testbed: testbed.py's warm-started model,
its digit sums, reward.math_reward; DAPO's loss (token-mean, clip 0.2 / 0.28, no KL), a
stable-anneal schedule, and prints the tracking error per phase and a text plot, as train.py does.
Its defaults (400 optimizer steps: 100 generations of 64 prompts x 8, 4 updates each) took 7-8
minutes on 2 busy cores: `pid-entropy` tracked the schedule at 9.5% (stable) / 11.4% (anneal);
the paper's PID on epsilon_high opened it to 1.0 and stayed there while entropy fell as GRPO's
does (40% / 36%), as train.py finds on this testbed (docs/results.md).
"""
from __future__ import annotations

import warnings

from transformers import TrainerCallback

TESTED_TRL = ">=1.16,<1.17"  # the range this file was tested with
TRAINER_KNOBS = {"clip_high": "epsilon_high", "entropy_coef": "entropy_coef"}  # ours -> TRL's
CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # clipped to [1-e, 1+e_high]


def require_trl():
    """TRL, imported; a one-line error naming the install command when it is missing."""
    try:
        import trl
    except ImportError:
        raise ImportError(f"TRL is not installed (an optional dependency of this file): "
                          f"pip install 'trl{TESTED_TRL}'") from None
    from packaging.version import Version

    if not Version("1.16") <= Version(trl.__version__) < Version("1.17"):
        warnings.warn(f"trl {trl.__version__} is outside the tested range {TESTED_TRL}: check that "
                      "GRPOTrainer still reads epsilon_high / entropy_coef in its loss")
    return trl


class EntropyScheduleCallback(TrainerCallback):
    """Steers TRL's measured entropy toward `schedule` with `controller`, once per optimizer step.

    `controller` is one of entropy_schedule's (`make_controller`): "pid" moves the trainer's
    `epsilon_high` (the paper's knob), "pid-entropy" and "skywork" its `entropy_coef` (TRL's loss is
    L - entropy_coef * mean(H), our sign). "balance" has no counterpart in TRL's loss.
    `history` keeps one dict a step (step, entropy, target, knob, phase, track_err, reward).
    """

    def __init__(self, trainer, schedule, controller):
        require_trl()
        if controller.name not in TRAINER_KNOBS:
            raise ValueError(f"controller knob {controller.name!r} has no counterpart in TRL's "
                             "loss: use make_controller('pid') (epsilon_high), 'pid-entropy' or "
                             "'skywork' (entropy_coef)")
        self.attribute = TRAINER_KNOBS[controller.name]
        args = trainer.args
        if not hasattr(trainer, self.attribute):
            raise ValueError(f"{type(trainer).__name__} has no attribute {self.attribute!r}: pass "
                             f"TRL's GRPOTrainer (tested: trl{TESTED_TRL})")
        if args.logging_strategy != "steps" or args.logging_steps != 1:
            raise ValueError("the callback reads the entropy TRL logs each optimizer step: build "
                             "the trainer with GRPOConfig(logging_strategy='steps', "
                             "logging_steps=1)")
        if self.attribute == "entropy_coef":
            if args.use_adaptive_entropy:
                raise ValueError("TRL's own adaptive entropy would move the same coefficient: "
                                 "build the trainer with GRPOConfig(use_adaptive_entropy=False)")
            if args.entropy_coef == 0:
                raise ValueError("TRL decides at construction whether to compute the entropy term "
                                 "and skips it when entropy_coef is 0: build the trainer with "
                                 "GRPOConfig(entropy_coef=1e-8) (any nonzero value; the callback "
                                 "sets it)")
        elif args.loss_type not in CLIPPED_LOSSES:
            raise ValueError(f"loss_type {args.loss_type!r} has no clip-higher bound for the 'pid' "
                             f"controller to move: use one of {', '.join(CLIPPED_LOSSES)}")
        self.trainer, self.schedule, self.controller = trainer, schedule, controller
        from entropy_schedule import TrackingError

        self.tracker = TrackingError()
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0:
            self.schedule.total_steps = state.max_steps  # the schedule counts optimizer steps
        setattr(self.trainer, self.attribute, self.controller.knob)  # the controller's start
        # first in line, so that the keys on_log writes reach the reporters; a new list, not a
        # change to the one this event is iterating over
        handler = self.trainer.callback_handler
        handler.callbacks = [self] + [c for c in handler.callbacks if c is not self]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or logs.get("entropy") is None:  # eval logs `eval_entropy`; the summary none
            return
        step = state.global_step - 1  # the optimizer step that measured this entropy, from 0
        measured = float(logs["entropy"])
        if self.schedule.initial_entropy is None:  # relative targets: H0 is the first step's
            self.schedule.initial_entropy = measured
        target, phase = self.schedule.target(step), self.schedule.phase(step)
        knob = self.controller.update(measured, target)
        setattr(self.trainer, self.attribute, knob)  # read by the loss of the next optimizer step
        track_err = self.tracker.add(measured, target, phase)
        record = {"entropy/target": target, "entropy/knob": knob, "entropy/track_err": track_err}
        logs.update(record)  # the reporters come after this callback (on_train_begin): they log it
        history = getattr(state, "log_history", None)
        if history and history[-1].get("step") == state.global_step:  # trainer_state.json's copy
            history[-1].update(record)
        self.history.append({"step": step, "entropy": measured, "phase": phase,
                             "reward": logs.get("reward"), **record})

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "controller": self.controller.state_dict(),
                "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.controller.load_state_dict(state["controller"])
        self.tracker.load_state_dict(state["tracker"])


# ============================================================================ the demo
def trl_config(out_dir: str, steps: int, prompts_per_step: int, group_size: int,
               updates_per_step: int, micro_batch_size: int, lr: float, max_new_tokens: int,
               seed: int, **overrides):
    """GRPOConfig for train.py's step: `prompts_per_step` x `group_size` completions a generation,
    `updates_per_step` optimizer steps on disjoint mini-batches of it, `micro_batch_size`
    sequences a forward pass; DAPO's loss, no KL, constant lr, AdamW, fp32 on the CPU."""
    from trl import GRPOConfig

    completions = prompts_per_step * group_size
    if completions % (updates_per_step * micro_batch_size):
        raise ValueError(f"prompts_per_step x group_size ({completions}) must divide into "
                         f"updates_per_step ({updates_per_step}) x micro_batch_size "
                         f"({micro_batch_size}) sequences")
    accumulation = completions // updates_per_step // micro_batch_size
    return GRPOConfig(
        output_dir=out_dir, max_steps=steps, seed=seed, use_cpu=True, bf16=False, report_to="none",
        per_device_train_batch_size=micro_batch_size, gradient_accumulation_steps=accumulation,
        steps_per_generation=updates_per_step * accumulation, num_iterations=1,
        num_generations=group_size, max_completion_length=max_new_tokens, temperature=1.0,
        top_p=1.0,
        loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch", gradient_checkpointing=False, logging_steps=1,
        save_strategy="no", dataloader_num_workers=0, disable_tqdm=True, **overrides)


def testbed_reward(completions, answer, **kwargs) -> list[float]:
    """reward.math_reward in TRL's reward-function form (dataset columns arrive as keywords)."""
    from reward import math_reward

    return [math_reward(text, reference) for text, reference in zip(completions, answer)]


def build_trainer(model_path: str, cfg, callbacks=(), num_problems: int = 2000):
    """GRPOTrainer on the built-in task: testbed.py's problems, the model and tokenizer at
    `model_path`, reward.math_reward."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from testbed import arithmetic_problems

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    problems = arithmetic_problems(num_problems, seed=0)  # train.py's training set
    data = Dataset.from_list([{"prompt": p["prompt"], "answer": p["answer"]} for p in problems])
    return GRPOTrainer(model=model, reward_funcs=testbed_reward, args=cfg, train_dataset=data,
                       processing_class=tokenizer, callbacks=list(callbacks))


def main(argv: list[str] | None = None) -> dict:
    import argparse
    import json
    import os
    import time

    parser = argparse.ArgumentParser(
        description="Entropy Scheduling inside TRL's GRPOTrainer, on the built-in testbed")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (TRL's max_steps)")
    parser.add_argument("--prompts_per_step", type=int, default=64, help="prompts a generation")
    parser.add_argument("--group_size", type=int, default=8, help="completions a prompt")
    parser.add_argument("--updates_per_step", type=int, default=4,
                        help="optimizer steps a generation (disjoint mini-batches, as train.py)")
    parser.add_argument("--micro_batch_size", type=int, default=32, help="sequences a forward pass")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (constant)")
    parser.add_argument("--controller", default="pid-entropy",
                        choices=("pid-entropy", "pid", "skywork"),
                        help="pid-entropy: entropy_coef; pid: epsilon_high (the paper's knob)")
    parser.add_argument("--stable_frac", type=float, default=0.5, help="share of the run at H0")
    parser.add_argument("--end_ratio", type=float, default=0.3, help="anneal to this share of H0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm_start_steps", type=int, default=600, help="of the base model")
    parser.add_argument("--out_dir", default="runs/trl_demo")
    opts = parser.parse_args(argv)
    require_trl()
    import torch
    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    from entropy_schedule import EntropySchedule, make_controller
    from testbed import MAX_NEW_TOKENS, build_base_model
    from train import text_plot  # the demo's plots only; the callback needs nothing from train.py

    if "OMP_NUM_THREADS" not in os.environ:  # 0.64M parameters gain nothing from more threads
        torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # the demo prints its own progress
    base = os.path.join(opts.out_dir, "base_model")
    if not os.path.exists(base):
        build_base_model(base, opts.seed, opts.warm_start_steps)
    cfg = trl_config(opts.out_dir, opts.steps, opts.prompts_per_step, opts.group_size,
                     opts.updates_per_step, opts.micro_batch_size, opts.lr, MAX_NEW_TOKENS,
                     opts.seed, entropy_coef=1e-8 if opts.controller != "pid" else 0.0)
    trainer = build_trainer(base, cfg)
    for quiet in (ProgressCallback, PrinterCallback):  # one line a step from TRL: too many here
        trainer.remove_callback(quiet)
    schedule = EntropySchedule("stable-anneal", total_steps=opts.steps,
                               stable_frac=opts.stable_frac, end_ratio=opts.end_ratio)
    callback = EntropyScheduleCallback(trainer, schedule, make_controller(opts.controller))
    trainer.add_callback(callback)
    trainer.add_callback(_Report(callback, every=max(1, opts.steps // 10)))
    print(f"TRL GRPOTrainer on the built-in testbed: {opts.steps} optimizer steps, "
          f"{opts.prompts_per_step} prompts x {opts.group_size} a generation, "
          f"{opts.updates_per_step} updates each; stable-anneal, controller {opts.controller} on "
          f"trainer.{callback.attribute}")
    started = time.time()
    trainer.train()
    rows = callback.history
    rewards = [r["reward"] for r in rows if r["reward"] is not None]
    tenth = max(1, len(rewards) // 10)
    summary = {"tracking_error": callback.tracker.summary(),
               "H0": round(schedule.initial_entropy, 4),
               "final_entropy": round(rows[-1]["entropy"], 4),
               "final_target": round(rows[-1]["entropy/target"], 4),
               "reward_first_10%": round(sum(rewards[:tenth]) / tenth, 3),
               "reward_last_10%": round(sum(rewards[-tenth:]) / tenth, 3),
               "wall_s": round(time.time() - started, 1)}
    print(f"done: {json.dumps(summary)}")
    print(text_plot({"-": [r["entropy/target"] for r in rows], "*": [r["entropy"] for r in rows]},
                    "entropy (*) and its target (-), nats"))
    print(text_plot({"*": [r["entropy/knob"] for r in rows]},
                    f"knob: trainer.{callback.attribute}"))
    print(text_plot({"*": rewards}, "mean reward of each generation (*)"))
    return summary


class _Report(TrainerCallback):
    """One progress line every `every` optimizer steps (the demo removes TRL's per-step lines)."""

    def __init__(self, callback: EntropyScheduleCallback, every: int):
        self.callback, self.every = callback, every

    def on_log(self, args, state, control, logs=None, **kwargs):
        rows = self.callback.history
        if logs and "entropy" in logs and rows and (rows[-1]["step"] + 1) % self.every == 0:
            rewards = [r["reward"] for r in rows if r["reward"] is not None]  # one a generation
            row = rows[-1]
            print(f"step {row['step'] + 1:>4}/{state.max_steps}  H={row['entropy']:.3f}  "
                  f"target={row['entropy/target']:.3f}  knob={row['entropy/knob']:+.3f}  "
                  f"reward={rewards[-1] if rewards else float('nan'):.2f}  phase={row['phase']}",
                  flush=True)


if __name__ == "__main__":
    main()
