"""Every lab of docs/labs.md runs as written, at a tiny size: its shell block, with the run
directories moved under a temporary directory and small sizes appended to each train.py command
(later flags win), so that the labs never rot."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--steps 2 --prompts_per_step 8 --group_size 4 --eval_prompts 8 --eval_n 4 --eval_k 1,4 "
        "--save_every 0 --warm_start_steps 25")


def blocks() -> list[tuple[str, str]]:
    """(title, shell code) of every ```bash block, titled by the heading above it."""
    with open(os.path.join(ROOT, "docs", "labs.md")) as f:
        text = f.read()
    found, title = [], "setup"
    for part in re.split(r"(^## [^\n]*$|```bash\n.*?```)", text, flags=re.M | re.S):
        if part.startswith("## "):
            title = part[3:].split(":")[0]
        elif part.startswith("```bash"):
            found.append((title, part[len("```bash\n"):-3]))
    return found


def tiny(code: str, runs: str) -> str:
    """The block with runs/ under `runs`, TINY sizes on each train.py and this interpreter."""
    lines = []
    for line in code.replace("runs/", f"{runs}/").splitlines():
        if line.startswith("python train.py"):
            background = line.endswith("&")
            line = line.rstrip(" &") + (f" --out_dir {runs}/default" if "--out_dir" not in line else "")
            line += f" {TINY}" + (" &" if background else "")
        lines.append(line.replace("python ", f"{sys.executable} ", 1))
    return "\n".join(lines)


LABS = blocks()


def test_the_labs_document_has_six_labs_each_with_runs_and_a_comparison():
    assert LABS[0] == ("setup", "python train.py\n")
    assert [title for title, _ in LABS[1:]] == [f"Lab {i}" for i in range(1, 7)]
    for _, code in LABS[1:]:
        assert "python train.py" in code and "benchmarks/compare_runs.py" in code and "wait" in code


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The labs' first step, the default run, at a tiny size: it builds the base model they share."""
    runs = str(tmp_path_factory.mktemp("labs") / "runs")
    proc = subprocess.run(["bash", "-ec", tiny(LABS[0][1], runs)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(os.path.join(runs, "default", "base_model", "config.json"))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("title, code", LABS[1:], ids=[title for title, _ in LABS[1:]])
def test_lab_runs_as_written(runs, title, code):
    proc = subprocess.run(["bash", "-ec", tiny(code, runs)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_dirs = re.findall(r"--out_dir (\S+)", tiny(code, runs))
    for out_dir in out_dirs:  # background runs: `wait` does not report their failures, so look
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            assert len(f.read().splitlines()) == 2, out_dir
        assert os.path.basename(out_dir) in proc.stdout  # compare_runs.py named every run
    assert "pass@1 after" in proc.stdout
