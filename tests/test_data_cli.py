"""`l2l data build|info|show`: output, and every user error as one line on stderr with exit code 2."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from learning_to_look.cli import main
from learning_to_look.data.mnist import EXPECTED_SHA256
from learning_to_look.io import sha256_array

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0]


def test_info_prints_the_sha256_of_x_train(capsys, data_dir, datasets):
    rc, out, _ = run_cli(capsys, "data", "info", "colormnist", "--data-dir", data_dir)
    assert rc == 0
    assert sha256_array(datasets["colormnist"].train.images) in out
    assert "60000" in out and "10000" in out


def test_info_of_mnist_shows_the_protocol_hash(capsys, data_dir):
    rc, out, _ = run_cli(capsys, "data", "info", "mnist", "--data-dir", data_dir)
    assert rc == 0 and EXPECTED_SHA256["x_train"] in out


@pytest.mark.parametrize("name,magic", [("decoy.png", PNG_MAGIC), ("decoy.PDF", b"%PDF"), ("decoy.svg", b"<?xml")])
def test_show_writes_the_format_its_name_ends_in(name, magic, capsys, data_dir, tmp_path):
    out_file = tmp_path / "sub" / name
    rc, out, _ = run_cli(capsys, "data", "show", "decoymnist", "--out", out_file, "--data-dir", data_dir)
    assert rc == 0 and str(out_file) in out
    assert out_file.read_bytes()[:len(magic)] == magic


def test_build_of_an_existing_verified_file_does_not_rebuild(capsys, data_dir):
    before = (data_dir / "decoymnist.npz").stat().st_mtime_ns
    rc, out, _ = run_cli(capsys, "data", "build", "decoymnist", "--data-dir", data_dir)
    assert rc == 0 and "60000 train + 10000 test" in out
    assert (data_dir / "decoymnist.npz").stat().st_mtime_ns == before


@pytest.mark.parametrize("command", ["info", "show", "build"])
def test_unknown_dataset_is_one_line_error(capsys, data_dir, tmp_path, command):
    extra = ["--out", tmp_path / "x.png"] if command == "show" else []
    rc, _, err = run_cli(capsys, "data", command, "fashion", "--data-dir", data_dir, *extra)
    assert_one_line_error(rc, err, "unknown data set", "mnist")


def test_missing_mnist_dir_is_one_line_error(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "data", "build", "mnist", "--data-dir", tmp_path, "--mnist-dir", "/nonexistent")
    assert_one_line_error(rc, err, "/nonexistent")
    assert not (tmp_path / "mnist.npz").exists()


def test_corrupt_mnist_idx_file_is_one_line_error(capsys, tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]:
        (idx / (name + ".gz")).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abc"))  # 3 of 5 bytes
    rc, _, err = run_cli(capsys, "data", "build", "mnist", "--data-dir", tmp_path, "--mnist-dir", idx)
    assert_one_line_error(rc, err, "corrupt or truncated")


def test_corrupt_data_file_is_one_line_error(capsys, data_dir, tmp_path):
    """A truncated .npz is never used: it is rebuilt, and when that is impossible the user gets one line."""
    (tmp_path / "decoymnist.npz").write_bytes((data_dir / "decoymnist.npz").read_bytes()[:5000])
    rc, _, err = run_cli(capsys, "data", "info", "decoymnist", "--data-dir", tmp_path, "--mnist-dir", "/nonexistent")
    assert_one_line_error(rc, err)


@pytest.mark.parametrize("argv, fragment", [
    (["data", "show", "decoymnist"], "--out"),
    (["data", "bogus"], "bogus"),
    (["data", "info", "mnist", "--nope"], "--nope"),
], ids=["missing-option", "unknown-command", "unknown-option"])
def test_usage_errors_are_one_line_errors(capsys, argv, fragment):
    rc, _, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, err, fragment)


@pytest.mark.parametrize("argv", [[], ["data"], ["data", "build"], ["data", "info"], ["data", "show"]],
                         ids=["l2l", "data", "build", "info", "show"])
def test_every_help_has_an_example(capsys, argv):
    rc, out, _ = run_cli(capsys, *argv, "--help")
    assert rc == 0 and "Example:" in out


def test_l2l_console_script_is_installed():
    l2l = Path(sys.executable).parent / "l2l"
    assert l2l.exists(), "reinstall the package: pip install -e ."
    ok = subprocess.run([l2l, "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "Example:" in ok.stdout
    bad = subprocess.run([l2l, "data", "info", "fashion"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_kill_9_during_build_then_rerun_equals_an_uninterrupted_build(data_dir, tmp_path):
    """`l2l data build` killed with SIGKILL while it works, then run again: the file equals
    an uninterrupted build (the session's, made by the same code), and the rerun removes
    what the killed process left (its lock, its half-written temporary file)."""
    import os
    import signal
    import time

    import numpy as np

    l2l = Path(sys.executable).parent / "l2l"
    out = tmp_path / "data"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("L2L_MNIST_DIR", None)
    proc = subprocess.Popen([l2l, "data", "build", "mnist", "--data-dir", out], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if list(out.glob(".mnist.npz.*.tmp")):  # killed while writing: the worst moment
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert not (out / "mnist.npz").exists() and (out / ".mnist.npz.lock").exists()  # and, mostly, a half-written .tmp
    rc = subprocess.run([l2l, "data", "build", "mnist", "--data-dir", out], env=env, capture_output=True,
                        text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp")) and not list(out.glob(".*lock"))
    with np.load(out / "mnist.npz") as got, np.load(data_dir / "mnist.npz") as want:
        assert sorted(got.files) == sorted(want.files)
        for k in want.files:
            if k != "header":
                assert np.array_equal(got[k], want[k]), k
        h_got, h_want = (json.loads(str(z["header"])) for z in (got, want))
    h_got.pop("build_seconds"), h_want.pop("build_seconds")
    assert h_got == h_want


def test_info_and_show_never_build(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "data", "info", "mnist", "--data-dir", tmp_path / "d")
    assert_one_line_error(rc, err, "not built", f"l2l data build mnist --data-dir {tmp_path / 'd'}")
    rc, _, err = run_cli(capsys, "data", "show", "mnist", "--data-dir", tmp_path / "d", "--out", tmp_path / "x.png")
    assert_one_line_error(rc, err, "not built")
    assert not (tmp_path / "d").exists() and not (tmp_path / "x.png").exists()


def test_show_to_an_existing_folder_is_one_line(capsys, data_dir, tmp_path):
    rc, _, err = run_cli(capsys, "data", "show", "mnist", "--data-dir", data_dir, "--out", tmp_path)
    assert_one_line_error(rc, err, "is a folder", "--out")
