"""End-to-end: train.py as a user runs it, on a tiny budget: as a subprocess where the command line,
exit codes, torchrun or signals are under test, else train.main in this process (the same run,
without a start of Python, torch and transformers of its own: ~5 s of CPU each)."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--prompts_per_step", "8", "--group_size", "4", "--eval_prompts", "8", "--eval_n", "4",
        "--eval_k", "1,4", "--warm_start_steps", "25"]
REQUIRED_KEYS = {"step", "reward/mean", "entropy", "entropy/target", "entropy/knob", "loss/policy",
                 "loss/clipfrac", "loss/approx_kl", "grad_norm", "response_length/mean",
                 "groups/zero_std_frac", "curriculum/phase", "time/step_s", "time/rollout_s",
                 "time/update_s", "entropy/track_err", "entropy/track_err_stable",
                 "entropy/track_err_anneal"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(args, launcher=(sys.executable,), check=True, timeout=300, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([*launcher, os.path.join(ROOT, "train.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def benchmark(name: str):
    """benchmarks/NAME.py, imported as a module."""
    import importlib

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def base_model(default_run):
    """The embedded default, end to end (conftest.py: `python train.py --steps 2` with TINY's sizes,
    a subprocess): warm start + 2 RL steps; its base model serves the rest."""
    return default_run / "runs" / "default"


@pytest.mark.slow
def test_default_run_writes_metrics_checkpoint_and_config(base_model):
    rows = metrics(base_model)
    assert [r["step"] for r in rows] == [0, 1]
    assert REQUIRED_KEYS <= set(rows[0])
    assert rows[0]["entropy"] > 0 and rows[0]["entropy/target"] == pytest.approx(rows[0]["entropy"])
    for r in rows:  # the old probability of the tokens clipped high: only p < 1 / (1 + 0.28) can be
        p = r["loss/clip_high_p"]
        assert (p is None) if r["loss/clipfrac_high"] == 0 else 0 < p < 1 / 1.28
    assert "eval/pass@1" in rows[0] and "eval/pass@4" in rows[-1]
    assert json.load(open(base_model / "config.json"))["loss_agg"] == "token-mean"
    with open(base_model / "base_model" / "warm_start.json") as f:
        assert json.load(f)["steps"] <= 25
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = base_model / "checkpoints" / "step_000002"
    model = AutoModelForCausalLM.from_pretrained(ckpt)  # a plain HF directory
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert AutoTokenizer.from_pretrained(ckpt)("1+2=").input_ids
    assert (base_model / "checkpoints" / "latest").read_text() == "step_000002"
    samples = [json.loads(line) for line in open(base_model / "samples.jsonl")]  # what the model wrote
    assert [(s["step"], s["index"]) for s in samples] == [(0, i) for i in range(4)] + [(2, i) for i in range(4)]
    assert all(s["reward"] == float(s["extracted"] == s["answer"]) for s in samples)  # plain numbers here
    config = json.load(open(base_model / "config.json"))  # the built-in model keeps its tuned values
    assert (config["lr"], config["lr_warmup_steps"], config["updates_per_step"]) == (2e-4, 0, 4)


def test_evaluation_has_a_random_stream_of_its_own(base_model, tmp_path, one_thread):
    """The same model gives the same held-out numbers whatever ran before (the default run's step 0
    came after its warm start; these runs load its base model), and evaluating leaves training's
    random streams alone: --eval_every 2 logs the same training steps as --eval_every 0. Both runs
    record the verifier that scored them."""
    args = ["--model", str(base_model / "base_model"), "--steps", "3", "--save_every", "0", *TINY]
    train.main([*args, "--out_dir", str(tmp_path / "every2"), "--eval_every", "2"])
    train.main([*args, "--out_dir", str(tmp_path / "ends"), "--eval_every", "0"])
    default, every2, ends = metrics(base_model), metrics(tmp_path / "every2"), metrics(tmp_path / "ends")

    def evals(row):
        return {key: value for key, value in row.items() if key.startswith("eval/")}

    assert evals(every2[0]) == evals(ends[0]) == evals(default[0])  # step 0
    assert "eval/pass@1" in every2[1] and "eval/pass@1" not in ends[1]  # step 2's evaluation
    for a, b in zip(every2, ends):
        trained = sorted(key for key in a if not key.startswith(("time/", "eval/")))
        assert [a[key] for key in trained] == [b[key] for key in trained], a["step"]
    assert evals(every2[2]) == evals(ends[2])  # step 3, after the same training
    scored_by = train.make_verifier("auto")[1]
    for name in ("config.json", "summary.json"):
        assert json.load(open(tmp_path / "ends" / name))["verifier_used"] == scored_by
    again = train.parse_config(["--config", str(tmp_path / "ends" / "config.json")])  # still a config
    assert again.eval_every == 0 and again.verifier == "auto"


def test_curriculum_sees_the_groups_dynamic_sampling_drops(base_model, tmp_path, one_thread, monkeypatch):
    """Prompts every completion solves (or none does) carry no gradient, so dynamic sampling drops
    their groups; the curriculum must still learn their pass rate (1 or 0) to demote them."""
    data = tmp_path / "data.jsonl"
    kinds = ["always"] * 4 + ["never"] * 4 + ["mixed"] * 8
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "answer": kind}) + "\n"
                            for i, kind in enumerate(kinds)))
    (tmp_path / "eval.jsonl").write_text('{"prompt": "1+2=", "answer": "3"}\n')
    cfg = train.parse_config(["--model", str(base_model / "base_model"), "--dataset", str(data),
                              "--eval_dataset", str(tmp_path / "eval.jsonl"), "--out_dir", str(tmp_path / "run"),
                              "--curriculum", "two-phase", "--chat_template", "none",
                              "--system_prompt", "", *TINY]).resolved()

    def reward_fn(completion, answer):  # "mixed": about half right, so those groups have signal
        return {"always": 1.0, "never": 0.0}.get(answer, float(len(completion) % 2))

    generated = []

    def generate(model, tokenizer, prompts, *args, **kwargs):
        generated.extend(prompts)
        return train_generate(model, tokenizer, prompts, *args, **kwargs)

    train_generate = train.generate_rollouts
    monkeypatch.setattr(train, "generate_rollouts", generate)
    run, _ = train.setup(cfg, reward_fn, "test rule", 0, 1, torch.device("cpu"))
    train.rl_step(run, 0)
    index = {f"{i}+{i}=": i for i in range(len(kinds))}
    dropped = {index[p] for p in generated} - {i for i in range(8, 16)}
    assert dropped, "no always / never prompt was drawn"
    for i in {index[p] for p in generated}:
        assert i in run.curriculum.fail_rate
    assert all(run.curriculum.fail_rate[i] == (0.0 if kinds[i] == "always" else 1.0) for i in dropped)


@pytest.mark.parametrize("schedule, controller, loss", [("none", "pid", "grpo"),
                                                        ("constant", "skywork", "dr_grpo"),
                                                        ("cosine", "balance", "dapo")])
@pytest.mark.slow
def test_variants_run(base_model, tmp_path, one_thread, schedule, controller, loss):
    train.main(["--model", str(base_model / "base_model"), "--out_dir", str(tmp_path), "--steps", "2",
                "--schedule", schedule, "--controller", controller, "--loss", loss, "--curriculum",
                "two-phase", "--kl_coef", "0.01" if loss == "grpo" else "0", "--ppo_epochs",
                "2" if loss == "dapo" else "1", "--save_every", "0", *TINY])
    rows = metrics(tmp_path)
    assert len(rows) == 2 and REQUIRED_KEYS <= set(rows[-1])
    assert (rows[0]["entropy/target"] is None) == (schedule == "none")


@pytest.mark.slow
def test_torchrun_two_processes_real_default(tmp_path):
    """`torchrun --nproc_per_node=2 train.py` at the real default (dynamic sampling on, 128 held-out
    prompts x 16, the full warm start): it hung until killed before `synced_gpus=False` and the
    collective dynamic-sampling decision."""
    proc = run(["--out_dir", str(tmp_path), "--steps", "3", "--save_every", "2"], launcher=TORCHRUN, timeout=600)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["tokens"] > 0 for r in rows)
    assert max(r["sampling/rounds"] for r in rows) >= 1 and "eval/pass@16" in rows[-1]
    assert all(r["rollout/logp_mismatch"] < 1e-4 for r in rows)  # fp32 on a CPU: sampler == trainer
    assert "2 rank(s)" in proc.stdout
    assert "entropy (*) and its target (-), nats" in proc.stdout and "mean reward (*)" in proc.stdout
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "step_000003")
    assert model.config.architectures == ["Qwen2ForCausalLM"]


@pytest.mark.slow
def test_ranks_whose_work_differs_do_not_deadlock(tmp_path):
    """Rank 1 needs every dynamic-sampling round, rank 0 only the first; held-out sets of 3 and 1
    prompts over 2 ranks. Each rank calls `generate` a different number of times."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "uneven.json"
    subprocess.run([*TORCHRUN, os.path.join(ROOT, "tests", "dist_uneven.py"), str(out)], check=True, env=env,
                   capture_output=True, timeout=180)
    rank0, rank1 = json.loads(out.read_text())
    assert rank0["rounds"] == rank1["rounds"] == 3  # decided together
    assert rank0["generate_calls"] == [4] and rank1["generate_calls"] == [4, 4, 4]  # a full rank idles
    assert rank0["unfilled"] == 0 and rank1["unfilled"] == 4 and rank0["rows"] == rank1["rows"] == 16
    for rank in (rank0, rank1):
        assert rank["eval_3"]["correct"] == [4, 4, 4] and rank["eval_1"]["correct"] == [4]
        assert rank["eval_1"]["pass@1"] == 1.0


