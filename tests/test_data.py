"""data.py's loaders and testbed.py's task: rows validated at the door, each hub schema mapped,
duplicates dropped, held-out sets held out."""
import collections
import itertools
import json

import pytest

from data import DataError, load_problems
from reward import extract_answer, math_reward
from testbed import TASK_LEVELS, arithmetic_problems, is_held_out, warm_start_corpus


def test_arithmetic_task_is_deterministic_and_verifiable():
    a, b = arithmetic_problems(50, seed=3), arithmetic_problems(50, seed=3)
    assert a == b and a != arithmetic_problems(50, seed=4)
    for p in a:
        terms = [int(t) for t in p["prompt"].rstrip("=").split("+")]
        assert len(terms) == p["level"] + 1 and p["answer"] == str(sum(terms))
        assert math_reward(p["answer"], p["answer"]) == 1.0
        assert math_reward(str(int(p["answer"]) + 1), p["answer"]) == 0.0


def test_gsm8k_and_math_shapes(tmp_path):
    # the answer conventions of GSM8K solutions and MATH solutions, through the local-file loader
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"question": "How many?", "solution": "... so #### 1,234", "level": "Level 3"}\n')
    rows = load_problems(str(path), prompt_field="question", answer_field="solution")
    assert rows == [{"prompt": "How many?", "answer": "... so #### 1,234", "level": 3}]
    assert math_reward("We add them up. #### 1234", extract_answer(rows[0]["answer"])) == 1.0
    assert math_reward(r"Thus $\boxed{\frac{3}{4}}$.", extract_answer(r"... = \boxed{\frac{3}{4}}")) == 1.0


def test_load_problems_errors_name_file_row_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: missing field 'answer'"):
        load_problems(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "1+1=", "answer": "2"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken.jsonl: line 2: not valid JSON"):
        load_problems(str(broken))
    level = tmp_path / "level.jsonl"
    level.write_text('{"prompt": "q", "answer": "2", "level": "hard"}\n')
    with pytest.raises(DataError, match=r"line 1: field 'level' must be an integer"):
        load_problems(str(level))
    with pytest.raises(DataError, match="no such file"):
        load_problems(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type"):
        load_problems(str(tmp_path / "x.csv"))


def test_load_problems_json_and_parquet(tmp_path):
    import json

    rows = [{"q": "1+1=", "a": 2}, {"q": "2+3=", "a": 5}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    assert load_problems(str(tmp_path / "d.json"), prompt_field="q", answer_field="a")[1]["answer"] == "5"
    pd = pytest.importorskip("pandas", reason="pip install pandas pyarrow (datasets brings both)")
    pytest.importorskip("pyarrow", reason="pip install pandas pyarrow (datasets brings both)")
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    got = load_problems(str(tmp_path / "d.parquet"), prompt_field="q", answer_field="a")
    assert [p["prompt"] for p in got] == ["1+1=", "2+3="]


def test_hub_loaders_map_rows_of_each_schema(monkeypatch):
    """No download: load_dataset is replaced by rows shaped as each data set's card documents."""
    import datasets

    rows = {
        "openai/gsm8k": [{"question": "Natalia sold 48 clips...", "answer": "48 + 24 = 72\n#### 72"}],
        "DigitalLearningGmbH/MATH-lighteval": [{"problem": "Compute 3/4.", "level": "Level 2", "type": "Algebra",
                                                "solution": r"It is $\boxed{\frac{3}{4}}$."}],
        "BytedTsinghua-SIA/DAPO-Math-17k": [{"data_source": "math_dapo", "ability": "MATH",
                                             "prompt": [{"role": "user", "content": "Solve x+1=3. Answer: $Answer"}],
                                             "reward_model": {"ground_truth": "2", "style": "rule"}}],
    }
    calls = []

    def fake_load_dataset(name, *args, split=None):
        calls.append((name, args, split))
        return datasets.Dataset.from_list(rows[name])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_problems("gsm8k") == [{"prompt": "Natalia sold 48 clips...", "answer": "72", "level": None}]
    assert load_problems("math", split="test") == [{"prompt": "Compute 3/4.", "answer": r"\frac{3}{4}", "level": 2}]
    assert load_problems("dapo-math")[0] == {"prompt": "Solve x+1=3. Answer: $Answer", "answer": "2", "level": None}
    assert calls == [("openai/gsm8k", ("main",), "train"), ("DigitalLearningGmbH/MATH-lighteval", (), "test"),
                     ("BytedTsinghua-SIA/DAPO-Math-17k", (), "train")]
    assert math_reward("x = 2, so\nAnswer: 2", load_problems("dapo-math")[0]["answer"]) == 1.0


def sums(problems):
    """Each problem as its terms in sorted order: 3+5= and 5+3= are the same sum."""
    return {tuple(sorted(p["prompt"].rstrip("=").split("+"))) for p in problems}


def test_built_in_held_out_set_is_disjoint_from_training_and_warm_start():
    """At the real sizes: the 2000 training prompts, the whole warm-start corpus (600 batches of
    64, for three of the seeds the runs use), 128 and 512 held-out
    prompts. No held-out sum appears in either, as a string or with its terms reordered."""
    train = load_problems("arithmetic")
    held_out = load_problems("arithmetic", "test", limit=512)
    assert held_out[:128] == load_problems("arithmetic", "test", limit=128)  # one set, two sizes
    assert len(train) == 2000 and set(collections.Counter(p["level"] for p in held_out)) == set(TASK_LEVELS)
    assert all(280 < n < 390 for n in collections.Counter(p["level"] for p in train).values())  # 2000 / 6
    seen = sums(train)
    for seed in (0, 40, 100):  # the default run and labs, regime.py's first seed, compare_schedules.py's
        seen |= sums(warm_start_corpus(seed, 600))
    assert not sums(held_out) & seen
    assert not {p["prompt"] for p in held_out} & {p["prompt"] for p in train}


def test_every_level_holds_out_a_share_of_its_sums():
    for level, held in [(1, 14), (2, 110), (3, 908)]:  # of 100, 1000, 10000 prompts: by enumeration
        prompts = list(itertools.product(range(10), repeat=level + 1))
        assert sum(is_held_out(list(t)) for t in prompts) == held
    assert all(is_held_out([int(t) for t in p["prompt"].rstrip("=").split("+")])
               for p in load_problems("arithmetic", "test", limit=64))


def test_held_out_files_are_a_seeded_sample_not_the_first_rows(tmp_path):
    """A file ordered by level: 100 rows of level 1, then 100 of level 5. Its first 20 rows are all
    level 1; a seeded sample of 20 draws both levels, the same each time, in the file's order, and
    holds the sample of 10. Without a limit the sample is the whole file."""
    path = tmp_path / "ordered.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": str(i), "level": 1 + 4 * (i >= 100)})
                            + "\n" for i in range(200)))
    first = load_problems(str(path), limit=20)
    assert {p["level"] for p in first} == {1}
    sample = load_problems(str(path), limit=20, sample_seed=0)
    assert {p["level"] for p in sample} == {1, 5} and len({p["prompt"] for p in sample}) == 20
    assert sample == load_problems(str(path), limit=20, sample_seed=0)
    assert [int(p["answer"]) for p in sample] == sorted(int(p["answer"]) for p in sample)
    assert all(p in sample for p in load_problems(str(path), limit=10, sample_seed=0))
    assert load_problems(str(path), sample_seed=0) == load_problems(str(path))


