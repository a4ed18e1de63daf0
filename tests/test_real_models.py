"""The real-model path, offline: a tiny Llama with a BPE tokenizer and a chat template, saved with
save_pretrained to a temp dir, and a local JSONL of math problems, through train.py and eval_passk.py."""
import json
import os
import subprocess
import sys

import pytest

from rollout import format_prompts, load_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROBLEMS = [{"question": f"What is {a} plus {b}?", "answer": str(a + b), "level": 1 + (a + b) % 5}
            for a, b in [(2, 3), (10, 7), (41, 1), (6, 6), (9, 12), (30, 3), (5, 8), (11, 11), (4, 20)]]
# 9 problems: under 2 ranks the held-out set splits 5 + 4


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [p["question"] + " The answer is \\boxed{" + p["answer"] + "}." for p in PROBLEMS] * 5
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>")  # no pad token, like Llama
    tok.chat_template = CHAT
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, max_position_embeddings=512,
                                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "math.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def test_load_policy_sets_pad_and_applies_chat_template(llama_dir):
    model, tok = load_policy(str(llama_dir))
    assert tok.pad_token == "<|end|>" and tok.padding_side == "left"
    problems = format_prompts([{"prompt": "What is 2 plus 3?", "answer": "5"}], tok, "auto", "Use \\boxed{}.")
    assert problems[0]["prompt"] == "<|system|>Use \\boxed{}.<|end|><|user|>What is 2 plus 3?<|end|><|assistant|>"
    raw = format_prompts([{"prompt": "Q", "answer": "5"}], tok, "none", None)
    assert raw[0]["prompt"] == "Q"


@pytest.mark.slow
def test_train_two_steps_on_local_jsonl(llama_dir, data_file, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "--model", str(llama_dir), "--dataset", str(data_file),
         "--prompt_field", "question", "--out_dir", str(out), "--steps", "2", "--prompts_per_step", "4",
         "--group_size", "2", "--max_new_tokens", "12", "--eval_prompts", "4", "--eval_n", "2",
         "--eval_k", "1,2", "--curriculum", "two-phase"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1]
    assert 0 < rows[0]["response_length/mean"] <= 12
    config = json.load(open(out / "config.json"))
    assert "boxed" in config["system_prompt"]  # real data: the boxed-answer instruction by default
    # a pretrained model gets the values RL recipes use, not the built-in model's
    assert (config["lr"], config["lr_warmup_steps"], config["micro_batch_size"]) == (1e-6, 10, 4)
    assert config["updates_per_step"] == 4 and [r["lr"] for r in rows] == pytest.approx([1e-7, 2e-7])
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step_000002")).__name__ == "LlamaForCausalLM"


