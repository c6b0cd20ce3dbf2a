"""Scaling out: the launchers (submitit's local executor stands in for SLURM), `l2l tune`
on validation alone, and the GPU path's switches, all on tiny shapes-bg runs on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time

import pytest
import torch

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.errors import L2LError
from learning_to_look import io
from learning_to_look.io import folder_lock
from learning_to_look.nn.backbones import build_backbone
from learning_to_look.record import read_record
from learning_to_look.training import accel
from learning_to_look.training.launchers import Slurm, SlurmOptions
from learning_to_look.training.resolve import resolve, resolve_run
from learning_to_look.training.run import run, run_dir_for

submitit = pytest.importorskip("submitit")
optuna = pytest.importorskip("optuna")

TINY = ["--dataset", "shapes-bg", "--method", "vanilla", "--epochs", "1", "--train-subset", "60", "--quiet"]


def _records(folder):
    return sorted((read_record(p.parent) for p in folder.rglob("result.json")), key=lambda r: r.config.seed)


def test_slurm_jobs_on_the_local_executor_write_the_records_a_local_run_writes(shapes_dir, tmp_path, capsys):
    args = [*TINY, "--seeds", "3", "--data-dir", str(shapes_dir)]
    assert main(["train", *args, "--runs-dir", str(tmp_path / "here")]) == 0
    assert main(["train", *args, "--runs-dir", str(tmp_path / "jobs"), "--launcher", "slurm",
                 "--slurm-cluster", "local", "--slurm-time", "5"]) == 0
    (here,), (job,) = _records(tmp_path / "here"), _records(tmp_path / "jobs")
    assert job.test.accuracy == here.test.accuracy and job.history[0]["val_acc"] == here.history[0]["val_acc"]
    assert job.raw["environment"]["threads"] == 1  # the job's one core, as a local worker's
    assert list((tmp_path / "jobs" / ".submitit").glob("*_log.out"))  # the job kept its log
    first = capsys.readouterr().out.splitlines()[-2]
    assert main(["train", *args, "--runs-dir", str(tmp_path / "jobs"), "--launcher", "slurm",
                 "--slurm-cluster", "debug"]) == 0  # a rerun finds the record and trains nothing
    assert capsys.readouterr().out.splitlines()[0] == first


def test_a_sweep_runs_each_stack_as_one_job(shapes_dir, tmp_path):
    assert main(["sweep", "--dataset", "shapes-bg", "--method", "l2l", "--epochs", "2", "--e-att", "1",
                 "--train-subset", "60", "--grid", "lambda0=1,10", "--seeds", "0", "--max-stack", "1", "--quiet",
                 "--data-dir", str(shapes_dir), "--runs-dir", str(tmp_path), "--launcher", "slurm",
                 "--slurm-cluster", "debug"]) == 0
    (folder,) = (tmp_path / "sweeps").iterdir()
    assert json.loads((folder / "selection.json").read_text())["chosen"]["lambda0"] in (1.0, 10.0)
    assert len(_records(folder)) == 2 and len(list((folder / "stacks").glob("*"))) == 0  # two stacks, done


def test_reproduce_trains_its_runs_as_jobs(shapes_dir, tmp_path):
    from learning_to_look.training.reproduce import Cell, _train

    cell = Cell("shapes-bg", "vanilla")
    planned = resolve_run(cell.config({"epochs": 1, "train_subset": 60}, 0), shapes_dir)
    lines: list[str] = []
    failed = _train([], [(cell, planned)], 1, tmp_path, shapes_dir, False, None, lines.append,
                    Slurm(SlurmOptions(cluster="debug")))
    assert failed == [] and lines[0] == "1 runs to train in slurm jobs" and "[1/1] shapes-bg vanilla" in lines[1]
    assert [r.config.seed for r in _records(tmp_path)] == [0]


def test_a_failed_job_is_one_line_naming_its_log(tmp_path):
    with pytest.raises(L2LError, match=r"job .* failed: ValueError: invalid literal .*x.*; see .*\.err"):
        list(Slurm(SlurmOptions(cluster="local")).map(int, [("x",)], None, runs_dir=tmp_path))


@pytest.mark.parametrize("args, message", [
    (["--launcher", "slurm"], "sbatch is not on this machine's PATH"),
    (["--launcher", "pbs"], "unknown launcher 'pbs'; choose one of: local, slurm"),
    (["--launcher", "slurm", "--slurm-cluster", "local", "--slurm-mem", "0"], "--slurm-mem must be at least 1"),
])
def test_launcher_bad_inputs_are_one_line(args, message, shapes_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("learning_to_look.training.launchers.shutil.which", lambda name: None)
    assert main(["train", *TINY, "--data-dir", str(shapes_dir), "--runs-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not list(tmp_path.rglob("result.json"))


def test_slurm_without_submitit_is_one_line(shapes_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    assert main(["train", *TINY, "--runs-dir", str(tmp_path), "--launcher", "slurm"]) == 2
    assert "needs submitit, which is not installed; pip install 'learning-to-look[slurm]'" in capsys.readouterr().err


def test_a_lock_from_another_node_is_stale_only_once_its_holder_stops_refreshing_it(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    lock.write_text(f"999999999 {socket.gethostname()}-elsewhere\n")  # a pid dead here may live there
    with pytest.raises(L2LError, match="pid 999999999 on .*-elsewhere"):
        with folder_lock(tmp_path, "this run"):
            pass
    old = time.time() - io.LOCK_STALE_SECONDS - 5
    os.utime(lock, (old, old))  # its job was killed at the time limit: no refresh since
    monkeypatch.setattr(io, "LOCK_REFRESH_SECONDS", 0.05)
    with folder_lock(tmp_path, "this run") as held:
        assert held.read_text().split() == [str(os.getpid()), socket.gethostname()]
        os.utime(held, (old, old))
        time.sleep(0.3)
        assert time.time() - held.stat().st_mtime < 5  # the holder keeps it fresh for other nodes


def test_tune_chooses_on_validation_and_reads_test_once(shapes_dir, tmp_path, capsys, monkeypatch):
    import learning_to_look.training.tune as tune

    reads = []
    real_read = tune.read_record
    monkeypatch.setattr(tune, "read_record", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    assert main(["tune", "--dataset", "shapes-bg", "--method", "l2l", "--epochs", "2", "--e-att", "0",
                 "--train-subset", "60", "--trials", "3", "--space", "lambda0=log:1:1000",
                 "--space", "target=cat:outline,filled", "--quiet", "--data-dir", str(shapes_dir),
                 "--runs-dir", str(tmp_path)]) == 0
    (folder,) = (tmp_path / "tunes").iterdir()
    summary = json.loads((folder / "tune.json").read_text())
    records = _records(folder)
    assert summary["trials"] == {"complete": 3} and len(reads) == 1  # the best trial's record, once, at the end
    assert {r.role for r in records} == {"tune"}
    best = max(records, key=lambda r: r.selection["score"])  # chosen by validation score alone
    assert summary["run"] == str(best.run_dir) and summary["test_acc"] == best.test.accuracy
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")
    # each epoch's validation score reached the pruner
    assert all(len(t.intermediate_values) == 2 for t in study.trials)
    assert "test acc" not in capsys.readouterr().out.split("best on validation")[0]


@pytest.mark.parametrize("space, message", [
    ("colour=log:1:2", "names no field a search can vary"),
    ("seed=int:0:4", "a search compares settings on one seed"),
    ("lambda0=log:100:10", "empty range"),
    ("lambda0=log:0:10", "LOW > 0 for log"),
    ("target=cat:", "no choices"),
    ("e_att=int:0:5", "E_att must lie below the number of epochs"),
])
def test_tune_bad_spaces_are_one_line(space, message, shapes_dir, tmp_path, capsys):
    assert main(["tune", "--dataset", "shapes-bg", "--method", "l2l", "--epochs", "2", "--e-att", "0",
                 "--space", space, "--data-dir", str(shapes_dir), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "tunes").exists()


def test_tune_refuses_a_field_the_method_does_not_read(shapes_dir, tmp_path, capsys):
    """vanilla has no lambda: every trial would be the same model."""
    assert main(["tune", "--dataset", "shapes-bg", "--method", "vanilla", "--epochs", "1",
                 "--space", "lambda0=log:1:1000", "--data-dir", str(shapes_dir), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resolves to the same run" in err and len(err.strip().splitlines()) == 1


def test_bf16_autocast_runs_on_the_cpu_and_names_its_own_folder(shapes_dir, tmp_path):
    cfg = TrainConfig(dataset="shapes-bg", method="l2l", epochs=1, e_att=0, train_subset=60)
    with accel.autocast(dataclasses.replace(cfg, precision="bf16"), torch.device("cpu")):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.bfloat16
    with accel.autocast(cfg, torch.device("cpu")):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.float32
    fp32 = run(cfg, runs_dir=tmp_path, data_dir=shapes_dir, progress=False)
    bf16 = run(dataclasses.replace(cfg, precision="bf16"), runs_dir=tmp_path, data_dir=shapes_dir, progress=False)
    assert bf16.config.precision == "bf16" and bf16.run_dir != fp32.run_dir
    assert bf16.history[0]["train_loss"] == pytest.approx(fp32.history[0]["train_loss"], rel=0.05)
    # fp32 and no compile are the defaults that keep every earlier run's folder name
    older = {k: v for k, v in resolve(cfg).to_dict().items() if k not in ("precision", "compile")}
    assert run_dir_for(resolve(cfg), tmp_path) == run_dir_for(TrainConfig.from_dict(older), tmp_path)


def test_gpu_switches_are_no_ops_on_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    resnet, lenet = build_backbone("resnet18"), build_backbone("lenet-gap")
    assert accel.memory_format(resnet, cuda) == torch.channels_last  # decided without a GPU
    assert accel.memory_format(lenet, cuda) == accel.memory_format(resnet, cpu) == torch.contiguous_format
    compiled = accel.accelerate(lenet, TrainConfig(compile=True), cpu)
    assert compiled is lenet and compiled._compiled_call_impl is None
    assert list(compiled.state_dict())[0] == "conv1.weight"


def test_prefetch_takes_one_batch_ahead_in_order():
    taken = []
    out = accel.prefetched(range(3), lambda i: taken.append(i) or i * 10)
    assert next(out) == 0 and taken == [0, 1]
    assert list(out) == [10, 20] and taken == [0, 1, 2]


def test_stacks_refuse_bf16_and_compile(shapes_dir, tmp_path, capsys):
    assert main(["sweep", "--dataset", "shapes-bg", "--method", "l2l", "--epochs", "2", "--e-att", "1",
                 "--grid", "lambda0=1,10", "--config", str(_config(tmp_path, precision="bf16")),
                 "--data-dir", str(shapes_dir), "--runs-dir", str(tmp_path)]) == 2
    assert "stacked training runs its own fp32 kernels" in capsys.readouterr().err


def _config(folder, **settings):
    path = folder / "cfg.json"
    path.write_text(json.dumps(settings))
    return path


@pytest.mark.parametrize("settings, message", [
    ({"precision": "fp16"}, "unknown precision 'fp16'; choose one of: fp32, bf16"),
    ({"compile": "yes"}, "compile must be true or false, got 'yes'; pass e.g. --compile or --no-compile"),
])
def test_gpu_settings_bad_inputs_are_one_line(settings, message, shapes_dir, tmp_path, capsys):
    assert main(["train", *TINY, "--config", str(_config(tmp_path, **settings)), "--data-dir", str(shapes_dir),
                 "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
