"""Entropy Scheduling inside TRL's GRPOTrainer (trl_entropy_schedule.py); skipped without TRL, with
the command that installs it.

The knob values below are worked out by hand from the PID law of entropy_schedule.py,
knob = init + kp e + ki sum(e) with e = (H* - H) / H*.
"""
import json
import os
import statistics
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("trl", reason="pip install trl==1.16.0 (the release these tests were run with)")

from entropy_schedule import EntropySchedule, make_controller  # noqa: E402
from trl_entropy_schedule import EntropyScheduleCallback  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_trainer(**args):
    """What the callback touches of a GRPOTrainer: its args, the two knob attributes and the
    list of callbacks."""
    config = {"logging_strategy": "steps", "logging_steps": 1, "entropy_coef": 1e-8,
              "use_adaptive_entropy": False, "loss_type": "dapo", **args}
    return SimpleNamespace(args=SimpleNamespace(**config), epsilon_high=0.28,
                           entropy_coef=config["entropy_coef"],
                           callback_handler=SimpleNamespace(callbacks=[]))


def drive(callback, entropies, max_steps):
    """on_train_begin, then one on_log per optimizer step, as Trainer calls them; the knob after
    each step."""
    state = SimpleNamespace(global_step=0, max_steps=max_steps)
    callback.on_train_begin(None, state, None)
    knobs = []
    for measured in entropies:
        state.global_step += 1
        callback.on_log(None, state, None, logs={"loss": 0.0, "entropy": measured})
        knobs.append(getattr(callback.trainer, callback.attribute))
    return knobs


def test_pid_moves_epsilon_high_as_the_controller_says():
    trainer = fake_trainer()
    callback = EntropyScheduleCallback(trainer, EntropySchedule("constant"), make_controller("pid"))
    knobs = drive(callback, [1.0, 0.8, 1.1], max_steps=3)
    # H0 = 1.0 (the first step), target 1.0 throughout; kp 0.5, ki 0.05, init 0.28:
    # e = 0 -> 0.28; e = 0.2 -> 0.28 + 0.1 + 0.01; e = -0.1 (sum 0.1) -> 0.28 - 0.05 + 0.005
    assert knobs == pytest.approx([0.28, 0.39, 0.235])
    assert trainer.entropy_coef == 1e-8  # the other knob is left alone


def test_pid_entropy_moves_entropy_coef_along_a_stable_anneal_schedule():
    trainer = fake_trainer()
    schedule = EntropySchedule("stable-anneal", start=1.0, end=0.2, total_steps=100,
                               stable_frac=0.5, anneal_shape="linear")
    callback = EntropyScheduleCallback(trainer, schedule, make_controller("pid-entropy"))
    knobs = drive(callback, [1.0, 0.9, 0.8, 0.75], max_steps=4)
    # total_steps becomes max_steps = 4: targets 1.0, 1.0, 1.0 (anneal starts at 2), 0.6.
    # kp 1, ki 0.1, init 0: e = 0 -> 0; 0.1 -> 0.11; 0.2 (sum 0.3) -> 0.23;
    # -0.25 (sum 0.05) -> -0.245
    assert schedule.total_steps == 4
    targets = [row["entropy/target"] for row in callback.history]
    assert targets == pytest.approx([1.0, 1.0, 1.0, 0.6])
    assert knobs == pytest.approx([0.0, 0.11, 0.23, -0.245])
    assert trainer.epsilon_high == 0.28
    # stable: |0.9 - 1| / 1 and 0 -> 0.05; anneal: 0.2 and 0.15 / 0.6 = 0.25 -> 0.225
    assert callback.tracker.summary() == pytest.approx({"stable": 0.05, "anneal": 0.225})


def test_relative_targets_take_h0_from_the_first_step_and_other_logs_are_ignored():
    trainer = fake_trainer()
    schedule = EntropySchedule("constant", start_ratio=0.5)
    callback = EntropyScheduleCallback(trainer, schedule, make_controller("pid-entropy"))
    state = SimpleNamespace(global_step=0, max_steps=10)
    callback.on_train_begin(None, state, None)
    assert trainer.entropy_coef == 0.0  # the controller's start, not the construction value
    state.global_step = 1
    callback.on_log(None, state, None, logs={"eval_entropy": 3.0})  # an evaluation, not a step
    callback.on_log(None, state, None, logs={"train_runtime": 1.0})  # the end-of-training summary
    assert callback.history == [] and schedule.initial_entropy is None
    callback.on_log(None, state, None, logs={"entropy": 0.8})
    # H0 = 0.8, target 0.4, e = -1: -1 + 0.1 * -1 = -1.1, clamped to the floor -1
    assert schedule.initial_entropy == 0.8 and trainer.entropy_coef == -1.0


