import os
import sys

import pytest

# tests import the top-level modules the way a reader runs them: from the repository root
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
