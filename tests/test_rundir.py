"""Run directories: an existing run is never overwritten silently, and simultaneous launches never share one.

The decisions (``refseg.engine.rundir``) are tested in-process; the command lines on conftest's
``trained_run`` (read only), on an ``--overwrite`` start and on two ``accelerate launch`` started at the
same moment with the same clock.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, run_script, tiny_train_args
from refseg.engine.rundir import (LOCK_FILE, RunDirectory, claim_output_dir, create_unique_dir, move_aside,
                                  run_entries)
from refseg.errors import RunDirectoryError

FAULTS = Path(__file__).with_name("faults.py")


def snapshot(root: Path) -> dict:
    """Every path under ``root`` (``root`` too) with its bytes (files) and its mtime (everything)."""
    paths = [root, *sorted(root.rglob("*"))]
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in paths}


def fake_run(path: Path) -> Path:
    """A directory that holds a (tiny, fake) run."""
    (path / "best").mkdir(parents=True)
    (path / "best" / "model.safetensors").write_bytes(b"weights")
    (path / "config.yaml").write_text("train: {}\n")
    (path / "metrics.jsonl").write_text('{"step": 3}\n')
    return path


# ---------------------------------------------------------------------------------------------
# The decisions, in-process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["config.yaml", "state/", "best/", "last/", "metrics.jsonl", ".state.old-1a2b/"])
def test_any_part_of_a_run_counts_as_a_run(tmp_path, entry):
    run = tmp_path / "run"
    run.mkdir()
    assert run_entries(run) == []
    (run / "notes.txt").write_text("mine")  # a user's own file is not a run
    assert run_entries(run) == []
    if entry.endswith("/"):
        (run / entry).mkdir()
    else:
        (run / entry).write_text("x")
    assert run_entries(run) == [entry]
    with pytest.raises(RunDirectoryError) as e:
        RunDirectory.claim(run)
    msg = str(e.value)
    assert "\n" not in msg and "--resume" in msg and "--overwrite" in msg and "another --output-dir" in msg
    assert f"{run}.old-1" in msg


def test_refusal_touches_nothing(tmp_path):
    run = fake_run(tmp_path / "run")
    before = snapshot(tmp_path)
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        RunDirectory.claim(run)
    assert snapshot(tmp_path) == before


def test_overwrite_moves_the_old_run_aside(tmp_path):
    run = fake_run(tmp_path / "run")
    first = snapshot(run)
    claim = RunDirectory.claim(run, overwrite=True)
    assert claim.moved_to == tmp_path / "run.old-1" and claim.path == run
    assert snapshot(tmp_path / "run.old-1") == {**first, ".": snapshot(tmp_path / "run.old-1")["."]}
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # a fresh, empty run
    claim.release()
    fake_run(run)
    assert RunDirectory.claim(run, overwrite=True).moved_to == tmp_path / "run.old-2"  # never replaces .old-1
    assert (tmp_path / "run.old-1" / "best" / "model.safetensors").read_bytes() == b"weights"


def test_resume_and_overwrite_contradict(tmp_path):
    with pytest.raises(RunDirectoryError, match="give one of them"):
        RunDirectory.claim(fake_run(tmp_path / "run"), resume=True, overwrite=True)


def test_empty_or_new_directory_is_claimed_and_released(tmp_path):
    claim = RunDirectory.claim(tmp_path / "a" / "b")
    assert claim.created and (tmp_path / "a" / "b" / LOCK_FILE).is_file()
    claim.release(remove=True)  # a start that failed before writing anything leaves nothing
    assert not (tmp_path / "a" / "b").exists()
    (tmp_path / "empty").mkdir()
    claim = RunDirectory.claim(tmp_path / "empty")
    assert not claim.created
    claim.release(remove=True)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_a_directory_in_use_is_refused(tmp_path):
    """A second launch into a directory a live training holds (lock), by resume or by overwrite."""
    run = tmp_path / "run"
    live = RunDirectory.claim(run)
    (run / "state").mkdir()
    (run / "state" / "trainer_state.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="in use by another training"):
        RunDirectory.claim(run, resume=True)
    with pytest.raises(RunDirectoryError, match="in use by another training"):
        RunDirectory.claim(run, overwrite=True)
    assert (run / "state" / "trainer_state.json").is_file()  # nothing moved
    live.release()
    RunDirectory.claim(run, resume=True).release()


_TRAINER_WITH_A_WORKER = """
import multiprocessing, sys, time
from refseg.engine.rundir import RunDirectory
run = RunDirectory.claim(sys.argv[1], resume=True)
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=False)
worker.start()  # as a DataLoader worker is: forked while the lock is held
print(worker.pid, flush=True)
time.sleep(60)
"""


def test_the_lock_dies_with_the_trainer_not_with_its_forked_workers(tmp_path):
    """kill -9 of a trainer whose forked (DataLoader-like) worker lives on: --resume is accepted at once."""
    run = fake_run(tmp_path / "run")
    (run / "state").mkdir()
    (run / "state" / "trainer_state.json").write_text("{}")
    trainer = subprocess.Popen([sys.executable, "-c", _TRAINER_WITH_A_WORKER, str(run)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    worker_pid = int(trainer.stdout.readline())
    try:
        with pytest.raises(RunDirectoryError, match="in use by another training"):  # a live trainer: refused
            RunDirectory.claim(run, resume=True)
        trainer.kill()
        trainer.wait(timeout=30)
        os.kill(worker_pid, 0)  # the worker is still alive ...
        RunDirectory.claim(run, resume=True).release()  # ... and holds no lock
    finally:
        trainer.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker_pid, signal.SIGKILL)
        trainer.stdout.close()


def test_default_names_are_unique_under_concurrency(tmp_path):
    """16 threads ask for the same timestamped name at once: 16 different directories."""
    got, barrier = [], threading.Barrier(16)

    def claim():
        barrier.wait()
        got.append(create_unique_dir(tmp_path / "runs", "20240101-120000"))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in got)
    assert len(set(names)) == 16
    assert names[0] == "20240101-120000" and "20240101-120000-16" in names


def test_move_aside_never_reuses_a_name(tmp_path):
    (tmp_path / "g.old-1").mkdir()
    (tmp_path / "g.old-1" / "keep").write_text("1")
    (tmp_path / "g").mkdir()
    assert move_aside(tmp_path / "g") == tmp_path / "g.old-2"
    assert (tmp_path / "g.old-1" / "keep").read_text() == "1"


def test_output_directories_of_other_commands(tmp_path):
    """evaluate.py --gallery: new or empty is fine; non-empty is refused unless --overwrite; a file is refused."""
    g = tmp_path / "g"
    assert claim_output_dir(g) == g and g.is_dir()
    assert claim_output_dir(g) == g  # still empty
    (g / "00_idx3.png").write_bytes(b"png")
    before = snapshot(tmp_path)
    with pytest.raises(RunDirectoryError, match=r"--gallery .* is not empty.*--overwrite"):
        claim_output_dir(g)
    assert snapshot(tmp_path) == before
    assert claim_output_dir(g, overwrite=True) == g and not any(g.iterdir())
    assert (tmp_path / "g.old-1" / "00_idx3.png").read_bytes() == b"png"
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file"):
        claim_output_dir(tmp_path / "f")


# ---------------------------------------------------------------------------------------------
# The command lines
# ---------------------------------------------------------------------------------------------


def test_training_into_a_run_without_resume_exits_2_and_changes_nothing(trained_run):
    base, out, _ = trained_run
    before = snapshot(out)
    r = run_script(["train.py", "--no-progress", "--output-dir", out, *tiny_train_args(base / "data", "train.seed=5")])
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "already holds a run" in lines[0] and "--resume" in lines[0] and "--overwrite" in lines[0]
    assert snapshot(out) == before  # every byte, every mtime, no new file
    assert not Path(f"{out}.old-1").exists()


def test_overwrite_keeps_the_old_run(tmp_path):
    """train.py --overwrite moves the old run aside before anything else; a start that then fails (no
    data here) leaves no empty run directory behind, and the old run stays whole."""
    run = fake_run(tmp_path / "run")
    old = snapshot(run)
    r = run_script(["train.py", "--no-progress", "--overwrite", "--output-dir", run, "data.name=refcoco",
                    f"data.root={tmp_path / 'no-data'}", "train.max_steps=1"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert "not found" in r.stderr  # the data, after the claim
    assert f"moved the previous run in {run} to {run}.old-1" in r.stdout
    kept = snapshot(tmp_path / "run.old-1")
    assert {k: v[0] for k, v in kept.items()} == {k: v[0] for k, v in old.items()}  # every byte kept
    assert not run.exists()


@pytest.mark.slow
def test_simultaneous_default_launches_get_their_own_directories(tmp_path):
    """Two `accelerate launch train.py` at the same moment and the same clock second, one fresh data root:
    both finish, in runs/<stamp> and runs/<stamp>-2, and refshapes is generated once (file lock)."""
    stamp, data, log = "20240101-120000", tmp_path / "data", tmp_path / "generations.log"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              str(FAULTS), "clock", stamp, str(REPO / "train.py"), "--no-progress",
              *tiny_train_args(data, "train.max_steps=1", "train.eval_every=100", "train.cpu_threads=1")]
    env = {**os.environ, "FAULTS_LOG": str(log)}
    procs = [subprocess.Popen(launch, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for stdout, stderr, rc in results:
        assert rc == 0, stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == [stamp, f"{stamp}-2"]
    for name in runs:
        assert (tmp_path / "runs" / name / "last" / "model.safetensors").is_file()
        assert not (tmp_path / "runs" / name / LOCK_FILE).exists()
    summaries = sorted(line for stdout, _, _ in results for line in stdout.splitlines() if line.startswith("done:"))
    assert len(summaries) == 2 and f"run: runs/{stamp} " in summaries[0] + summaries[1]
    assert log.read_text().count("generate") == 1


def _readme_launch_options() -> list[str]:
    """The launcher options of the README's own `accelerate launch ... train.py` set-up command."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Set up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    line = next(ln for ln in block.splitlines() if ln.startswith("accelerate launch"))
    return line.split("#")[0].split()[2:line.split().index("train.py")]