def test_every_tensor_of_a_step_follows_the_models_device(monkeypatch):
    """On a GPU a tensor built without `device=` lands on the CPU and the first update fails. Here
    the default device is `meta` while the model sits on the CPU: any such tensor in steps 3-7
    (rewards, advantages, old log-probs, loss, update) fails the same way. Only the tokenizer and
    HF's own `generate` run with the default device put back."""
    import random

    import rollout
    from loss import group_advantages

    from tiny import tiny_policy

    model, tok = tiny_policy()
    problems = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    cfg = train.Config(prompts_per_step=4, group_size=4, max_new_tokens=3, updates_per_step=2).resolved()

    def generate_on_cpu(*args, **kwargs):
        torch.set_default_device(None)
        try:
            return rollout.generate_rollouts(*args, **kwargs)
        finally:
            torch.set_default_device("meta")

    monkeypatch.setattr(train, "generate_rollouts", generate_on_cpu)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.set_default_device("meta")
    try:
        rollouts, rewards, _, _ = train.collect_rollouts(
            model, tok, problems, [0, 1, 2, 3], cfg, random.Random(0),
            reward_fn=lambda completion, answer: float(len(completion) % 2))
        advantages = group_advantages(rewards, cfg.group_size)
        old_logprobs, _ = rollout.policy_logprobs_and_entropy(model, rollouts, 8)
        stats = train.policy_update(model, optimizer, rollouts, old_logprobs, advantages, cfg,
                                    {"clip_high": 0.28}, torch.device("cpu"), 1)
    finally:
        torch.set_default_device(None)
    assert rewards.device.type == "cpu" and advantages.device.type == "cpu"
    assert stats["grad_norm"] > 0
    assert all(p.grad is None for p in model.parameters())  # freed right after optimizer.step()


