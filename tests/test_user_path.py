"""A new user's path through README, offline: its commands run as written (a tiny run stands in
for the real one), a second run never destroys the first, training and evaluation format the same
prompts, and a run that cannot learn says why at its first step."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
import warnings

import pytest

import eval_passk
import rollout
import train
from test_real_models import data_file, llama_dir  # noqa: F401  (fixtures: a tiny Llama, a JSONL)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--prompts_per_step", "8", "--group_size", "4", "--eval_prompts", "8", "--eval_n", "4",
        "--eval_k", "1,4", "--warm_start_steps", "25"]
FAST = ["--verifier", "builtin"]  # math-verify's import is slower than these runs


def files_of(directory):
    """{relative path: bytes} of every file under `directory`."""
    out = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


@pytest.fixture(scope="module")
def runs(default_run):
    """README's first command at a tiny size: `python train.py` into runs/default, from a working
    directory of its own (the paths below are the ones README prints): conftest.py's default_run."""
    return default_run


# ------------------------------------------------------------------- model paths users can pass
@pytest.mark.slow
def test_readme_and_docstring_eval_commands_run_on_checkpoints_latest(runs, tmp_path, capsys,
                                                                       monkeypatch):
    """eval_passk.py's docstring command as written, and README's (one process instead of 8, the
    built-in task instead of MATH, 4 problems), on a run's checkpoints/latest; and every
    eval_passk.py command of README evaluates what a train.py command beside it writes."""
    docstring = next(line.strip() for line in eval_passk.__doc__.splitlines()
                     if line.strip().startswith("python eval_passk.py --model"))
    assert "runs/default/checkpoints/latest" in docstring
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read().replace("\\\n", " "), flags=re.S)
    evals = 0
    for block in blocks:
        out_dirs = re.findall(r"train\.py .*--out_dir (\S+)", block)
        for model in re.findall(r"eval_passk\.py --model (\S+)", block):
            assert model in [f"{out_dir}/checkpoints/latest" for out_dir in out_dirs], model
            evals += 1
    assert evals == 2
    eval_cmd = re.search(r"torchrun [^\n]*eval_passk\.py[^\n]*", "".join(blocks)).group(0)
    out_dir = re.search(r"--model (\S+)/checkpoints/latest", eval_cmd).group(1)
    os.symlink(os.path.join(runs, "runs", "default"), os.path.join(runs, out_dir))
    readme_eval = (eval_cmd.split("eval_passk.py", 1)[1].replace("--dataset math", "--dataset arithmetic")
                   .replace("--limit 500", "--limit 4").replace("results.json", str(tmp_path / "r.json")))
    monkeypatch.chdir(runs)  # README's paths are relative to where the user runs the commands
    for command in (docstring.split("eval_passk.py", 1)[1] + " --limit 4", readme_eval):
        result = eval_passk.main(shlex.split(command))
        assert "checkpoints/step_000002)" in capsys.readouterr().out
        assert 0 <= result["pass@1"] <= result["pass@16"] <= 1
    assert json.load(open(tmp_path / "r.json"))["summary"]["n"] == 16


def printed_commands(text: str, script: str) -> list[list[str]]:
    """The arguments of every `python|torchrun ... SCRIPT ...` line in `text` (continuations
    joined, comments dropped), in order; lines with a `...` placeholder are left out."""
    commands = []
    lines = text.replace("\\\\\n", " ").replace("\\\n", " ").replace("&&", "\n").splitlines()
    for line in lines:
        words = shlex.split(line.split("#")[0]) if f" {script} " in f" {line} " else []
        if words and words[0] in ("python", "torchrun") and "..." not in words:
            commands.append(words[words.index(script) + 1:])
    return commands