@pytest.mark.slow
def test_eval_passk_cli_one_process_and_torchrun(llama_dir, data_file, tmp_path):
    args = ["eval_passk.py", "--model", str(llama_dir), "--dataset", str(data_file), "--prompt_field",
            "question", "--k", "1,2,4", "--max_new_tokens", "8", "--limit", "0"]
    results = []
    for launcher, n_flag, name in [([sys.executable], "--n", "one.json"),
                                   (TORCHRUN, "--num_samples", "two.json")]:
        proc = subprocess.run([*launcher, *args, n_flag, "4", "--out", str(tmp_path / name)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "pass@1" in proc.stdout and "pass@4" in proc.stdout and "entropy" in proc.stdout
        results.append(json.load(open(tmp_path / name)))
    for result in results:
        assert len(result["per_problem"]) == len(PROBLEMS)
        assert [p["answer"] for p in result["per_problem"]] == [p["answer"] for p in PROBLEMS]
        assert all(0 <= p["correct"] <= 4 for p in result["per_problem"])
        summary = result["summary"]
        assert 0 <= summary["pass@1"] <= summary["pass@2"] <= summary["pass@4"] <= 1
        assert summary["entropy"] > 0
        # what the model wrote, for the first problems: the reference, the reward, what was read
        assert [s["answer"] for s in result["samples"]] == [p["answer"] for p in PROBLEMS[:8]]
        assert all(set(s) >= {"prompt", "completion", "extracted", "reward"} for s in result["samples"])


@pytest.mark.slow
def test_a_small_real_run_starts_and_an_impossible_one_names_the_fix(llama_dir, data_file, tmp_path,
                                                                     one_thread):
    import train

    common = ["--model", str(llama_dir), "--dataset", str(data_file), "--prompt_field", "question",
              "--steps", "1", "--group_size", "2", "--max_new_tokens", "4", "--eval_prompts", "2", "--eval_n",
              "2", "--eval_k", "1,2"]
    train.main([*common, "--prompts_per_step", "2", "--out_dir", str(tmp_path / "a")])  # in this process
    assert json.load(open(tmp_path / "a" / "config.json"))["updates_per_step"] == 2  # 2 prompts: 2 mini-batches
    proc = subprocess.run([sys.executable, "train.py", *common, "--prompts_per_step", "2", "--updates_per_step",
                           "4", "--out_dir", str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --updates_per_step 4 must divide the prompts per rank (2 = --prompts_per_step 2 / 1 rank(s)); "
        "fix: --updates_per_step 1 or 2, or --prompts_per_step a multiple of 4"]


def test_eval_passk_rejects_k_above_n(llama_dir):
    proc = subprocess.run([sys.executable, "eval_passk.py", "--model", str(llama_dir), "--n", "4",
                           "--k", "1,8"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--k 8: each k must be between 1 and --n 4" in proc.stderr


def test_bad_data_file_fails_at_start(llama_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n')
    proc = subprocess.run([sys.executable, "train.py", "--model", str(llama_dir), "--dataset", str(bad),
                           "--prompt_field", "question", "--out_dir", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{bad}: line 2: missing field 'answer'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_eval_passk_runs_copied_with_rollout_and_reward_alone(llama_dir, data_file, tmp_path):
    """eval_passk.py imports no train.py: copied elsewhere with the files it names in its docstring
    (rollout.py, reward.py, data.py, distributed.py) it is a working tool."""
    import shutil

    for name in ("eval_passk.py", "rollout.py", "reward.py", "data.py", "distributed.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    proc = subprocess.run([sys.executable, "eval_passk.py", "--model", str(llama_dir), "--dataset", str(data_file),
                           "--prompt_field", "question", "--n", "2", "--k", "1,2", "--max_new_tokens", "4",
                           "--limit", "3", "--verifier", "builtin"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == "verifier: built-in rule"
    assert "3 prompts x 2 samples x <= 4 tokens" in proc.stdout and "pass@2" in proc.stdout


def test_load_policy_keeps_a_bf16_checkpoint_memory_mapped(tmp_path):
    """Read in its own dtype, a checkpoint stays memory-mapped (ranks on a host share its pages):
    no private host copy on the way to the device. An fp32 host copy would be 2x the file."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if not os.path.exists("/proc/self/smaps_rollup"):
        pytest.skip("needs Linux /proc")
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1024,
                                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8))
    model.to(torch.bfloat16).save_pretrained(tmp_path)  # ~45 MB of bf16 weights
    tok_dir = tmp_path  # load_policy needs a tokenizer next to the weights: borrow a tiny one
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")),
                            eos_token="<unk>").save_pretrained(tok_dir)
    size_mb = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors")) / 2**20
    del model

    def private_mb():
        with open("/proc/self/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty")) / 1024

    before = private_mb()
    loaded, _ = load_policy(str(tmp_path), torch.device("cpu"), dtype=torch.bfloat16)
    grown = private_mb() - before
    assert loaded.dtype == torch.bfloat16
    assert grown < 0.25 * size_mb, f"{grown:.0f} MB private for a {size_mb:.0f} MB checkpoint"