def kill_after(args, launcher, out_dir, lines):
    """Start train.py, SIGKILL it (launcher and workers: the whole process group) once metrics.jsonl
    has `lines` lines; returns how many steps it had logged."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*launcher, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    path = out_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(metrics(out_dir))


def same_run(straight, resumed, from_step):
    """Every logged number of every step from `from_step` on is identical (wall times aside)."""
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    for a, b in zip(straight[from_step:], resumed[from_step:]):
        differ = {k: (a[k], b.get(k)) for k in a if not k.startswith("time/") and a[k] != b.get(k)}
        assert not differ, f"step {a['step']}: {differ}"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_killed_and_resumed_run_equals_the_straight_run(base_model, tmp_path, launcher, one_thread):
    """SIGKILL mid-run, --resume: the same prompts, samples and updates as a run never stopped.
    Default config (dynamic sampling on: its refills draw from their own generator). The straight
    run of one process runs in this one, on one thread like the others."""
    launch = (sys.executable,) if launcher == "python" else TORCHRUN
    common = ["--model", str(base_model / "base_model"), "--steps", "7", *TINY, "--eval_prompts", "4"]
    straight = [*common, "--out_dir", str(tmp_path / "straight"), "--save_every", "0"]
    if launcher == "python":
        train.main(straight)
    else:
        run(straight, launcher=launch)
    killed = tmp_path / "killed"
    args = [*common, "--out_dir", str(killed), "--save_every", "3"]
    logged = kill_after(args, launch, killed, lines=5)
    assert 5 <= logged < 7, "the run finished before it could be killed"
    run([*args, "--resume"], launcher=launch)
    straight, resumed = metrics(tmp_path / "straight"), metrics(killed)
    assert any(r["sampling/rounds"] > 1 for r in straight[3:])  # the refills were exercised
    same_run(straight, resumed, from_step=3)
    assert (killed / "checkpoints" / "latest").read_text() == "step_000007"
    assert not any(p.name.endswith(".tmp") for p in (killed / "checkpoints").iterdir())
    state = torch.load(killed / "checkpoints" / "step_000007" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 7 and state["schedule"]["total_steps"] == 7
    assert len(state["rng"]) == (1 if launcher == "python" else 2)


@pytest.mark.slow
def test_resume_on_another_number_of_ranks_says_so_and_goes_on(base_model, tmp_path, one_thread):
    args = ["--model", str(base_model / "base_model"), "--out_dir", str(tmp_path), *TINY, "--eval_prompts", "4"]
    train.main([*args, "--steps", "2"])  # 1 process (this one), checkpoint at step 2
    proc = run([*args, "--steps", "4", "--resume"], launcher=TORCHRUN)
    assert "was written by 1 rank(s) and resumes on 2" in proc.stdout
    assert [r["step"] for r in metrics(tmp_path)] == [0, 1, 2, 3]


@pytest.mark.parametrize("flags, message", [
    (["--group_size", "1"], "--group_size must be >= 2"),
    (["--schedule", "exponential"], "--schedule must be one of"),
    (["--entropy_start", "-0.5"], "--entropy_start must be > 0"),
    (["--loss", "ppo"], "--loss must be one of"),
    (["--eval_k", "1,64"], "--eval_k 1,64: each k must be in"),
    (["--prompts_per_step", "6", "--updates_per_step", "4"], "--updates_per_step 4 must divide"),
    (["--resume", "maybe"], "argument --resume: expected bool, got 'maybe'"),
    (["--lr", "fast"], "argument --lr: expected float, got 'fast'"),
])
def test_bad_config_fails_at_start_with_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:  # train.py's own start, in this process
        train.configure(["--out_dir", str(tmp_path), *flags], 0, 1)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_config_exits_2_from_the_command_line_without_a_traceback(tmp_path):
    proc = run(["--out_dir", str(tmp_path), "--group_size", "1"], check=False, timeout=60)
    assert proc.returncode == 2
    assert "--group_size must be >= 2" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_every_field_with_its_docstring():
    proc = run(["--help"], timeout=60)
    assert "--schedule SCHEDULE" in proc.stdout and "none | constant | linear" in proc.stdout
    assert all(f"--{f.name}" in proc.stdout for f in train.dataclasses.fields(train.Config))
    help_text = " ".join(proc.stdout.split())
    assert "(default: None)" not in help_text  # a None default says what fills it instead
    assert "None: 2e-4 on the built-in model, 1e-6 otherwise" in help_text


def test_batch_must_split_across_ranks():
    cfg = train.Config(prompts_per_step=8).resolved()
    with pytest.raises(train.ConfigError, match="must be a multiple of the number of ranks \\(3\\)"):
        train.validate(cfg, world_size=3)


def test_missing_dataset_field_names_file_and_line(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": "4"}\n')
    proc = run(["--out_dir", str(tmp_path), "--dataset", str(data)], check=False, timeout=60)
    assert proc.returncode == 2
    assert f"{data}: line 2: missing field 'prompt'" in proc.stderr


def test_held_out_set_of_a_file_is_a_seeded_sample(tmp_path):
    """--eval_prompts 10 of a file ordered by level: not its first 10 rows (all level 1), but the
    seeded sample eval_passk.py's --limit 10 takes too."""
    from data import HELD_OUT_SEED, load_problems

    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": "1", "level": 1 + (i >= 50)}) + "\n"
                            for i in range(100)))
    cfg = train.Config(dataset="arithmetic", eval_dataset=str(path), eval_prompts=10)
    _, held_out = train.load_data(cfg)
    assert held_out == load_problems(str(path), limit=10, sample_seed=HELD_OUT_SEED)
    assert {p["level"] for p in held_out} == {1, 2}


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 7, "lr": 0.001}))
    cfg = train.parse_config(["--config", str(path), "--lr", "0.002", "--resume", "--entropy_end", "none"])
    assert (cfg.steps, cfg.lr, cfg.resume, cfg.entropy_end) == (7, 0.002, True, None)
    path.write_text(json.dumps({"stepz": 7}))
    with pytest.raises(train.ConfigError, match="unknown fields \\['stepz'\\]"):
        train.parse_config(["--config", str(path)])


