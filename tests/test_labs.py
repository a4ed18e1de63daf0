"""Every lab of docs/labs.md runs as written, at a tiny size: its shell block, with the run
directories moved under a temporary directory and small sizes appended to each train.py command
(later flags win), so that the labs never rot. The blocks are `python SCRIPT ARGS` lines and
`wait`; each script runs as __main__ in this process, as `python` would run it, which spares every
command a start of Python, torch and transformers of its own (~5 s of CPU; tests/test_train.py
runs train.py as a subprocess)."""
import os
import re
import runpy
import shlex
import sys

import pytest
import torch

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
    """The block with runs/ under `runs` and TINY sizes on each train.py."""
    lines = []
    for line in code.replace("runs/", f"{runs}/").splitlines():
        if line.startswith("python train.py"):
            background = line.endswith("&")
            line = line.rstrip(" &") + (f" --out_dir {runs}/default" if "--out_dir" not in line else "")
            line += f" {TINY}" + (" &" if background else "")
        lines.append(line)
    return "\n".join(lines)


def run_block(code: str) -> None:
    """Each line as `bash -e` runs it from the repository root, in this process: `python SCRIPT
    ARGS [&]` runs SCRIPT as __main__ with sys.argv [SCRIPT, *ARGS] and fails on a non-zero exit;
    a `&` command ends before the next line starts, so `wait` has nothing left to wait for. Any
    other line fails the test. Torch's thread count (train.py sets 1 for a small model) is put
    back after each command."""
    for line in code.splitlines():
        words = shlex.split(line)
        if words in ([], ["wait"]):
            continue
        assert words[0] == "python" and len(words) > 1, f"not a `python SCRIPT` line: {line}"
        script, args = os.path.join(ROOT, words[1]), words[2:-1] if words[-1] == "&" else words[2:]
        threads, argv = torch.get_num_threads(), sys.argv
        sys.argv = [script, *args]
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code in (None, 0), f"exit {exit_.code}: {line}"
        finally:
            sys.argv = argv
            torch.set_num_threads(threads)


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
    run_block(tiny(LABS[0][1], runs))
    assert os.path.exists(os.path.join(runs, "default", "base_model", "config.json"))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("title, code", LABS[1:], ids=[title for title, _ in LABS[1:]])
def test_lab_runs_as_written(runs, title, code, capsys):
    run_block(tiny(code, runs))
    stdout = capsys.readouterr().out
    out_dirs = re.findall(r"--out_dir (\S+)", tiny(code, runs))
    for out_dir in out_dirs:  # every run of the block wrote its steps
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            assert len(f.read().splitlines()) == 2, out_dir
        assert os.path.basename(out_dir) in stdout  # compare_runs.py named every run
    assert "pass@1 after" in stdout
