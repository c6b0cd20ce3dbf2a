"""The bad-input battery for `l2l train`, `l2l report`, `l2l reproduce`, config files and
damaged run files: every case exits 2 with exactly one line on stderr and no traceback,
and a run refused before training leaves no folder behind. The `data` and `maps`
commands have their own battery in test_bad_inputs_maps_data.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from learning_to_look import cli
from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.training.resolve import resolve
from learning_to_look.training.run import run, run_dir_for

FAST = ["--train-subset", "200", "--epochs", "2", "--e-att", "1", "--quiet"]


def one_error_line(capsys, code: int, needle: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle.lower() in lines[0].lower(), err
    return lines[0]


TRAIN_CASES = [
    (["--seeds", "99999999999999999999"], "malformed --seeds"),
    (["--seeds", "1,,2"], "malformed --seeds"),
    (["--seeds", "-1"], "malformed --seeds"),
    (["--seeds", "5-2"], "malformed --seeds"),
    (["--seeds", "0-99999999"], "malformed --seeds"),
    (["--seeds", "abc"], "malformed --seeds"),
    (["--seeds", "1,1"], "malformed --seeds"),
    (["--momentum", "-1"], "momentum must be"),
    (["--momentum", "1.5"], "momentum must be"),
    (["--weight-decay", "-1"], "weight_decay must be"),
    (["--step-size", "0"], "step_size must be"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda:x"], "unknown device"),
    (["--input-transform", "bogus"], "unknown input_transform"),
    (["--lr", "nan"], "finite"),
    (["--lr", "inf"], "finite"),
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--gamma", "-5"], "gamma must be"),
    (["--gamma", "0"], "gamma must be"),
    (["--gamma", "2"], "gamma must be"),
    (["--epochs", "0"], "epochs must be"),
    (["--batch-size", "0"], "batch_size must be"),
    (["--e-att", "-1"], "e_att must be"),
    (["--lambda0", "-1"], "lambda0 must be"),
    (["--lambda0", "inf"], "finite"),
    (["--selection", "best"], "unknown selection"),
    (["--phase1", "bogus"], "unknown phase1"),
    (["--target", "bogus"], "unknown target"),
    (["--method", "nope"], "unknown method"),
    (["--dataset", "nope"], "unknown data set"),
    (["--backbone", "resnet"], "unknown backbone"),
    (["--maps", "nope"], "no cached map set"),
    (["--method", "l2l", "--backbone", "cdep-cnn"], "global-average-pooling"),
    (["--train-subset", "1"], "train_subset must be"),
    (["--train-subset", "0"], "train_subset must be"),
    (["--epochs", "x"], "invalid value"),
    (["--lr", "fast"], "invalid value"),
    (["--bogus-flag"], "no such option"),
    (["extra-argument"], "unexpected extra argument"),
    (["--maps", "not-decoy", "--dataset", "colormnist"], "decoy"),
    (["--method", "l2l", "--e-att", "5"], "E_att must lie below"),
    (["--method", "cdep", "--dataset", "mnist"], "mnist declares none"),
    (["--method", "cdep", "--backbone", "resnet18"], "does not support"),
]


@pytest.mark.parametrize("args,needle", TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_train_flags(args, needle, data_dir, tmp_path, capsys):
    code = main(["train", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"), *FAST, *args])
    one_error_line(capsys, code, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder left


def test_cuda_without_cuda(data_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path), *FAST, "--device", "cuda"])
    one_error_line(capsys, code, "CUDA is not available")


CONFIG_CASES = [
    ('epochs: "ten"\n', "epochs must be an integer"),
    ("epochs: 2.5\n", "epochs must be an integer"),
    ("epochs: true\n", "epochs must be an integer"),
    ('lr: "abc"\n', "lr must be a number"),
    ("lr: .nan\n", "finite"),
    ("map_options: 5\n", "map_options must be a mapping"),
    ("map_options: {bogus: 1}\n", "unknown map option"),
    ("maps: degraded-oracle\nmap_options: {degradation: smear}\n", "unknown degradation"),
    ("maps: clip-0123456789\nmap_options: {variant: naclip}\n", "cached map set"),
    ("dataset: null\n", "dataset must be a string"),
    ("seed: -3\n", "seed must be"),
    ("epochz: 3\n", "unknown config keys"),
    ("- a\n- b\n", "must hold a mapping"),
    ("a: [\n", "not valid YAML"),
    ("device: [cpu]\n", "device must be a string"),
]


@pytest.mark.parametrize("text,needle", CONFIG_CASES, ids=[n for _, n in CONFIG_CASES])
def test_config_files(text, needle, data_dir, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(text)
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    one_error_line(capsys, code, needle)
    assert not (tmp_path / "runs").exists()


def test_config_path_problems(tmp_path, capsys):
    one_error_line(capsys, main(["train", "--config", str(tmp_path / "missing.yaml")]), "does not exist")
    one_error_line(capsys, main(["train", "--config", str(tmp_path)]), "does not exist")


def test_folders_under_a_regular_file(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["train", "--data-dir", str(data_dir), "--runs-dir", str(blocker / "runs"), *FAST,
                 "--method", "vanilla", "--dataset", "decoymnist"])
    one_error_line(capsys, code, "cannot write or read")
    code = main(["train", "--data-dir", str(blocker / "data"), "--runs-dir", str(tmp_path / "runs"), *FAST,
                 "--method", "vanilla", "--dataset", "decoymnist"])
    one_error_line(capsys, code, "cannot write or read")


CHECKPOINTS = {"empty": b"", "random bytes": np.random.default_rng(0).bytes(4096),
               "truncated zip": b"PK\x03\x04" + b"\x00" * 40, "not a checkpoint": None}


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_a_damaged_checkpoint_is_set_aside_and_the_run_starts_again_saying_so(kind, data_dir, tmp_path, caplog):
    cfg = resolve(TrainConfig(dataset="decoymnist", method="vanilla", train_subset=200, epochs=2, e_att=1, seed=37))
    folder = run_dir_for(cfg, tmp_path)
    folder.mkdir(parents=True)
    if CHECKPOINTS[kind] is None:
        torch.save({"weights": 1}, folder / "checkpoint.pt")
    else:
        (folder / "checkpoint.pt").write_bytes(CHECKPOINTS[kind])
    code = main(["train", "--dataset", "decoymnist", "--method", "vanilla", "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path), *FAST])
    assert code == 0 and "checkpoint.pt is damaged" in caplog.text
    assert "starts again from its first epoch" in caplog.text
    assert (folder / "checkpoint.pt.damaged").exists() and (folder / "result.json").exists()


@pytest.mark.parametrize("without_checksum", [False, True])
def test_a_checkpoint_damaged_after_its_save_resumes_from_the_one_before(without_checksum, data_dir, tmp_path,
                                                                         caplog):
    """Zeroed bytes inside a checkpoint fail its SHA-256, and a checkpoint whose SHA-256 was
    never written (killed between the two writes) is not trusted either; the run goes on
    from the previous epoch's."""
    cfg = TrainConfig(dataset="decoymnist", method="vanilla", train_subset=200, epochs=3, seed=37)
    whole = run(cfg, runs_dir=tmp_path / "whole", data_dir=data_dir, progress=False)

    def stop(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, runs_dir=tmp_path / "cut", data_dir=data_dir, progress=False, on_epoch=stop)
    ckpt = next((tmp_path / "cut").rglob("checkpoint.pt"))
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    ckpt.write_bytes(bytes(data))
    if without_checksum:
        (ckpt.parent / "checkpoint.pt.sha256").unlink()
    resumed = run(cfg, runs_dir=tmp_path / "cut", data_dir=data_dir, progress=False)
    assert "resuming from checkpoint.prev.pt" in caplog.text and (ckpt.parent / "checkpoint.pt.damaged").exists()
    assert resumed.test == whole.test  # the same numbers as a run never stopped