def goal_schedule(*flags, initial_entropy=1.0):
    cfg = train.parse_config(list(flags)).resolved()
    train.validate(cfg, world_size=1)
    schedule = train.make_schedule(cfg)
    schedule.initial_entropy = initial_entropy  # H0, as the first step measures it
    return cfg, schedule


def test_passk_goal_composes_with_the_entropy_flags():
    """--passk_goal 1 proposes (schedule_for_goal, u = 0): stable at 0.8 H0 for 30% of the run,
    then an anneal to 0.25 H0, i.e. to 0.25 / 0.8 = 0.3125 of the stable target. Flags override."""
    # --entropy_start is the stable target (not H0): 0.6 nats, the anneal to 0.3125 x 0.6 = 0.1875;
    # 100 steps, anneal from round(0.3 x 100) = 30, linear: step 65 is halfway, 0.6 - 0.4125 / 2
    _, s = goal_schedule("--passk_goal", "1", "--entropy_start", "0.6", "--steps", "100",
                         "--anneal_shape", "linear")
    assert [s.target(step) for step in (0, 29, 30, 44, 65, 100)] == pytest.approx(
        [0.6, 0.6, 0.6, 0.6 - 0.4125 * 14 / 70, 0.39375, 0.1875])
    # H0 = 1: start 0.8; a 10-step warm-up from H0 (step 5: 0.9); --stable_frac 0.5 of the 100
    # steps after it: the anneal starts at 60; --entropy_end 0.2; cosine halfway (step 85): 0.5
    cfg, s = goal_schedule("--passk_goal", "1", "--entropy_warmup_steps", "10", "--stable_frac",
                           "0.5", "--entropy_end", "0.2", "--steps", "110")
    assert cfg.stable_frac == 0.5 and s.anneal_start == 60
    assert [s.target(step) for step in (0, 5, 10, 59, 85, 110)] == pytest.approx(
        [1.0, 0.9, 0.8, 0.8, 0.5, 0.2])
    # nothing overridden: pass@100 (u = 1) holds 1.2 H0 for 80% of the run, anneals to 0.75 H0
    cfg, s = goal_schedule("--passk_goal", "100", "--steps", "100", initial_entropy=2.0)
    assert cfg.stable_frac == 0.8
    assert [s.target(step) for step in (0, 79, 100)] == pytest.approx([2.4, 2.4, 1.5])