def test_every_train_command_of_the_docstring_and_readme_starts_after_the_ones_before(tmp_path,
                                                                                     monkeypatch):
    """Run one after another as printed, each train.py command passes start-up: its flags are
    valid, and no command writes into a directory that one printed before it already holds."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = "\n".join(re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S))
    monkeypatch.chdir(tmp_path)
    for text in (train.__doc__, readme):
        commands = printed_commands(text, "train.py")
        assert len(commands) >= 3
        out_dirs = []
        for args in commands:
            cfg, _, _ = train.configure([*args, *FAST], 0, 1)  # exits (2) on a refusal
            os.makedirs(cfg.out_dir, exist_ok=True)
            open(os.path.join(cfg.out_dir, "metrics.jsonl"), "w").close()  # as if it had run
            out_dirs.append(cfg.out_dir)
        for args in printed_commands(text, "eval_passk.py"):  # each evaluates a run printed above
            model = args[args.index("--model") + 1]
            assert model in [f"{out_dir}/checkpoints/latest" for out_dir in out_dirs], model
        shutil.rmtree(tmp_path / "runs")


def test_train_reads_checkpoints_latest_as_the_step_it_names(tmp_path):
    """train.py --model runs/X/checkpoints/latest: the step_N/ it names, read before the defaults
    are chosen (a checkpoint of the built-in model keeps the built-in model's tuned values)."""
    step = tmp_path / "runs" / "x" / "checkpoints" / "step_000002"
    step.mkdir(parents=True)
    (step / "config.json").write_text(json.dumps({"es_testbed": "digit-sum"}))
    (step.parent / "latest").write_text("step_000002\n")
    cfg, _, _ = train.configure(["--model", str(step.parent / "latest"), "--out_dir",
                                 str(tmp_path / "out"), *FAST], 0, 1)
    assert cfg.model == str(step) and cfg.lr == 2e-4


def test_a_missing_model_directory_fails_in_one_line_before_anything_is_written(tmp_path, capsys):
    missing = str(tmp_path / "runs" / "nope" / "checkpoints" / "latest")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--model", missing, "--out_dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --model {missing}: no such directory"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_:
        eval_passk.main(["--model", missing, "--n", "4", "--k", "1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --model {missing}: no such directory"]
    pointer = tmp_path / "latest"  # a pointer to a checkpoint that is gone
    pointer.write_text("step_000009")
    with pytest.raises(SystemExit):
        train.main(["--model", str(pointer), "--out_dir", str(tmp_path / "out")])
    assert capsys.readouterr().err.strip() == (f"error: --model {pointer} names 'step_000009', but "
                                               f"{tmp_path / 'step_000009'} is no directory")



def test_a_hub_name_that_cannot_load_fails_in_one_line_on_rank_0(tmp_path, capsys, monkeypatch):
    """A mistyped hub name offline, as a user meets it: train.py and eval_passk.py print one line
    naming --model and exit 2, before anything is written; other ranks print nothing."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for command in ([os.path.join(ROOT, "train.py"), "--out_dir", str(tmp_path / "out")],
                    [os.path.join(ROOT, "eval_passk.py"), "--n", "4", "--k", "1"]):
        proc = subprocess.run([sys.executable, *command, "--model", "nobody-xyz/not-a-model", *FAST],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        assert proc.stderr.strip().splitlines() == errors and len(errors) == 1, proc.stderr[-2000:]
        assert errors[0].startswith("error: --model nobody-xyz/not-a-model: ")
    assert not (tmp_path / "out").exists()

    def unreachable(*args, **kwargs):
        raise OSError("no connection\nto the hub")
    monkeypatch.setattr(rollout, "load_policy", unreachable)
    for rank, expected in ((0, "error: --model org/x: no connection to the hub\n"), (1, "")):
        with pytest.raises(SystemExit) as exit_:
            rollout.load_policy_or_exit("org/x", "org/x", rank)
        assert exit_.value.code == 2 and capsys.readouterr().err == expected


# ------------------------------------------------------------------- one run per out_dir
@pytest.mark.slow
def test_a_second_run_into_the_same_out_dir_is_refused_and_loses_nothing(runs, capsys):
    """The path that lost a run: `python train.py`, then README's real-model command without an
    --out_dir. Now the second is refused before it loads anything, and nothing changes."""
    before = files_of(runs / "runs" / "default")
    cwd = os.getcwd()
    os.chdir(runs)
    try:
        with pytest.raises(SystemExit) as exit_:
            train.main(["--steps", "2", *TINY])  # out_dir: the default, runs/default
    finally:
        os.chdir(cwd)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out_dir runs/default already holds a run (")
    assert "--resume" in err[0] and "--overwrite" in err[0] and "a new --out_dir" in err[0]
    assert files_of(runs / "runs" / "default") == before
    latest = str(runs / "runs" / "default" / "checkpoints" / "latest")  # nor may it delete its model
    with pytest.raises(SystemExit):
        train.main(["--model", latest, "--out_dir", str(runs / "runs" / "default"), "--overwrite"])
    assert "lies in what --overwrite deletes" in capsys.readouterr().err
    assert files_of(runs / "runs" / "default") == before


@pytest.mark.slow
def test_overwrite_starts_over_and_keeps_the_base_model(runs, tmp_path, one_thread, capsys):
    out = tmp_path / "default"
    shutil.copytree(runs / "runs" / "default", out)
    base = files_of(out / "base_model")
    train.main(["--out_dir", str(out), "--steps", "1", "--overwrite", *TINY, *FAST])  # in this process
    assert "removed the previous run's files" in capsys.readouterr().out
    assert files_of(out / "base_model") == base  # reused, not built again
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]  # the evaluations before
    assert [(r["step"], r.get("eval/step")) for r in rows] == [(0, 0), (0, 1)]  # and after step 0
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_000001"]


@pytest.mark.slow
def test_resume_rotates_by_step_number_around_another_runs_checkpoints(runs, tmp_path, one_thread):
    """--resume with checkpoints of higher steps left in the directory (by name they sort after
    this run's): rotation keeps this run's two newest, never the one just written, and leaves the
    others alone; `latest` names a checkpoint that exists."""
    out = tmp_path / "default"
    shutil.copytree(runs / "runs" / "default", out)
    for leftover in ("step_000150", "step_000200"):
        (out / "checkpoints" / leftover).mkdir()
    train.main(["--out_dir", str(out), "--steps", "4", "--save_every", "1", "--resume", *TINY, *FAST])
    assert sorted(os.listdir(out / "checkpoints")) == [
        "latest", "step_000003", "step_000004", "step_000150", "step_000200"]
    assert (out / "checkpoints" / "latest").read_text() == "step_000004"
    assert (out / "checkpoints" / "step_000004" / "model.safetensors").exists()


def test_rotation_orders_checkpoints_by_step_not_by_name(tmp_path):
    directory = tmp_path / "checkpoints"
    for step in (999_998, 999_999, 1_000_000):  # by name step_1000000 sorts first
        (directory / f"step_{step:06d}").mkdir(parents=True)
    (directory / "step_1000001.tmp").mkdir()  # a crash's leftover: never a checkpoint
    train.rotate_checkpoints(str(directory), 1_000_000)
    assert sorted(os.listdir(directory)) == ["step_1000000", "step_1000001.tmp", "step_999999"]
    cfg = types.SimpleNamespace(out_dir=str(tmp_path))
    assert train.latest_checkpoint(cfg) == str(directory / "step_1000000")  # no pointer: highest
    (directory / "latest").write_text("step_000005")  # a pointer to nothing: the highest still
    assert train.latest_checkpoint(cfg) == str(directory / "step_1000000")


def test_the_base_model_is_built_again_for_another_seed(tmp_path, monkeypatch):
    import testbed

    built = []

    def build(path, seed, steps):
        os.makedirs(path)
        with open(os.path.join(path, "warm_start.json"), "w") as f:
            json.dump({"seed": seed, "steps": steps}, f)
        built.append(seed)

    monkeypatch.setattr(testbed, "build_base_model", build)
    for seed in (0, 0, 1):
        train.ensure_base_model(str(tmp_path / "base_model"), seed, 25)
    assert built == [0, 1]


# ------------------------------------------------------------------- one prompt format
@pytest.fixture(scope="module")
def llama_run(llama_dir, data_file, tmp_path_factory):  # noqa: F811
    """One RL step of a tiny random Llama on a local JSONL, 12 tokens a completion: it almost
    never writes its end-of-turn token, so nearly every completion is cut off. train.main in this
    process; returns the run's directory and the text of every warning it gave."""
    import torch

    out = tmp_path_factory.mktemp("llama") / "run"
    threads = torch.get_num_threads()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train.main(["--model", str(llama_dir), "--dataset", str(data_file), "--prompt_field", "question",
                    "--out_dir", str(out), "--steps", "1", "--prompts_per_step", "2", "--group_size", "2",
                    "--max_new_tokens", "12", "--eval_prompts", "4", "--eval_n", "2", "--eval_k", "1,2",
                    "--temperature", "0.9", *FAST])
    torch.set_num_threads(threads)  # train.py runs a model this small on one
    return out, "\n".join(str(w.message) for w in seen)


@pytest.mark.slow
def test_eval_passk_on_a_checkpoint_formats_prompts_as_its_run_did(llama_run, data_file, tmp_path,  # noqa: F811
                                                                   capsys):
    out, _ = llama_run
    config = json.load(open(out / "config.json"))
    assert "boxed" in config["system_prompt"]
    common = ["--dataset", str(data_file), "--prompt_field", "question", "--limit", "4", "--n", "2",
              "--k", "1,2", "--samples", "4", *FAST]
    eval_passk.main(["--model", str(out / "checkpoints" / "latest"), *common, "--out", str(tmp_path / "a.json")])
    printed = capsys.readouterr().out
    assert "train_config.json, the run's" in printed and "max_new_tokens 12" in printed
    used = json.load(open(tmp_path / "a.json"))
    assert {key: used["args"][key] for key in eval_passk.PROMPT_AND_SAMPLING} == {
        key: config[key] for key in eval_passk.PROMPT_AND_SAMPLING}
    assert used["args"]["temperature"] == 0.9
    trained = [json.loads(line) for line in open(out / "samples.jsonl")]
    last_eval = [s["prompt"] for s in trained if s["step"] == 1]  # train.py's evaluation of step 1
    assert [p["prompt"] for p in used["per_problem"]] == last_eval and len(last_eval) == 4
    # flags override the run's values
    eval_passk.main(["--model", str(out / "checkpoints" / "latest"), *common, "--system_prompt", "",
                     "--max_new_tokens", "3", "--out", str(tmp_path / "b.json")])
    override = json.load(open(tmp_path / "b.json"))["args"]
    assert (override["system_prompt"], override["max_new_tokens"]) == ("", 3)


def test_without_a_checkpoint_record_both_tools_default_alike(llama_dir, data_file, tmp_path):  # noqa: F811
    """Any other model: eval_passk.py asks for the same \\boxed{} answer as train.py on real data."""
    eval_passk.main(["--model", str(llama_dir), "--dataset", str(data_file), "--prompt_field", "question",
                     "--limit", "1", "--n", "1", "--k", "1", "--max_new_tokens", "2",
                     "--out", str(tmp_path / "r.json"), *FAST])
    used = json.load(open(tmp_path / "r.json"))["args"]
    expected = train.Config(model=str(llama_dir), dataset=str(data_file)).resolved()
    assert used["system_prompt"] == expected.system_prompt and "boxed" in used["system_prompt"]
    assert used["chat_template"] == expected.chat_template


# ------------------------------------------------------------------- early, specific diagnosis
@pytest.mark.slow
def test_answers_cut_off_by_max_new_tokens_are_named_at_the_first_step(llama_run):
    out, warned = llama_run
    row = [r for r in map(json.loads, open(out / "metrics.jsonl")) if "entropy" in r][0]  # step 0
    assert row["response_length/clip_ratio"] > 0.5
    assert warned.count("were cut off at --max_new_tokens 12 with no answer in them") == 1
    assert "step 0: " in warned and str(out / "samples.jsonl") in warned


def fake_run(tmp_path):
    cfg = types.SimpleNamespace(out_dir=str(tmp_path), max_new_tokens=64)
    return types.SimpleNamespace(cfg=cfg, rank=0, verifier="built-in rule", no_signal_steps=0,
                                 steps_run=0, warned_cut=False)


def caught(run, step, zero_std_frac, **sums):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train.warn_when_no_signal(run, step, zero_std_frac, {"sequences": 16, "reward": 0.0, "cut": 0,
                                                             "cut_unanswered": 0, **sums})
    return [str(w.message) for w in seen]


def test_no_reward_variance_is_said_at_the_first_step_and_again_after_five(tmp_path):
    run = fake_run(tmp_path)
    first = caught(run, 0, 1.0)
    assert len(first) == 1 and first[0].startswith("step 0: no group's samples differ in reward")
    assert str(tmp_path / "samples.jsonl") in first[0] and "--max_new_tokens 64" in first[0]
    assert [caught(run, step, 1.0) for step in (1, 2, 3)] == [[], [], []]
    fifth = caught(run, 4, 1.0)
    assert len(fifth) == 1 and fifth[0].startswith("for 5 steps in a row")
    assert caught(fake_run(tmp_path), 0, 0.5) == []  # signal: nothing to say


def test_the_cut_off_warning_gives_the_budget_and_the_shares_once(tmp_path):
    run = fake_run(tmp_path)
    said = caught(run, 0, 1.0, cut=14, cut_unanswered=12)  # 12 of 16 cut with no answer
    assert said == [f"step 0: 75% of the completions (12 of 16) were cut off at --max_new_tokens 64 with no "
                    f"answer in them (88% were cut in all): the verifier cannot score an answer that was "
                    f"never written. Raise --max_new_tokens (worked solutions of real problems need "
                    f"hundreds of tokens), or ask for shorter answers with --system_prompt. What the "
                    f"model wrote: {tmp_path / 'samples.jsonl'}"]
    assert caught(run, 1, 1.0, cut=16, cut_unanswered=16) == []  # once a run
    assert caught(fake_run(tmp_path), 0, 0.0, cut=7, cut_unanswered=7) == []  # under half: quiet


def test_cut_off_counts_completions_without_a_stop_token_in_the_budget():
    import torch

    from rollout import Rollouts, completion_mask

    completion = torch.tensor([[5, 6, 7], [5, 1, 0], [5, 6, 1], [8, 8, 8]])  # (4, 3), stop token 1
    batch = Rollouts(torch.ones(4, 1, dtype=torch.long), completion, torch.ones(4, 1, dtype=torch.long),
                     completion_mask(completion, 1), ["abc", "x", "xy", "The answer is 7"])
    assert train.cut_off(batch, 3, [1]) == {"cut": 2, "cut_unanswered": 1}  # rows 0 and 3; 3 answers
    assert train.cut_off(batch, 4, [1]) == {"cut": 0, "cut_unanswered": 0}  # budget not reached


# ------------------------------------------------------------------- install and optional plots
def test_readme_installs_the_cpu_build_of_the_torch_ci_installs():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        pinned = re.search(r'"torch==([^"]+)"', f.read()).group(1)
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.startswith(f"pip install torch=={pinned} --index-url https://download.pytorch.org/whl/cpu\n")
    assert "pip install -r requirements.txt && python train.py" in first_block
    assert "On a GPU machine `pip install -r requirements.txt` alone" in " ".join(readme.split())


def test_without_matplotlib_train_and_compare_runs_say_how_to_get_the_picture(tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "run"
    out.mkdir()
    rows = [{"step": s, "entropy": 1.0 - s / 10, "entropy/target": 1.0, "reward/mean": s / 4,
             "entropy/knob": 0.0} for s in range(3)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tracker = types.SimpleNamespace(summary=lambda: {"stable": 0.0})
    run = types.SimpleNamespace(cfg=types.SimpleNamespace(out_dir=str(out)), tracker=tracker,
                                nonfinite_skipped=0, verifier="built-in rule")
    train.finish(run, str(out / "metrics.jsonl"))
    said = [line for line in capsys.readouterr().out.splitlines() if "metrics.png" in line]
    assert said == ["metrics.png not drawn: matplotlib is not installed (pip install matplotlib); the "
                    "text plots above show the same"]
    assert not (out / "metrics.png").exists()
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import compare_runs

    with pytest.raises(SystemExit) as exit_:
        compare_runs.main([str(out), "--png", str(tmp_path / "p.png")])
    assert exit_.value.code == 2
    assert "--png needs matplotlib: pip install matplotlib" in capsys.readouterr().err
