"""data.py's loaders and testbed.py's task: rows validated at the door, each hub schema mapped."""
import pytest

from data import DataError, load_problems
from reward import extract_answer, math_reward
from testbed import arithmetic_problems


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
        return rows[name]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_problems("gsm8k") == [{"prompt": "Natalia sold 48 clips...", "answer": "72", "level": None}]
    assert load_problems("math", split="test") == [{"prompt": "Compute 3/4.", "answer": r"\frac{3}{4}", "level": 2}]
    assert load_problems("dapo-math")[0] == {"prompt": "Solve x+1=3. Answer: $Answer", "answer": "2", "level": None}
    assert calls == [("openai/gsm8k", ("main",), "train"), ("DigitalLearningGmbH/MATH-lighteval", (), "test"),
                     ("BytedTsinghua-SIA/DAPO-Math-17k", (), "train")]
    assert math_reward("x = 2, so\nAnswer: 2", load_problems("dapo-math")[0]["answer"]) == 1.0