def test_passk_goal_with_another_schedule_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.configure(["--out_dir", str(tmp_path), "--passk_goal", "1", "--schedule", "cosine"],
                        0, 1)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--passk_goal" in err and "--schedule" in err


@pytest.mark.slow
def test_objective_does_not_depend_on_ranks_or_micro_batches(tmp_path, one_thread, monkeypatch):
    """One SGD update on a fixed batch: 1 process vs 2 FSDP ranks, micro-batches of 8 vs 1 vs 3,
    for each loss aggregation mode. The 1-process runs run the script in this process."""
    import runpy

    script = os.path.join(ROOT, "tests", "dist_objective.py")
    for name, micro in [("one", "8"), ("micro", "1")]:
        monkeypatch.setattr(sys, "argv", [script, str(tmp_path / f"{name}.pt"), micro])
        runpy.run_path(script)
    subprocess.run([*TORCHRUN, script, str(tmp_path / "two.pt"), "3"], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=180)
    ones, micros, twos = (torch.load(tmp_path / f"{n}.pt") for n in ("one", "micro", "two"))
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)  # the same initial weights, to check that the update is not tiny
    initial = Qwen2ForCausalLM(Qwen2Config(vocab_size=20, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2,
                                           num_key_value_heads=2, max_position_embeddings=32,
                                           pad_token_id=0, eos_token_id=1)).state_dict()
    assert sorted(ones) == sorted(train.LOSS_AGG_MODES) == sorted(micros) == sorted(twos)
    losses = []
    for loss_agg in train.LOSS_AGG_MODES:
        one, micro, two = ones[loss_agg], micros[loss_agg], twos[loss_agg]
        update = max((one["params"][k] - initial[k]).abs().max().item() for k in initial)
        assert update > 1e-3, loss_agg  # a factor-of-2 scale error moves parameters by >= ~1e-3
        for other in (micro, two):
            diff = max((one["params"][k] - other["params"][k]).abs().max().item() for k in initial)
            assert diff < 1e-5, loss_agg
            assert other["loss"] == pytest.approx(one["loss"], rel=1e-5), loss_agg
        losses.append(one["loss"])
    assert len(set(losses)) == 3  # the three modes are three different objectives


def test_nonfinite_gradient_skips_the_update_and_keeps_weights():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rollout import Rollouts, completion_mask

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=20, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=16, pad_token_id=0, eos_token_id=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    completion = torch.randint(2, 20, (4, 3))
    batch = Rollouts(torch.randint(2, 20, (4, 2)), completion, torch.ones(4, 2, dtype=torch.long),
                     completion_mask(completion, 1), [""] * 4)
    cfg = train.Config(prompts_per_step=2, group_size=2, updates_per_step=2).resolved()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    knobs = {"clip_high": 0.28}
    advantages = torch.tensor([1.0, float("nan"), 1.0, -1.0])  # poisons the first mini-batch only
    with pytest.warns(UserWarning, match="non-finite gradient norm"):
        stats = train.policy_update(model, optimizer, batch, torch.zeros(4, 3), advantages, cfg, knobs,
                                    torch.device("cpu"), 1)
    assert stats["nonfinite_skipped"] == 1
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the second update did happen


@pytest.fixture
def no_math_verify(tmp_path):
    """A PYTHONPATH on which `import math_verify` fails, as on a machine without the package."""
    stub = tmp_path / "hide" / "math_verify"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('hidden by a test')\n")
    return {"PYTHONPATH": str(tmp_path / "hide")}


@pytest.mark.slow
def test_first_line_says_which_verifier_scores(base_model, tmp_path, no_math_verify, capsys):
    args = ["--model", str(base_model / "base_model"), "--steps", "1", "--save_every", "0", *TINY]
    proc = run([*args, "--out_dir", str(tmp_path / "a"), "--verifier", "auto"], env=no_math_verify)
    assert proc.stdout.splitlines()[0] == "verifier: built-in rule (math-verify not installed)"
    train.configure([*args, "--out_dir", str(tmp_path / "b"), "--verifier", "builtin"], 0, 1)
    assert capsys.readouterr().out.splitlines()[0] == "verifier: built-in rule"


def test_math_verify_asked_for_but_missing_fails_at_start(tmp_path, no_math_verify):
    proc = run(["--out_dir", str(tmp_path), "--verifier", "math-verify"], check=False, timeout=60,
               env=no_math_verify)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--verifier math-verify" in proc.stderr and "pip install math-verify" in proc.stderr


