"""`--jobs N`: independent runs and stacks in worker processes give the same records as
one process, and parallel workers that need the same data set wait for one build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learning_to_look.cli import main
from learning_to_look.data import store
from learning_to_look.errors import L2LError
from learning_to_look.training.parallel import run_tasks


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    raise L2LError(f"bad input {x}")


def test_run_tasks_returns_every_result_with_its_index():
    for jobs in (1, 2):
        assert dict(run_tasks(_square, [(3,), (4,), (5,)], jobs)) == {0: 9, 1: 16, 2: 25}


def test_a_worker_error_reaches_the_caller_as_itself():
    with pytest.raises(L2LError, match="bad input [12]"):  # whichever worker fails first
        list(run_tasks(_fail, [(1,), (2,)], 2))
    with pytest.raises(L2LError, match="--jobs"):
        list(run_tasks(_square, [(1,)], 0))


def _sleep_forever(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "R"
    return state != "Z"


def test_workers_stop_when_their_parent_is_killed(tmp_path):
    pid_file = tmp_path / "worker.pid"
    script = ("import sys; sys.path.insert(0, sys.argv[2]); from test_parallel import _sleep_forever; "
              "from learning_to_look.training.parallel import run_tasks; "
              "list(run_tasks(_sleep_forever, [(sys.argv[1],), (sys.argv[1] + '2',)], 2))")
    parent = subprocess.Popen([sys.executable, "-c", script, str(pid_file), str(Path(__file__).parent)])
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    parent.kill()  # SIGKILL: no clean-up in the parent
    parent.wait()
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(worker)


def _train(tmp: Path, data_dir: Path, jobs: int) -> dict[int, dict]:
    runs = tmp / f"runs{jobs}"
    code = main(["train", "--dataset", "decoymnist", "--method", "vanilla", "--train-subset", "150", "--epochs", "2",
                 "--seeds", "0,1", "--jobs", str(jobs), "--runs-dir", str(runs), "--data-dir", str(data_dir),
                 "--quiet"])
    assert code == 0
    results = [json.loads(p.read_text()) for p in runs.rglob("result.json")]
    return {r["config"]["seed"]: r for r in results}


def test_train_results_do_not_depend_on_jobs(tmp_path, data_dir):
    one, two = _train(tmp_path, data_dir, 1), _train(tmp_path, data_dir, 2)
    assert sorted(one) == sorted(two) == [0, 1]
    for seed in one:
        assert one[seed]["test"]["accuracy"] == two[seed]["test"]["accuracy"]
        assert [h["val_acc"] for h in one[seed]["history"]] == [h["val_acc"] for h in two[seed]["history"]]


def test_parallel_builds_share_one_folder(tmp_path):
    """Two different data sets build side by side; a second build of the same one waits
    for the first and uses its file (what --jobs workers on a fresh clone do)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "L2L_DATA_DIR": str(tmp_path)}
    l2l = Path(sys.executable).parent / "l2l"
    procs = [subprocess.Popen([l2l, "data", "build", name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("mnist", "decoymnist", "mnist")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert (tmp_path / "mnist.npz").read_bytes()[:100] and (tmp_path / "decoymnist.npz").exists()
    assert not list(tmp_path.glob(".*lock")) and not list(tmp_path.glob(".*.tmp"))


def test_a_waiting_build_gives_up_with_one_line(tmp_path, monkeypatch):
    (tmp_path / ".mnist.npz.lock").write_text(str(os.getppid()))  # a live process that is not this one
    monkeypatch.setattr(store, "BUILD_WAIT_SECONDS", 0.6)
    with pytest.raises(L2LError, match="already running `l2l data build mnist`"):
        store.build_dataset("mnist", tmp_path)


def test_a_bad_jobs_variable_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("L2L_JOBS", "two")
    code = main(["train", "--dataset", "mnist", "--seeds", "0,1", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "L2L_JOBS='two'" in err and len(err.strip().splitlines()) == 1