@pytest.mark.parametrize("controller, args, message", [
    ("pid-entropy", {"entropy_coef": 0.0}, "GRPOConfig(entropy_coef=1e-8)"),
    ("pid-entropy", {"use_adaptive_entropy": True}, "use_adaptive_entropy=False"),
    ("pid", {"logging_steps": 10}, "logging_steps=1"),
    ("pid", {"loss_type": "sapo"}, "no clip-higher bound"),
    ("balance", {}, "make_controller('pid')"),
])
def test_a_trainer_the_knob_cannot_reach_fails_at_once_naming_the_fix(controller, args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EntropyScheduleCallback(fake_trainer(**args), EntropySchedule("constant"),
                                make_controller(controller))


class Recorder:
    """Keeps every train log TRL emits (a plain TrainerCallback; added after the scheduler's)."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self
        self.logs = []

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "entropy" in logs:
                    outer.logs.append(dict(logs))

        self.callback = _Callback()


@pytest.fixture(scope="module")
def base_model(default_run):
    """The built-in model warm-started for 25 steps (seed 0): conftest.py's default run's."""
    return str(default_run / "runs" / "default" / "base_model")


@pytest.mark.slow
def test_trl_applies_the_coefficient_the_callback_set(base_model, tmp_path):
    """A real GRPOTrainer: TRL logs the entropy_coef its loss used at each optimizer step; it
    must be the callback's knob of the step before (the controller's start, 0.0, at the first)."""
    from trl_entropy_schedule import build_trainer, trl_config

    cfg = trl_config(str(tmp_path), steps=4, prompts_per_step=4, group_size=4, updates_per_step=2,
                     micro_batch_size=4, lr=2e-4, max_new_tokens=4, seed=0, entropy_coef=1e-8)
    trainer = build_trainer(base_model, cfg, num_problems=64)
    schedule = EntropySchedule("constant", start=3.0)  # far above H (~1.7 nats): the knob must rise
    callback = EntropyScheduleCallback(trainer, schedule, make_controller("pid-entropy"))
    recorder = Recorder()
    trainer.add_callback(callback)
    trainer.add_callback(recorder.callback)
    trainer.train()
    used = [log["entropy_coef"] for log in recorder.logs]
    set_by_callback = [row["entropy/knob"] for row in callback.history]
    assert len(used) == len(set_by_callback) == 4
    assert used == pytest.approx([0.0, *set_by_callback[:-1]])
    assert all(knob > 0 for knob in set_by_callback)  # entropy below target: a bonus


@pytest.mark.slow
def test_the_callbacks_metrics_reach_tensorboard_and_the_log_history(base_model, tmp_path):
    """A real GRPOTrainer reporting to TensorBoard, the callback added last as the module docstring
    says: the event file holds the target, knob and tracking error of every optimizer step (as
    TensorBoardCallback names them, train/...), equal to the callback's own record; so does the
    trainer's log history."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trl_entropy_schedule import build_trainer, trl_config

    cfg = trl_config(str(tmp_path), steps=4, prompts_per_step=4, group_size=4, updates_per_step=2,
                     micro_batch_size=4, lr=2e-4, max_new_tokens=4, seed=0, entropy_coef=1e-8)
    cfg.report_to = ["tensorboard"]
    trainer = build_trainer(base_model, cfg, num_problems=64)
    callback = EntropyScheduleCallback(trainer, EntropySchedule("constant", start=3.0),
                                       make_controller("pid-entropy"))
    trainer.add_callback(callback)
    trainer.train()
    events = EventAccumulator(str(next(tmp_path.glob("runs/*"))))
    events.Reload()
    history = [log for log in trainer.state.log_history if "entropy" in log]
    assert len(callback.history) == len(history) == 4
    for key in ("entropy/target", "entropy/knob", "entropy/track_err"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [1, 2, 3, 4]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in callback.history])
        assert [log[key] for log in history] == pytest.approx([row[key] for row in callback.history])


@pytest.mark.slow
@pytest.mark.parametrize("controller", ["pid-entropy", "pid"])
def test_demo_runs_end_to_end_and_reports_tracking_per_phase(base_model, tmp_path, controller, one_thread,
                                                             capsys):
    """The demo's main, in this process, as `python trl_entropy_schedule.py ...` runs it."""
    from trl_entropy_schedule import main

    out = tmp_path / "demo"
    os.makedirs(out)
    os.symlink(base_model, out / "base_model")  # the demo builds one only when it finds none
    main(["--steps", "8", "--prompts_per_step", "8", "--group_size", "4", "--updates_per_step", "2",
          "--micro_batch_size", "16", "--controller", controller, "--out_dir", str(out)])
    stdout = capsys.readouterr().out
    done = [line for line in stdout.splitlines() if line.startswith("done: ")]
    summary = json.loads(done[0][len("done: "):])
    assert set(summary["tracking_error"]) == {"stable", "anneal"}
    assert all(v is not None for v in summary["tracking_error"].values())
    assert f"trainer.{'epsilon_high' if controller == 'pid' else 'entropy_coef'}" in stdout
    assert "entropy (*) and its target (-)" in stdout


@pytest.mark.slow
def test_vs_trl_benchmark_quick(tmp_path, one_thread, capsys):
    """benchmarks/vs_trl.py --quick: both sides run, interleaved, and the report has every part.
    Its main runs in this process; each run, as always, in a process of its own."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import vs_trl

    vs_trl.main(["--quick", "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    for part in ("pair 0 ours", "pair 0 trl", "pair 1 trl", "pair 1 ours", "load average",
                 "| peak RSS, MB |", "throughput ours / TRL", "| step |", "learning curves"):
        assert part in out, part
    with open(tmp_path / "vs_trl.json") as f:
        runs = json.load(f)
    for side in ("ours", "trl"):  # 3 RL steps each, every phase timed on both clocks
        assert [len(run["steps"]) for run in runs[side]] == [3, 3]
        assert all(step[clock][phase] > 0 for run in runs[side] for step in run["steps"]
                   for clock in ("cpu", "wall")
                   for phase in ("generation", "old_logprobs", "update"))
        for run in runs[side]:  # a run's time is the sum of its steps' phases
            assert run["cpu_s"] == pytest.approx(sum(step["cpu"][phase] for step in run["steps"]
                                                     for phase in ("generation", "old_logprobs", "update")))
    # the report's throughput line is TRL's time over ours, pair by pair, from those files
    ratios = [trl["cpu_s"] / ours["cpu_s"] for ours, trl in zip(runs["ours"], runs["trl"])]
    assert f"pair by pair: median {statistics.median(ratios):.2f}x " \
           f"({', '.join(f'{r:.2f}' for r in ratios)})" in out