@pytest.mark.slow
def test_warns_once_when_no_group_has_signal(base_model, tmp_path, one_thread, capsys):
    """A wrong --answer_field (here: every reference is 'x') gives zero reward to every sample.
    In this process, every warning recorded (Python's own filter would show a repeat only once)."""
    import warnings

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": "x"}) + "\n" for a in range(10)))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train.main(["--model", str(base_model / "base_model"), "--dataset", str(data), "--out_dir",
                    str(tmp_path / "r"), "--steps", "6", "--save_every", "0", "--chat_template", "none",
                    "--system_prompt", "", "--max_new_tokens", "4", *TINY])
    said = "\n".join(str(w.message) for w in seen)
    assert said.count("for 5 steps in a row every group's samples got the same reward") == 1
    assert "--answer_field" in said
    assert str(tmp_path / "r" / "samples.jsonl") in said  # where to see what the model wrote
    assert "sample: " in capsys.readouterr().out


@pytest.mark.slow
def test_rl_step_benchmark_runs_on_a_cpu(tmp_path, one_thread, capsys):
    """benchmarks/rl_step.py at its smallest: the same code path it measures at real sizes on GPUs.
    Its bookkeeping is checked against the arguments: 2 prompts x 2 = 4 sequences of exactly 8
    prompt tokens, at most 4 decoded positions each, the completion tokens in between, and every
    phase's tokens/s times its seconds giving back the tokens."""
    out = tmp_path / "rl_step.json"  # its main in this process (gpu_check.py --cpu runs the command)
    benchmark("rl_step").main(["--shape", "tiny", "--prompts", "2", "--group_size", "2", "--max_new_tokens",
                               "4", "--prompt_len", "8", "--updates_per_step", "1", "--out", str(out)])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.split()}
    assert {"rollout", "update", "step"} <= set(rows)
    result = json.loads(out.read_text())
    assert result["sequences"] == 4 and result["prompt_tokens"] == 4 * 8
    assert 1 <= result["completion_width"] <= 4
    assert result["decoded_positions"] == 4 * result["completion_width"]
    assert 4 <= result["completion_tokens"] <= result["decoded_positions"]
    phases = result["phases"]
    for name, phase in phases.items():
        assert phase["tokens"] == result["completion_tokens"], name
        assert phase["tokens_per_s"] * phase["seconds"] == pytest.approx(phase["tokens"]), name
    parts = ("rollout", "old log-probs", "update")
    assert phases["step"]["seconds"] == pytest.approx(sum(phases[p]["seconds"] for p in parts))
    assert float(rows["step"][2]) == result["completion_tokens"]  # the printed table says the same
    assert math.isfinite(result["update_stats"]["grad_norm"]) and result["update_stats"]["grad_norm"] > 0


@pytest.mark.slow
def test_compare_schedules_benchmark_end_to_end(tmp_path, monkeypatch):
    """benchmarks/compare_schedules.py at its smallest: base model, two arms, bootstrap table, fit.
    Its main runs in this process; the base model and the arms in subprocesses of their own."""
    monkeypatch.setattr(sys, "argv", ["compare_schedules.py", "--arms", "grpo,es", "--seeds", "0", "--steps", "2",
                                      "--eval_every", "2", "--eval_prompts", "4", "--out_dir", str(tmp_path),
                                      "--jobs", "1", "--", "--prompts_per_step", "8", "--group_size", "4",
                                      "--warm_start_steps", "25"])
    benchmark("compare_schedules").main()
    table = (tmp_path / "results.md").read_text()
    assert "| base model (before RL) |" in table and "| grpo |" in table and "| es |" in table
    assert "fitted R = -a exp(H) + b" in table and "over 4 checkpoints" in table  # 2 runs x (base, end)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [[c[0] for c in r["checkpoints"]] for r in results] == [[0, 2], [0, 2]]
    assert len(results[0]["correct"]) == 4
    # the table's numbers, worked out again from the runs' own files: with one seed the bootstrap
    # mean is the plain mean over prompts; pass@1 = c / 16, pass@16 = [c > 0]; 2 steps: the first
    # and last tenth of the steps are one step each
    for arm in ("grpo", "es"):
        rows = metrics(tmp_path / f"{arm}-seed0")
        correct = rows[-1]["eval/correct"]
        row = next(line for line in table.splitlines() if line.startswith(f"| {arm} |"))
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[1].startswith(f"{sum(c / 16 for c in correct) / 4:.3f} [")
        assert cells[3].startswith(f"{sum(c > 0 for c in correct) / 4:.3f} [")
        assert cells[4] == f"{rows[-1]['entropy']:.3f}"
        assert cells[7] == f"{rows[0]['reward/mean']:.2f} → {rows[-1]['reward/mean']:.2f}"


