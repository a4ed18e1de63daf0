"""benchmarks/gpu_check.py: its work models against numbers worked out by hand, its time limits,
and the whole check at tiny sizes on a CPU (`--cpu`), so that the GPU command cannot rot."""
import argparse
import doctest
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402

# Qwen2.5-0.5B (rl_step.py's preset): 151936 x 896 tied embedding = 136,134,656 parameters; a layer
# has q 896x896 + 896, k and v 896x128 + 128 each, o 896x896, the MLP 3 x 896x4864 and two norms
# of 896 (14,912,384); 24 layers and the final norm make 357,898,112, in all 494,032,768.
QWEN_05B = {"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}


def test_docstring_examples():
    assert doctest.testmod(gpu_check).failed == 0


def test_decode_bytes_and_update_flops_at_qwen_0_5b_by_hand():
    """64 sequences, prompt 128, 512 new tokens, one rank.
    Decode: 512 steps x 2 bytes x 494,032,768 = 505,889,554,432 bytes of weights; the KV cache is
    2 x 24 layers x 2 heads x 64 dims x 2 bytes = 12,288 bytes a token, and step t reads 128 + t
    tokens of it for each sequence: 512 x 128 + 511 x 512 / 2 = 196,352 token reads x 64 x 12,288
    = 154,417,496,064 bytes. Update: S = 640 positions; 6 x 357,898,112 x 640 = 1,374,328,750,080
    for the layers, 8 x 136,134,656 x 512 = 557,607,550,976 for the fused head, 6 x 24 x 896 x
    640^2 = 52,848,230,400 for attention: 1,984,784,531,456 a sequence, x 64."""
    run = {"shape": QWEN_05B, "parameters": 494_032_768, "world_size": 1, "sequences": 64,
           "completion_width": 512, "args": {"prompt_len": 128}}
    assert gpu_check.decode_bytes(run, 2) == 505_889_554_432 + 154_417_496_064
    assert gpu_check.update_flops(run) == 64 * 1_984_784_531_456


@pytest.mark.parametrize("ranks", [1, 2])
def test_fractions_of_the_limits_are_per_device(ranks):
    """The doctests' model with 2 sequences on every rank: a rank reads 3 x 200 + 2 x 8 x 9 = 744
    bytes in its 1 s rollout, 10% of a 7440 B/s device, and does 2 x 3360 FLOPs in its 2 s
    update, 10% of a 33,600 FLOP/s device, however many ranks there are."""
    shape = {"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "tie_word_embeddings": True}
    run = {"shape": shape, "parameters": 100, "world_size": ranks, "sequences": 2 * ranks,
           "completion_width": 3, "args": {"prompt_len": 2},
           "phases": {"rollout": {"seconds": 1.0}, "update": {"seconds": 2.0}}}
    machine = {"limits": {"copy_bytes_per_s": 7440.0, "matmul_flops_per_s": 33_600.0}}
    fractions = gpu_check.limits_fractions(run, machine, on_gpu=True)
    assert fractions["hbm_fraction"] == pytest.approx(0.1)
    assert fractions["matmul_fraction"] == pytest.approx(0.1)


def check_for(tmp_path, budget: float) -> gpu_check.Check:
    args = argparse.Namespace(cpu=True, log_dir=str(tmp_path / "logs"), budget=budget)
    os.makedirs(args.log_dir)
    return gpu_check.Check(args, work_dir=str(tmp_path))


def test_a_command_is_killed_at_the_budget_and_the_next_is_not_started(tmp_path):
    check = check_for(tmp_path, budget=gpu_check.MIN_START_S["cpu"] + 1)
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    first = check.run("train", slow)
    assert first["status"].startswith("TIMEOUT") and first["rc"] is None
    assert first["seconds"] < 30 and "started" in first["output"]
    second = check.run("train", slow)
    assert second["status"] == "skipped (budget)" and second["seconds"] == 0.0
    log = open(check.log_path("train")).read()
    assert log.count("$ ") == 2 and "[TIMEOUT" in log and "[not started:" in log


def alive(pid: int) -> bool:
    """A process that runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_torchrun_worker_does_not_outlive_the_time_limit(tmp_path):
    """torchrun starts each worker in a session of its own: killing torchrun's process group alone
    would leave the worker running (on a GPU machine: holding the GPU through every later part)."""
    worker = tmp_path / "worker.py"
    worker.write_text("import os, pathlib, sys, time\n"
                      "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\n"
                      "time.sleep(300)\n")
    pid_file = tmp_path / "worker.pid"
    check = check_for(tmp_path, budget=20)  # torchrun and its worker start well within it
    result = check.run("train", [*check.torchrun(1), str(worker), str(pid_file)])
    assert result["status"].startswith("TIMEOUT")
    pid = int(pid_file.read_text())
    deadline = time.time() + 10
    while alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_a_missing_package_stops_the_check_with_one_line_naming_the_fix(tmp_path, monkeypatch):
    check = check_for(tmp_path, budget=60)
    answer = 'MACHINE {"missing": ["transformers"]}\n'
    monkeypatch.setattr(check, "run", lambda part, cmd: {"rc": 0, "seconds": 1.0, "output": answer,
                                                         "status": "ok"})
    result = gpu_check.part_machine(check)
    assert result["fatal"] and result["status"] == "FAILED"
    assert "missing here: transformers" in result["summary"] and "pip download" in result["summary"]
    assert "\n" not in result["summary"]


def test_without_a_gpu_the_gpu_check_says_to_use_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(tmp_path), "--parts",
                           "machine"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: torch ")
    assert last.endswith("sees no CUDA GPU on this machine; for the small CPU version run: "
                         "python benchmarks/gpu_check.py --cpu LOG_DIR")
    assert "| 2 tests | not run |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow
def test_cpu_mode_runs_every_part_and_prints_the_table_last(tmp_path):
    """The command CI runs: all six parts at tiny sizes, every command in its log, 8 files."""
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    logs = [f"{i}_{part}.log" for i, part in enumerate(gpu_check.PARTS, 1)]
    assert sorted(os.listdir(tmp_path)) == sorted(logs + ["results.json", "table.md"])
    table = (tmp_path / "table.md").read_text()
    assert proc.stdout.rstrip().endswith(table.rstrip())
    for i, part in enumerate(gpu_check.PARTS, 1):
        assert f"| {i} {part} | ok |" in table
    commands = {"machine": ["benchmarks/gpu_check.py --measure_machine"],
                "tests": ["-m pytest -q -m gpu tests/test_gpu.py"],
                "train": ["train.py --steps 2"],
                "train_torchrun": ["--standalone --nproc_per_node=2 train.py"],
                "rl_step": ["benchmarks/rl_step.py --shape tiny",
                            "--nproc_per_node=2 benchmarks/rl_step.py --shape tiny"],
                "entropy_memory": ["benchmarks/entropy_memory.py --n 256"]}
    for log, (part, expected) in zip(logs, commands.items()):
        text = (tmp_path / log).read_text()
        shown = [line for line in text.splitlines() if line.startswith("$ ")]
        assert len(shown) == len(expected) and all(e in c for e, c in zip(expected, shown)), part
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["parts"]["tests"]["counts"] == {"skipped": 7}
    assert results["parts"]["train"]["data"]["steps"] == 2
    assert results["parts"]["train_torchrun"]["data"]["steps"] == 2
    assert [(r["launch"], r["status"]) for r in results["rl_step"]] == [("python x1", "ok"),
                                                                        ("torchrun x2", "ok")]
    for row in results["rl_step"]:
        assert row["rollout_tokens_per_s"] > 0 and row["update_tokens_per_s"] > 0
        assert row["hbm_fraction"] > 0 and row["matmul_fraction"] > 0
        assert f"| tiny | 4 | {row['launch']} | ok | {row['rollout_tokens_per_s']:.0f} |" in table
    assert set(results["parts"]["entropy_memory"]["variants"]) == {"naive", "fused"}
