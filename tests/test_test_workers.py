"""How ./run test spreads the suite over pytest-xdist workers: FBS_DEBITOR_TEST_WORKERS is checked
against its range before anything runs, and each worker has a FBS_DEBITOR_VAR of its own, so tests
that leave it unset never write into another worker's reports, Data Docs or mail."""

from __future__ import annotations

import os
import subprocess

import pytest

from fbs_debitor.core.settings import HOME


@pytest.mark.parametrize("bad", ["0", "17", "two", "-1", "1.5"])
def test_issue19_FBS_DEBITOR_TEST_WORKERS_outside_1_to_16_is_refused_before_any_test_runs(bad):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FBS_DEBITOR_VAR"))}
    env["FBS_DEBITOR_TEST_WORKERS"] = bad
    proc = subprocess.run([str(HOME / "run"), "test", "--fast", "-k", "nothing_matches_this"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"FBS_DEBITOR_TEST_WORKERS={bad}: allowed is a whole number from 1 to 16" in proc.stderr
    assert "ruff check" not in proc.stderr and "pytest" not in proc.stderr   # refused before anything ran


def test_issue19_each_worker_writes_under_a_default_var_of_its_own():
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        pytest.skip("run in one process (FBS_DEBITOR_TEST_WORKERS=1): there is no other worker to keep apart")
    var = os.environ["FBS_DEBITOR_VAR"]
    assert os.path.isabs(var) and os.path.isdir(var) and f"-{worker}-" in os.path.basename(var)
    assert os.path.realpath(var) != os.path.realpath(HOME / "var")
    from fbs_debitor.core import settings

    assert str(settings.value("FBS_DEBITOR_VAR")) == var   # what the code under test reads