def test_regime_checks_apply_their_thresholds():
    """R1-R3 as regime.py states them, on hand-made run summaries at and around each threshold."""
    regime = benchmark("regime")
    run = lambda **kw: {"H0": 1.0, "H_end": 0.5, "reward_start": 0.2, "reward_end": 0.4,  # noqa: E731
                        "pass@1_base": 0.2, "pass@16_base": 0.8, "pass@1_end": 0.5,
                        "track_stable": 0.05, "track_anneal": 0.15, "prompts": 512, **kw}
    assert regime.check_r1(run(H_end=0.39))[0]
    assert not regime.check_r1(run(H_end=0.41))[0]  # 41% of H0
    assert not regime.check_r1(run(H_end=0.2, reward_end=0.1))[0]  # collapse, but reward fell
    assert regime.check_r2(run())[0]
    assert not regime.check_r2(run(**{"pass@16_base": 0.86}))[0]
    assert not regime.check_r2(run(**{"pass@1_base": 0.09}))[0]
    assert not regime.check_r2(run(**{"pass@1_base": 0.41}))[0]
    ok, text = regime.check_r3_knob(run(H_end=0.30), run(H_end=0.62))  # 0.32 of H0 apart, "+"
    assert ok and "sign +" in text
    ok, text = regime.check_r3_knob(run(H_end=0.62), run(H_end=0.30))
    assert ok and "sign -" in text
    assert not regime.check_r3_knob(run(H_end=0.30), run(H_end=0.59))[0]  # 29%
    assert regime.check_r3_pid(run(track_stable=0.10), run(track_stable=0.10, track_anneal=0.20))[0]
    assert not regime.check_r3_pid(run(track_stable=0.11), run())[0]
    assert not regime.check_r3_pid(run(), run(track_anneal=0.21))[0]
    assert not regime.check_r3_pid(run(), run(track_anneal=None))[0]  # the anneal never reached


@pytest.mark.slow
def test_regime_benchmark_end_to_end(tmp_path, capsys, monkeypatch):
    """benchmarks/regime.py at its smallest: one seed, R1 from a 2-step GRPO run, R2 from
    eval_passk.py on the base model. Its main runs in this process; the base model, the run and
    eval_passk.py in subprocesses of their own."""
    monkeypatch.setattr(sys, "argv", ["regime.py", "--seeds", "0", "--steps", "2", "--only", "r1", "r2",
                                      "--out_dir", str(tmp_path), "--jobs", "2", "--r2_prompts", "4", "--",
                                      "--prompts_per_step", "8", "--group_size", "4", "--warm_start_steps", "25",
                                      "--eval_prompts", "4"])
    benchmark("regime").main()
    stdout = capsys.readouterr().out
    assert "R1 collapse:" in stdout and "R2 headroom:" in stdout and "seed 0:" in stdout
    assert "4 held-out prompts x 16" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r.get("run") for r in results] == ["grpo", None] and results[1]["prompts"] == 4
    base_eval = json.loads((tmp_path / "seed0" / "base_eval_4.json").read_text())
    assert len(base_eval["per_problem"]) == 4 and base_eval["args"]["n"] == 16
    assert results[1]["pass@16_base"] == base_eval["summary"]["pass@16"]


@pytest.mark.slow
def test_entropy_noise_benchmark_reads_a_fixed_policy(tmp_path, one_thread, capsys, monkeypatch):
    """benchmarks/entropy_noise.py: with the output head zeroed every next-token distribution is
    uniform over the 15 tokens, so every batch reads log(15) nats exactly and the spread is 0."""
    from tiny import tiny_policy

    model, tok = tiny_policy()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(tmp_path / "uniform")
    tok.save_pretrained(tmp_path / "uniform")
    monkeypatch.setattr(sys, "argv", ["entropy_noise.py", "--model", str(tmp_path / "uniform"), "--prompts",
                                      "4", "8", "--batches", "3", "--", "--group_size", "2"])
    benchmark("entropy_noise").main()  # in this process
    stdout = capsys.readouterr().out
    rows = [line.split() for line in stdout.splitlines() if line.split() and line.split()[0] in ("4", "8")]
    assert [r[0] for r in rows] == ["4", "8"]
    for r in rows:
        assert float(r[1]) == pytest.approx(math.log(15), abs=1e-3) and float(r[2]) == 0.0 and float(r[3]) == 0.0


@pytest.mark.parametrize("flags", [["--tis_cap", "2", "--top_p", "0.8", "--cov_method", "clip-cov"],
                                   ["--cov_method", "kl-cov", "--cov_ratio", "0.01", "--lr_schedule", "cosine",
                                    "--lr_warmup_steps", "1"]])