def test_damaged_result_is_named_with_the_fix(data_dir, tmp_path, capsys):
    cfg = resolve(TrainConfig(dataset="decoymnist", method="vanilla", train_subset=200, epochs=2, e_att=1, seed=37))
    folder = run_dir_for(cfg, tmp_path)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text('{"config": ')
    code = main(["train", "--dataset", "decoymnist", "--method", "vanilla", "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path), *FAST])
    assert "delete the run folder" in one_error_line(capsys, code, "corrupt")


def test_a_second_identical_run_is_refused_while_the_first_holds_the_lock(data_dir, tmp_path, capsys):
    cfg = resolve(TrainConfig(dataset="decoymnist", method="vanilla", train_subset=200, epochs=2, e_att=1, seed=37))
    folder = run_dir_for(cfg, tmp_path)
    folder.mkdir(parents=True)
    (folder / ".lock").write_text(str(os.getppid()))  # a live process that is not this one
    code = main(["train", "--dataset", "decoymnist", "--method", "vanilla", "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path), *FAST])
    one_error_line(capsys, code, "already running")
    (folder / ".lock").write_text("999999999")  # a process that is gone: its lock is stale and taken over
    (folder / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")  # left by a write that was killed
    assert main(["train", "--dataset", "decoymnist", "--method", "vanilla", "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path), *FAST]) == 0
    assert (folder / "result.json").exists() and not (folder / ".lock").exists()
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    assert oct((folder / "result.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


REPORT_CASES = [
    (lambda t: ["report", str(t / "nowhere"), "--out", str(t / "r")], "does not exist"),
    (lambda t: ["report", str(t / "empty"), "--out", str(t / "r")], "no finished runs"),
    (lambda t: ["report", str(t / "afile"), "--out", str(t / "r")], "does not exist"),
    (lambda t: ["report", str(t / "empty")], "pass --out FOLDER for the whole report, or --table KIND"),
    (lambda t: ["reproduce", "--quick", "--full"], "exclude each other"),
    (lambda t: ["reproduce", "--quick", "--seeds", "1,1"], "malformed --seeds"),
    (lambda t: ["reproduce", "--quick", "--seeds", ""], "malformed --seeds"),
    (lambda t: ["reproduce", "--quick", "--bogus"], "no such option"),
    (lambda t: ["trian"], "no such command"),
]


@pytest.mark.parametrize("make_args,needle", REPORT_CASES, ids=[n for _, n in REPORT_CASES])
def test_report_and_reproduce(make_args, needle, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr("learning_to_look.training.engine.fit", lambda *a, **kw: pytest.fail("nothing may train"))
    one_error_line(capsys, main(make_args(tmp_path)), needle)


def test_report_out_under_a_regular_file(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs" / "decoymnist" / "g" / "seed0"
    runs.mkdir(parents=True)
    (runs / "result.json").write_text("{}")  # unreadable as a record: skipped with a warning
    (tmp_path / "afile").write_text("x")
    code = main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "afile" / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no finished runs" in err and "Traceback" not in err


def test_ctrl_c_during_start_up_is_exit_130(monkeypatch, capsys):
    def interrupted_import(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_app", interrupted_import)
    assert main(["train"]) == 130
    err = capsys.readouterr().err
    assert "aborted" in err and "Traceback" not in err


def test_eof_from_a_file_is_not_reported_as_ctrl_c(monkeypatch, capsys):
    import typer

    def truncated() -> None:
        raise EOFError

    app = typer.Typer()
    app.command()(truncated)
    monkeypatch.setattr(cli, "_app", lambda argv=None: app)
    code = main([])
    one_error_line(capsys, code, "ended unexpectedly")
