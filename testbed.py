"""The lab bench: a built-in task and a tiny model on which RL visibly learns in minutes on a CPU.

A course, a test suite and a laptop need an RL problem that runs offline in minutes yet behaves like
the real one: a base model that solves the task sometimes, so rewards vary within a group; room
above it (pass@16 well over pass@1); and entropy that collapses under plain GRPO. This file builds
one, on exactly the code path of a real model: a Qwen2 from `transformers`, a `tokenizers`
tokenizer, both saved with `save_pretrained` and loaded back like any hub checkpoint.

  * The task, `arithmetic_problems`: sums of single digits, "3+5+2=" -> "10". Level L has L + 1
    terms (2 to 7); the answer is the plain number, which reward.py's verifier reads as it is.
    One sum in 10 of every level, in every order of its terms, is held out (`is_held_out`): the
    evaluation asks only those, and neither RL nor the warm start ever sees one.
  * The tokenizer, `char_tokenizer`: one token per character, <pad> 0 and <eos> 1.
  * The model, `tiny_model_config`: a 3-layer Qwen2 with 0.64M parameters.
  * The warm start, `build_base_model`: a short supervised run on a corpus written like
    pre-training text, where short sums are common, long ones rare, and many answers are slips
    (`WARM_START_LEVELS`, `WARM_START_CORRECT`, `WARM_START_SLIPS`). The base model then computes
    the sum but writes slips, and has never seen a long sum answered right: RL has a mode to
    sharpen and headroom it reaches only by generalising. On 512 held-out prompts x 16 samples,
    seeds 0 and 40-42 gave pass@1 0.115-0.149 and pass@16 0.71-0.85, most of the headroom on
    the longest sums.

It is a separate file, beside the concepts, because train.py, eval_passk.py, the tests, the
benchmarks and the labs all build the same bench. `python train.py` builds the base model once
into `runs/default/base_model`.
"""
from __future__ import annotations

import json
import os
import random
import zlib

TASK_LEVELS = (1, 2, 3, 4, 5, 6)  # number of "+" signs: 2 to 7 terms
MAX_NEW_TOKENS = 4  # an answer of at most 2 digits, then <eos>: a budget of 4 never cuts one off
TASK_CHARS = "0123456789+-*=() "
HELD_OUT_SHARE = 10  # one sum in 10 of every level is held out (`is_held_out`)
TAG = "es_testbed"  # a key of the model's config.json: train.py gives such a model the tuned values


def arithmetic_problems(n: int, seed: int, levels: tuple[int, ...] = TASK_LEVELS,
                        split: str = "train") -> list[dict]:
    """The built-in task: sums of single digits; level L has L + 1 terms (2 to 7).

    `split` "train" draws from the training part of each level, "test" from its held-out part
    (`is_held_out`): the two never share a problem, in any order of its terms, whatever the seeds.
    The warm-start corpus draws from the training part too. Each level is drawn uniformly, then a
    problem uniformly within its part of that level. Deterministic in `seed`, and the first n of
    a larger draw are the draw of n.

    >>> arithmetic_problems(1, seed=0, levels=(2,))
    [{'prompt': '8+7+6=', 'answer': '21', 'level': 2}]
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        level = rng.choice(levels)
        terms = [rng.randrange(10) for _ in range(level + 1)]
        while is_held_out(terms) != (split == "test"):  # rejection: ~1.1 draws (train), ~10 (test)
            terms = [rng.randrange(10) for _ in range(level + 1)]
        problems.append({"prompt": "+".join(map(str, terms)) + "=", "answer": str(sum(terms)),
                         "level": level})
    return problems


def is_held_out(terms: list[int]) -> bool:
    """True for the held-out part of the task: one problem in HELD_OUT_SHARE, by a fixed hash
    (CRC-32, the same on every machine and Python) of its terms in sorted order. Sorting puts
    every reordering of a sum in the same part: 3+5 is held out exactly when 5+3 is, so neither
    training nor the warm start shows a held-out sum in another order.

    Level 1 has only 55 such sums of two digits (100 prompts); 7 of them, 14 prompts, are held
    out, so level 1's share of a held-out set repeats those 14: few, but never seen.

    >>> is_held_out([3, 1]), is_held_out([1, 3]), is_held_out([3, 5])
    (True, True, False)
    """
    key = "+".join(map(str, sorted(terms)))
    return zlib.crc32(key.encode()) % HELD_OUT_SHARE == 0


def char_tokenizer(chars: str = TASK_CHARS):
    """A character-level `PreTrainedTokenizerFast`: <pad> 0, <eos> 1, <unk> 2, then `chars`.

    >>> tok = char_tokenizer()
    >>> tok("3+5=", add_special_tokens=False).input_ids, tok.decode([6, 7, 1], skip_special_tokens=True)
    ([6, 13, 8, 16], '34')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *chars])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def tiny_model_config(vocab_size: int, hidden_size: int = 128, layers: int = 3, heads: int = 4,
                      max_positions: int = 64):
    """A small Qwen2 (3 layers, width 128: 0.64M parameters with the task's 20 tokens)."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=3 * hidden_size,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_positions, tie_word_embeddings=True,
                       pad_token_id=0, eos_token_id=1, bos_token_id=1)


def is_testbed_model(name_or_path: str) -> bool:
    """True for "embedded" and for a local directory holding this bench's model: its base model or
    a checkpoint of a run on it (their config.json carries TAG)."""
    if name_or_path == "embedded":
        return True
    config = os.path.join(name_or_path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return TAG in json.load(f)


# ----------------------------------------------------------------------------- the warm start
# The corpus, like pre-training text: levels 1 and 2 are 30% each, levels 3-6 10% each; per level
# only a share of the answers are right, the rest are plausible slips (off by 1, 2, 3, or by 10: a
# lost carry). On levels 3-6 the corpus never writes a right answer.
WARM_START_LEVELS = (1, 1, 1, 2, 2, 2, 3, 4, 5, 6)
WARM_START_CORRECT = {1: 0.8, 2: 0.3, 3: 0.0, 4: 0.0, 5: 0.0, 6: 0.0}
WARM_START_SLIPS = (-10, -3, -2, -1, 1, 2, 3, 10)
WARM_START_BATCH = 64


def warm_start_corpus(seed: int, steps: int) -> list[dict]:
    """The prompts of the warm start's `steps` batches, in order (training part of the task only)."""
    return arithmetic_problems(WARM_START_BATCH * steps, seed=10_000 + seed, levels=WARM_START_LEVELS)