@pytest.mark.slow
def test_loss_options_and_lr_schedule_run(base_model, tmp_path, one_thread, flags):
    train.main(["--model", str(base_model / "base_model"), "--out_dir", str(tmp_path), "--steps", "3",
                "--save_every", "0", *TINY, *flags])
    rows = metrics(tmp_path)
    restrained = [r["loss/cov_frac"] for r in rows]
    if "kl-cov" in flags:  # KL-Cov restrains at least one token every step
        assert all(frac > 0 for frac in restrained)
    else:  # Clip-Cov only tokens inside its covariance band: a step may have none
        assert any(frac > 0 for frac in restrained) and all(frac >= 0 for frac in restrained)
    if "--tis_cap" in flags:  # top-p renormalises what it keeps: the sampler's p >= the trainer's
        assert all(0 < r["rollout/is_weight"] <= 1 and r["rollout/logp_mismatch"] > 0.01 for r in rows)
    else:  # warm-up over 1 step, then a cosine from 2e-4 down to 10% at the last step
        assert [r["lr"] for r in rows] == pytest.approx([2e-4, 2e-4, 2e-5])


@pytest.mark.slow
def test_tensorboard_gets_the_numbers_of_metrics_jsonl(base_model, tmp_path, one_thread):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--model", str(base_model / "base_model"), "--steps", "2", "--save_every", "0", *TINY]
    train.main([*args, "--out_dir", str(tmp_path / "tb"), "--report_to", "tensorboard"])
    rows = metrics(tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    for key in ("entropy", "entropy/target", "reward/mean", "loss/clipfrac"):
        assert [e.value for e in events.Scalars(key)] == pytest.approx([r[key] for r in rows], rel=1e-6)


@pytest.mark.slow
def test_wandb_gets_the_numbers_of_metrics_jsonl(base_model, tmp_path):
    pytest.importorskip("wandb", reason="pip install wandb")
    args = ["--model", str(base_model / "base_model"), "--steps", "2", "--save_every", "0", *TINY]
    run([*args, "--out_dir", str(tmp_path / "wb"), "--report_to", "wandb"],
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    rows = metrics(tmp_path / "wb")
    logged = wandb_history(next((tmp_path / "wb" / "wandb").glob("offline-run-*/*.wandb")))
    assert [h["entropy"] for h in logged if "entropy" in h] == pytest.approx([r["entropy"] for r in rows])


def test_metrics_png_draws_entropy_target_reward_and_knob(tmp_path):
    """With matplotlib, the end of a run draws metrics.png: three panels, a step without a target
    (None) drawn as a gap."""
    pytest.importorskip("matplotlib", reason="pip install matplotlib")
    from PIL import Image

    rows = [{"step": s, "entropy": 1.0 - 0.1 * s, "entropy/target": None if s == 0 else 0.9,
             "reward/mean": 0.1 * s, "entropy/knob": 0.01 * s, "entropy/knob_name": "entropy_coef"}
            for s in range(4)]
    train.plot_metrics(rows, str(tmp_path / "metrics.png"))
    width, height = Image.open(tmp_path / "metrics.png").size
    assert (width, height) == (12 * 90, round(3.2 * 90))  # figsize x dpi


def wandb_history(path) -> list[dict]:
    """The history records of a W&B run file (LevelDB log format: 7-byte header, 32 KiB blocks of
    chunks, each chunk crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last))."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, pos = path.read_bytes(), [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4) and pending:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                records.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
            pending = b""
    return records


def test_a_reporter_package_that_is_missing_fails_at_start(tmp_path):
    stub = tmp_path / "hide" / "tensorboard"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('hidden by a test')\n")
    proc = run(["--out_dir", str(tmp_path / "r"), "--report_to", "tensorboard", "--steps", "1", *TINY],
               check=False, env={"PYTHONPATH": str(tmp_path / "hide")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "base_model").exists()  # it failed before building the model
    assert "--report_to tensorboard needs the tensorboard package; fix: pip install tensorboard" in proc.stderr


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(base_model, tmp_path):
    """trainer_state.pt is read with weights_only=True: a pickle that calls a function on load (here
    one that would write a file) is refused with one line, and the function never runs."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(base_model / "checkpoints", out / "checkpoints")
    marker = tmp_path / "pwned"
    ckpt = out / "checkpoints" / "step_000002"
    torch.save(Exploit(str(marker)), ckpt / "trainer_state.pt")
    proc = run(["--model", str(base_model / "base_model"), "--out_dir", str(out), "--steps", "4", "--resume",
                *TINY], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trainer_state.pt: refused to load" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()


class Exploit:
    """Unpickling this calls open(path, "w"): what a crafted file would do with os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_every_evaluation_is_logged_when_two_fall_on_step_0(base_model, tmp_path):
    """--eval_every 1 evaluates before step 0 and after it: both reach metrics.jsonl, each with the
    number of RL steps behind the policy it measured (eval/step), and the run still finishes."""
    out = tmp_path / "every1"
    train.main(["--model", str(base_model / "base_model"), "--steps", "2", "--save_every", "0",
                "--eval_every", "1", *TINY, "--out_dir", str(out)])
    rows = metrics(out)
    assert [(r["step"], r.get("eval/step")) for r in rows] == [(0, 0), (0, 1), (1, 2)]
    assert "entropy" not in rows[0] and "entropy" in rows[1]  # the start's own line, then step 0
    assert json.load(open(out / "summary.json"))["tracking_error"]
