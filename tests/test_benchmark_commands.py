"""The comparisons against another commit (train_speed.py, behaviour_check.py): usage errors in one line."""
from __future__ import annotations

import pytest

from conftest import REPO, run_script


@pytest.mark.parametrize("script", ["train_speed.py", "behaviour_check.py"])
def test_an_unknown_commit_is_one_line(script, tmp_path):
    r = run_script([REPO / "benchmarks" / script, "--against", "no-such-commit-0", "--work", tmp_path / "w"],
                   timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"{script}: error: --against no-such-commit-0: not a commit of this repository"], r.stderr


def test_train_speed_refuses_nonpositive_counts(tmp_path):
    r = run_script([REPO / "benchmarks" / "train_speed.py", "--against", "HEAD", "--repeats", "0"], timeout=120)
    assert r.returncode == 2 and "--steps and --repeats must be positive" in r.stderr
