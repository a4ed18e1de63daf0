import itertools
import math
from fractions import Fraction

import pytest

from eval_passk import pass_at_k, summarize


def exact(n, c, k):
    """1 - C(n-c, k) / C(n, k) in exact rational arithmetic."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (16, 1, 16),
                                     (100, 7, 10), (1024, 1, 1), (1024, 5, 512), (1024, 1000, 3),
                                     (1024, 0, 1024)])
def test_matches_exact_binomial_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), rel=1e-12, abs=1e-14)


def brute_force(n, c, k):
    """The definition itself: over every way to pick k of the n samples (the first c correct),
    the share of picks that hold at least one correct sample."""
    picks = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in pick) for pick in picks) / len(picks)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_matches_brute_force_enumeration_of_k_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_hand_worked_values():
    assert pass_at_k(4, 1, 2) == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the fraction correct
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every k-subset has a correct sample


def test_k_larger_than_n_is_a_clear_error():
    with pytest.raises(ValueError, match=r"pass@8 needs 1 <= k <= n = 4"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_summarize_averages_over_prompts():
    out = summarize([0, 4, 1], n=4, ks=[1, 2])
    assert out["pass@1"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert out["pass@2"] == pytest.approx((0 + 1 + 0.5) / 3)


def test_evaluation_samples_from_a_stream_of_its_own():
    """With a seed, the samples do not depend on what was drawn before, and the caller's random
    stream is left where it was."""
    import torch

    from eval_passk import evaluate_on_ranks
    from tiny import tiny_policy

    model, tok = tiny_policy()
    problems = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(4)]

    def evaluate(seed):
        return evaluate_on_ranks(model, tok, problems, lambda completion, answer: float(completion == answer),
                                 4, [1, 4], 3, seed=seed, keep_samples=4)

    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = evaluate(seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(1000)  # other draws in between
    second = evaluate(seed=7)
    assert first["samples"] == second["samples"] and first["entropy"] == second["entropy"]
    other = evaluate(seed=8)
    assert [s["completion"] for s in other["samples"]] != [s["completion"] for s in first["samples"]]


def test_command_samples_its_problems_and_records_its_verifier(tmp_path):
    """--limit 6 of a file ordered by level is a seeded sample of it (train.py's held-out set for
    --eval_prompts 6), and --out names the verifier that scored."""
    import json

    from data import HELD_OUT_SEED, load_problems
    from eval_passk import main
    from tiny import tiny_policy

    model, tok = tiny_policy()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    path = tmp_path / "ordered.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i % 10}+{i // 10}=", "answer": str(i % 10 + i // 10),
                                        "level": 1 + (i >= 50)}) + "\n" for i in range(100)))
    out = tmp_path / "out.json"
    main(["--model", str(tmp_path / "model"), "--dataset", str(path), "--limit", "6", "--n", "2", "--k", "1,2",
          "--max_new_tokens", "3", "--chat_template", "none", "--system_prompt", "", "--verifier", "builtin",
          "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["verifier_used"] == "built-in rule"
    prompts = [p["prompt"] for p in record["per_problem"]]
    assert prompts == [p["prompt"] for p in load_problems(str(path), limit=6, sample_seed=HELD_OUT_SEED)]
    assert prompts != [p["prompt"] for p in load_problems(str(path), limit=6)]