def warm_start_answer(problem: dict, rng: random.Random) -> str:
    """What the warm-start corpus writes after a prompt: the answer, or a slip of it.

    >>> rng = random.Random(0)
    >>> sorted({warm_start_answer({"answer": "17", "level": 4}, rng) for _ in range(200)}, key=int)
    ['7', '14', '15', '16', '18', '19', '20', '27']
    >>> warm_start_answer({"answer": "5", "level": 4}, random.Random(2))  # 5 - 10 < 0: 5 + 10
    '15'
    """
    if rng.random() < WARM_START_CORRECT.get(problem["level"], 0.0):
        return problem["answer"]
    answer, slip = int(problem["answer"]), rng.choice(WARM_START_SLIPS)
    return str(answer + slip if answer + slip >= 0 else answer - slip)


def build_base_model(path: str, seed: int = 0, warm_start_steps: int = 600) -> None:
    """Build the tiny model, warm-start it on the corpus above, save it at `path` in HF format.

    A random init solves nothing and RL cannot bootstrap from zero reward, so `warm_start_steps`
    supervised steps (batches of 64, loss on the answer only) first teach the format and the sum,
    with the corpus's slips. Its token entropy ends high (~1 nat): the answers are spread over the
    slips and over guesses at long sums. That is the regime the paper studies: plain GRPO sharpens
    the policy onto its best mode and the entropy collapses; the schedule decides how fast.
    Written to `path + ".tmp"`, then renamed: a crash never leaves half a model at `path`.
    """
    import torch

    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:  # 0.64M parameters gain nothing from a second thread
        torch.set_num_threads(1)
    try:
        _warm_start(path, seed, warm_start_steps)
    finally:
        torch.set_num_threads(threads)


def _warm_start(path: str, seed: int, warm_start_steps: int) -> None:
    import torch
    from tqdm import tqdm
    from transformers import Qwen2ForCausalLM

    from reward import math_reward
    from rollout import generate_rollouts

    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    corpus_rng = random.Random(seed)
    model = Qwen2ForCausalLM(tiny_model_config(len(tokenizer)))
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B = WARM_START_BATCH
    corpus = warm_start_corpus(seed, warm_start_steps)
    probe = arithmetic_problems(64, seed=20_000 + seed, split="test")
    for step in tqdm(range(warm_start_steps), desc="warm start (supervised)", leave=False):
        batch = corpus[step * B : (step + 1) * B]
        prompts = [tokenizer(p["prompt"], add_special_tokens=False).input_ids for p in batch]
        answers = [tokenizer(warm_start_answer(p, corpus_rng), add_special_tokens=False).input_ids + [1]
                   for p in batch]
        length = max(len(p) + len(a) for p, a in zip(prompts, answers))
        ids = torch.zeros(B, length, dtype=torch.long)  # (B, L), left-padded
        labels = torch.full((B, length), -100)  # loss on the answer and its <eos> only
        mask = torch.zeros(B, length, dtype=torch.long)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            row = p + a
            ids[i, length - len(row):] = torch.tensor(row)
            mask[i, length - len(row):] = 1
            labels[i, length - len(a):] = torch.tensor(a)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rollouts = generate_rollouts(model, tokenizer, [p["prompt"] for p in probe], 4, MAX_NEW_TOKENS)
    model.config.update({TAG: "digit-sum"})  # kept by every checkpoint saved from this model
    rewards = [math_reward(text, probe[i // 4]["answer"]) for i, text in enumerate(rollouts.completions)]
    tmp = path + ".tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "warm_start.json"), "w") as f:
        json.dump({"steps": warm_start_steps, "probe_pass@1": sum(rewards) / len(rewards), "seed": seed}, f)
    os.replace(tmp, path)
