"""The architecture matrix: the model families RL work uses, each as a tiny random-weight model
built offline (`AutoConfig.for_model` + `save_pretrained`, a BPE tokenizer with a chat template),
loaded back as users load theirs (`from_pretrained`, its own attention and cache classes), then
trained for two RL steps by train.py, resumed for a third, and evaluated by eval_passk.py.

Each family also shows that the shared prompt prefill samples exactly what plain `generate` samples
(or that rollouts fall back to plain `generate` for caches it cannot repeat), that FSDP finds its
decoder layers, and that the trainer scores the distribution the sampler drew from.
"""
import json
import math
from dataclasses import dataclass, field

import pytest
import torch

import eval_passk
import rollout
import train
from rollout import PolicyError, attention_implementation, format_prompts, load_policy, shared_prefill

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROBLEMS = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)}
            for a, b in [(2, 3), (10, 7), (41, 1), (6, 6), (9, 12), (30, 3)]]
VOCAB = 320  # the model's rows; more than the tokenizer's 300 tokens, as real models pad theirs
WINDOW = 6  # sliding windows shorter than every prompt, so that the window is what gets tested
MAMBA = dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=16)  # 4 x 16 = 2 x 32


@dataclass
class Family:
    name: str  # what researchers call it
    model_type: str
    cache: str  # what its cache holds per layer
    shared_prefill: bool  # whether rollouts share each prompt's prefill across its group
    config: dict = field(default_factory=dict)  # beyond the tiny sizes every family gets


