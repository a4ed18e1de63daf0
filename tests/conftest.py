import os
import sys

import pytest

# tests import the top-level modules the way a reader runs them: from the repository root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def one_thread():
    """train.main in this process, on one thread as train.py runs the built-in model (restored)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_sessionfinish(session, exitstatus):
    """Tests of optional packages skip with a reason that says "pip install ...", so a user sees
    what to install (pytest.ini's -rs lists the reasons). CI installs every optional package and
    sets TESTS_REQUIRE_OPTIONAL=1: there, such a skip means a test silently stopped running, and
    the run fails."""
    if os.environ.get("TESTS_REQUIRE_OPTIONAL") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [] if reporter is None else reporter.stats.get("skipped", [])
    missing = sorted({str(r.longrepr[2]) for r in skipped
                      if isinstance(r.longrepr, tuple) and "pip install" in str(r.longrepr[2])})
    if missing:
        reporter.write_sep("=", "TESTS_REQUIRE_OPTIONAL=1: optional packages are missing", red=True)
        for reason in missing:
            reporter.write_line(reason)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """README's first command, `python train.py`, as a user runs it (a subprocess, from a working
    directory of its own) at a tiny size: warm start (25 steps) + 2 RL steps into runs/default.
    Returns that working directory. Its run and its base model (runs/default/base_model) serve
    every test that reads a finished default run or starts from the warm-started built-in model."""
    import subprocess

    cwd = tmp_path_factory.mktemp("default_run")
    tiny = ["--prompts_per_step", "8", "--group_size", "4", "--eval_prompts", "8", "--eval_n", "4",
            "--eval_k", "1,4", "--warm_start_steps", "25"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "train.py"), "--out_dir", "runs/default",
                           "--steps", "2", *tiny], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return cwd