def test_a_refusal_under_the_readmes_accelerate_launch_shows_no_traceback(tmp_path):
    """The README's launch command on a directory that holds a run: train.py's one error line, and
    no CalledProcessError traceback from the launcher (accelerate's --quiet)."""
    run = fake_run(tmp_path / "run")
    before = snapshot(run)
    explicit = ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]  # no defaults note either
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *_readme_launch_options(), *explicit,
                        str(REPO / "train.py"), "--output-dir", str(run)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stderr and "CalledProcessError" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("train.py: error:") and "already holds a run" in lines[0], \
        r.stderr
    assert snapshot(run) == before


def test_resume_of_a_finished_run_changes_nothing(trained_run, tmp_path):
    """--resume of a run that ended: one line saying so, exit 0, every file as it was (no second final
    evaluation, best/ last/ summary.json untouched); raising train.max_steps would train on."""
    import shutil

    from refseg.config import load_run_config
    from refseg.engine.rundir import finished_summary

    run = tmp_path / "run"
    shutil.copytree(trained_run[1], run)
    before = snapshot(run)
    r = run_script(["train.py", "--no-progress", "--resume", "--output-dir", run])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is finished (6 steps" in r.stdout and "nothing to resume" in r.stdout, r.stdout
    assert "resuming" not in r.stdout
    assert snapshot(run) == before
    cfg = load_run_config(run / "config.yaml")
    assert finished_summary(run, cfg)["steps"] == 6
    assert finished_summary(run, load_run_config(run / "config.yaml", ["train.max_steps=8"])) is None
    (run / "summary.json").unlink()  # killed before its end: resumable as ever
    assert finished_summary(run, cfg) is None


@pytest.mark.slow
def test_kill_9_of_accelerate_launch_stops_train_py(tmp_path):
    """The launcher killed with SIGKILL cannot pass a signal on: train.py asked Linux for one
    (PR_SET_PDEATHSIG) and stops instead of training on as an orphan."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "-q", "--cpu", "--num_processes", "1",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--num_cpu_threads_per_process", "1", str(FAULTS), "sleep", "1000", str(REPO / "train.py"),
         "--no-progress", "--output-dir", str(out), *tiny_train_args(tmp_path / "data", "train.max_steps=200")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 300
        while not (out / "config.yaml").exists():  # training has started
            assert launcher.poll() is None and time.time() < deadline
            time.sleep(0.1)
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        assert len(children) == 1
        child = int(children[0])
        launcher.kill()
        launcher.wait(timeout=30)
        deadline = time.time() + 30
        while Path(f"/proc/{child}").exists() and time.time() < deadline:
            status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
            if "State:\tZ" in status:
                break
            time.sleep(0.1)
        alive = Path(f"/proc/{child}").exists() and "State:\tZ" not in Path(f"/proc/{child}/status").read_text()
        if alive:
            os.kill(child, signal.SIGKILL)
        assert not alive, "train.py trained on after its launcher was killed"
    finally:
        launcher.kill()