FAMILIES = [
    Family("Llama 3", "llama", "KV", True),
    Family("Qwen2.5", "qwen2", "KV", True),
    Family("Qwen3", "qwen3", "KV", True),
    Family("SmolLM3", "smollm3", "KV (RoPE and NoPE layers)", True, {"no_rope_layer_interval": 2}),
    Family("OLMo 2", "olmo2", "KV", True),
    Family("Phi-3 / Phi-4", "phi3", "KV", True),
    Family("Mistral", "mistral", "sliding-window KV", True, {"sliding_window": WINDOW}),
    Family("Gemma 2", "gemma2", "local / global KV, soft-capped logits", True,
           {"sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]}),
    Family("Gemma 3", "gemma3_text", "local / global KV", True,
           {"sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]}),
    Family("GPT-2", "gpt2", "KV, absolute positions", True,
           {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256}),
    Family("Pythia (GPT-NeoX)", "gpt_neox", "KV, partial RoPE", True),
    Family("Qwen3-MoE", "qwen3_moe", "KV, MoE", True,
           {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    Family("GPT-OSS", "gpt_oss", "local / global KV, attention sinks, MoE", True,
           {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 131072}),  # its YaRN factor (32) times the original 4096
    Family("Qwen3.5", "qwen3_5_text", "gated DeltaNet + KV", False,
           {"layer_types": ["linear_attention", "full_attention"], "linear_key_head_dim": 8,
            "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 2}),
    Family("Qwen3-Next", "qwen3_next", "gated DeltaNet + KV, MoE", False,
           {"layer_types": ["linear_attention", "full_attention"], "linear_key_head_dim": 8,
            "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 2,
            "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32}),
    Family("LFM2", "lfm2", "short convolution + KV", False,
           {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1],
            "block_auto_adjust_ff_dim": False}),
    Family("Falcon-H1", "falcon_h1", "Mamba-2 and KV in every layer", False,
           {**MAMBA, "mamba_d_ssm": 64, "lm_head_multiplier": 0.5}),
    Family("Granite 4.0", "granitemoehybrid", "Mamba-2 + KV, MoE", False,
           {"layer_types": ["mamba", "attention"], **MAMBA, "num_local_experts": 4,
            "shared_intermediate_size": 32, "logits_scaling": 4.0}),
]
IDS = [f.model_type for f in FAMILIES]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False)


# ---------------------------------------------------------------------------- models and data
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as train.py sets for models this small (see train.SMALL_MODEL): a second
    thread that spins while other processes share the cores made these tests 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer trained here on the problems, with a chat template; no pad token
    (as Llama's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [p["question"] + " The answer is \\boxed{" + p["answer"] + "}." for p in PROBLEMS] * 5
    core.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>")
    tok.chat_template = CHAT
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    """The training problems; the held-out ones are beside it, in held_out.jsonl."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "held_out.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS[::-1]))
    path = folder / "math.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


@pytest.fixture(scope="session")
def model_dir(tokenizer_dir, tmp_path_factory):
    """family -> the directory of its tiny random-weight model and the shared tokenizer, built once."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tokenizer) < VOCAB - 8  # room for the tokens a family's own tokenizer class adds
    built = {}

    def build(family: Family):
        if family.model_type not in built:
            sizes = {} if family.model_type == "gpt2" else TINY  # GPT-2 names its sizes its own way
            config = AutoConfig.for_model(family.model_type, **{**sizes, **family.config},
                                          vocab_size=VOCAB, eos_token_id=tokenizer.eos_token_id,
                                          pad_token_id=tokenizer.eos_token_id, bos_token_id=None)
            torch.manual_seed(0)
            path = tmp_path_factory.mktemp(family.model_type)
            AutoModelForCausalLM.from_config(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
            built[family.model_type] = path
        return built[family.model_type]

    return build


# ---------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_trains_resumes_and_evaluates(family, model_dir, data_file, tmp_path, capsys, monkeypatch):
    """Two RL steps and a checkpoint, one more step resumed from it, pass@k of the result. On a
    CPU in fp32 the trainer's log-probs equal the sampler's: the fused head scores the logits the
    model samples from, whatever the family does after its lm_head (soft-capping, scaling)."""
    monkeypatch.setattr(rollout, "_NOTED", set())  # as in a fresh process
    out = tmp_path / "run"
    common = ["--model", str(model_dir(family)), "--dataset", str(data_file), "--prompt_field", "question",
              "--eval_dataset", str(data_file.parent / "held_out.jsonl"), "--verifier", "builtin",
              "--out_dir", str(out), "--prompts_per_step", "2", "--group_size", "2", "--max_new_tokens", "8",
              "--eval_prompts", "2", "--eval_n", "2", "--eval_k", "1,2", "--dynamic_sampling", "false",
              "--eval_samples", "0"]
    train.main([*common, "--steps", "2"])
    first = capsys.readouterr().out
    train.main([*common, "--steps", "3", "--resume"])
    resumed = capsys.readouterr().out
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "resuming at step 2" in resumed
    attention = "eager" if family.model_type in ("gemma2", "gpt_oss") else "sdpa"  # the model's own
    assert f"{family.model_type}, {attention} attention" in first
    for r in rows:
        assert 0 < r["response_length/mean"] <= 8
        assert r["rollout/logp_mismatch"] < 1e-4, r["rollout/logp_mismatch"]  # fp32: ~1e-7
        assert r["entropy"] > 0 and math.isfinite(r["grad_norm"])
    notes = [line for line in first.splitlines() if line.startswith(f"note: {family.model_type}:")]
    assert len(notes) == (0 if family.shared_prefill else 1)  # once, for a cache it cannot share
    result = eval_passk.main(["--model", str(out / "checkpoints" / "step_000003"), "--dataset",
                              str(data_file), "--prompt_field", "question", "--verifier", "builtin",
                              "--n", "2", "--k", "1,2", "--max_new_tokens", "8", "--limit", "2"])
    assert len(result["correct"]) == 2 and 0 <= result["pass@1"] <= result["pass@2"] <= 1
    assert f"({family.model_type}, {attention} attention)" in capsys.readouterr().out


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_shared_prefill_samples_what_plain_generate_samples(family, model_dir, capsys, monkeypatch):
    """Prompts of different lengths (left padding, each longer than the sliding windows), 3
    completions each: generating from the shared prefill gives the very sequences that plain
    `generate` over 3 copies of every prompt gives, greedy and sampled with the same seed.
    Families whose cache cannot be repeated get no shared prefill, and a note says so once."""
    from transformers import GenerationConfig

    model, tok = load_policy(str(model_dir(family)))
    model.eval()
    templated = format_prompts([{"prompt": p["question"], "answer": p["answer"]} for p in PROBLEMS[:2]], tok)
    encoded = tok([p["prompt"] for p in templated] + ["Hi"], return_tensors="pt", padding=True,
                  add_special_tokens=False)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert ids.shape[1] > WINDOW + 2 and mask[-1].sum() < WINDOW
    group = 3
    monkeypatch.setattr(rollout, "_NOTED", set())  # as in a fresh process
    with torch.no_grad():
        shared = [shared_prefill(model, ids, mask, group) for _ in range(2)]
    notes = capsys.readouterr().out.splitlines()
    if not family.shared_prefill:
        assert shared == [{}, {}]
        assert len(notes) == 1 and notes[0].startswith(f"note: {family.model_type}: cache layers ")
        return
    assert notes == []
    for do_sample in (False, True):
        config = GenerationConfig(do_sample=do_sample, top_k=0, max_new_tokens=6,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  output_scores=True, return_dict_in_generate=True)
        outputs = []
        for prefill in (lambda: {}, lambda: shared_prefill(model, ids, mask, group)):
            torch.manual_seed(0)
            with torch.no_grad():
                outputs.append(model.generate(input_ids=ids.repeat_interleave(group, 0),
                                              attention_mask=mask.repeat_interleave(group, 0),
                                              generation_config=config, **prefill()))
        plain, from_shared = outputs
        assert torch.equal(plain.sequences, from_shared.sequences)
        for a, b in zip(plain.scores, from_shared.scores):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_fsdp_shards_exactly_the_decoder_layers(family, model_dir):
    """`distributed.shard_model` wraps the modules whose class `_no_split_modules` names: for every
    family those are exactly its decoder layers, each once, none inside another."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir(family))
    names = set(model._no_split_modules or [])
    wrapped = [m for m in model.modules() if type(m).__name__ in names]
    decoder_layers = next(m for m in model.base_model.children() if isinstance(m, torch.nn.ModuleList))
    assert len(decoder_layers) == 2 and [id(m) for m in wrapped] == [id(m) for m in decoder_layers]


# ---------------------------------------------------------------------------- attention and errors
def test_attention_follows_the_model_then_the_gpu_then_the_flag(monkeypatch):
    """None (the model's own default) on a CPU; FlashAttention 2 on a GPU where the model supports
    it and flash_attn is installed (not GPT-OSS, whose sinks need other kernels); the flag wins."""
    import transformers.utils
    from transformers import AutoConfig

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    llama, gemma2, gpt_oss = (AutoConfig.for_model(t) for t in ("llama", "gemma2", "gpt_oss"))
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert [attention_implementation(c, cpu) for c in (llama, gemma2, gpt_oss)] == [None, None, None]
    assert [attention_implementation(c, gpu) for c in (llama, gemma2, gpt_oss)] == \
        ["flash_attention_2", "flash_attention_2", None]
    assert attention_implementation(llama, gpu, "sdpa") == "sdpa"
    assert attention_implementation(gemma2, cpu, "eager") == "eager"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert attention_implementation(llama, gpu) is None
    with pytest.raises(PolicyError, match="^t5: transformers has no causal LM for this model type"):
        attention_implementation(AutoConfig.for_model("t5"), cpu)
    with pytest.raises(PolicyError, match="flash_attention_2 needs a GPU and the flash_attn package"):
        attention_implementation(llama, gpu, "flash_attention_2")
    with pytest.raises(PolicyError, match="^gpt_oss does not support --attn_implementation sdpa; try "
                                          "--attn_implementation eager or flex_attention"):
        attention_implementation(gpt_oss, cpu, "sdpa")


def test_an_attention_the_model_cannot_run_is_one_line_naming_the_model_and_the_flag(
        model_dir, data_file, tmp_path, capsys):
    """Gemma 2 has no sdpa attention: train.py and eval_passk.py stop at start-up with one line."""
    gemma2 = str(model_dir(next(f for f in FAMILIES if f.model_type == "gemma2")))
    capsys.readouterr()  # what building it printed
    expected = ("error: gemma2 does not support --attn_implementation sdpa; try --attn_implementation "
                "eager or flash_attention_2 or flex_attention, or leave it unset (the model's own default)")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--model", gemma2, "--dataset", str(data_file), "--prompt_field", "question",
                    "--eval_dataset", str(data_file.parent / "held_out.jsonl"),
                    "--out_dir", str(tmp_path), "--attn_implementation", "sdpa", "--verifier", "builtin"])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [expected]
    with pytest.raises(SystemExit) as exit_:
        eval_passk.main(["--model", gemma2, "--attn_implementation", "sdpa", "--verifier", "builtin"])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [expected]