def test_repeated_prompts_are_dropped_keeping_the_first(tmp_path):
    path = tmp_path / "repeated.jsonl"
    rows = [("a", "1"), ("b", "2"), ("a", "9"), ("c", "3"), ("b", "8")] * 3
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    assert [(p["prompt"], p["answer"]) for p in load_problems(str(path))] == [("a", "1"), ("b", "2"), ("c", "3")]


def test_parquet_nulls_levels_as_floats_and_null_answers(tmp_path):
    """A level column with one null is read by pandas as floats (3.0, NaN): 3.0 is level 3, NaN no
    level. A null answer is an error naming the row and the field, never the text "nan"."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pd.DataFrame({"prompt": ["p1", "p2"], "answer": ["1", "2"], "level": [3, None]}).to_parquet(tmp_path / "a.parquet")
    assert [p["level"] for p in load_problems(str(tmp_path / "a.parquet"))] == [3, None]
    pd.DataFrame({"prompt": ["p1", "p2"], "answer": [1.0, None]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet: row 2: empty or null field 'answer'"):
        load_problems(str(tmp_path / "b.parquet"))
    (tmp_path / "c.jsonl").write_text('{"prompt": "p", "answer": null}\n')
    with pytest.raises(DataError, match=r"c.jsonl: line 1: empty or null field 'answer'"):
        load_problems(str(tmp_path / "c.jsonl"))


def test_hub_rows_deduplicated_and_validated(monkeypatch):
    """DAPO-Math-17k's hub copy repeats each prompt ~100 times; a null ground truth names its field;
    a MATH solution that boxes two answers keeps both, as a list the verifier reads in any order."""
    import datasets

    def dapo_row(i, answer):
        return {"prompt": [{"role": "user", "content": f"Problem {i}. Answer: $Answer"}],
                "reward_model": {"ground_truth": answer, "style": "rule"}}

    dapo = [dapo_row(i, str(i)) for _ in range(100) for i in range(5)]
    math_rows = [{"problem": "Solve x^2 = 2x + 15.", "level": "Level 3",
                  "solution": r"So $x = \boxed{5}$ or $x = \boxed{-3}$; check: $\boxed{5}$ works."}]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, split=None: datasets.Dataset.from_list(
        dapo if "DAPO" in name else math_rows))
    problems = load_problems("dapo-math")
    assert [p["prompt"] for p in problems] == [f"Problem {i}. Answer: $Answer" for i in range(5)]
    [root] = load_problems("math")
    assert root["answer"] == "5, -3"
    assert math_reward(r"$x = \boxed{-3}$ and $x = \boxed{5}$", root["answer"]) == 1.0
    assert math_reward(r"$x = \boxed{5}$", root["answer"]) == 0.0
    dapo[3] = dapo_row(3, None)
    with pytest.raises(DataError, match=r"dapo-math: row 3: no reward_model.ground_truth"):
        load_problems("dapo-math")
