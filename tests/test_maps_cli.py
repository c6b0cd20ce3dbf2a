"""`l2l maps` end to end on a tiny random CLIP saved as a --vlm folder."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from learning_to_look.cli import main
from learning_to_look.maps import VARIANTS
from tiny_models import save_tiny_clip


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("L2L_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("L2L_MAPS_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return str(save_tiny_clip(tmp_path_factory.mktemp("vlm") / "tiny-clip"))


def _opts(data_dir, vlm):
    return ["--dataset", "decoymnist", "--data-dir", str(data_dir), "--limit", "40", "--vlm", vlm, "--input-size", "32",
            "--prompt", "handwritten digit", "--negatives", "background,black,dark"]


def test_missing_model_is_one_line_exit_2(data_dir, capsys):
    t0 = time.perf_counter()
    rc = main(["maps", "generate", "--dataset", "decoymnist", "--data-dir", str(data_dir), "--limit", "4", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and time.perf_counter() - t0 < 10
    assert err.startswith("error:") and "\n" not in err and "--vlm PATH" in err and "Traceback" not in err


def test_generate_check_show_list(data_dir, vlm, tmp_path, capsys):
    assert main(["maps", "check", *_opts(data_dir, vlm)]) == 2
    assert "l2l maps generate" in capsys.readouterr().err
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "decoymnist/train: 40 maps" in out and "NOT a real VLM" in out and "AUROC vs digit" in out
    assert "mass on decoy" in out and "artefact patches" in out
    assert main(["maps", "check", *_opts(data_dir, vlm)]) == 0
    assert "AUROC vs digit" in capsys.readouterr().out
    png = tmp_path / "grid.png"
    assert main(["maps", "show", *_opts(data_dir, vlm), "--out", str(png), "--n", "8"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["maps", "list"]) == 0
    assert "random-init test model" in capsys.readouterr().out


VLM_RUNS = [*((v, ()) for v in VARIANTS[1:]), ("clip", ("--variant", "vanilla")),
            ("naclip", ("--input-size", "48", "--window", "32", "--stride", "16")),
            ("gals", ()), ("gals", ("--method", "gradcam", "--prompt", "an image of a digit"))]


@pytest.mark.parametrize("backend,extra", VLM_RUNS, ids=[f"{b}{'-'.join(e)}" for b, e in VLM_RUNS])
def test_generate_and_check_every_vlm_backend(data_dir, vlm, backend, extra, capsys):
    opts = ["--backend", backend, "--dataset", "decoymnist", "--data-dir", str(data_dir), "--limit", "12", "--vlm",
            vlm, "--input-size", "32", *extra]
    assert main(["maps", "generate", *opts, "--quiet"]) == 0, capsys.readouterr().err
    assert main(["maps", "check", *opts]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"maps {backend} (vlm, NOT a real VLM" in out and "AUROC vs digit" in out
    assert ("all-zero maps" if backend == "gals" else "artefact patches") in out


def test_vlm_flags_are_checked(data_dir, vlm, capsys):
    opts = ["maps", "generate", "--dataset", "decoymnist", "--data-dir", str(data_dir), "--limit", "4", "--vlm", vlm]
    for extra, needle in ((["--backend", "maskclip", "--stride", "8"], "--stride 8 needs a sliding window"),
                          (["--input-size", "48", "--window", "20"], "--window 20 is not a multiple of the patch size"),
                          (["--backend", "gals", "--negatives", "sky"],
                           "--negatives does not apply to map source gals"),
                          (["--window", "32", "--stride", "40"], "--stride must be an integer in [1, 32]")):
        assert main([*opts, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_flags_that_do_not_apply_are_errors(data_dir, capsys):
    assert main(["maps", "generate", "--backend", "oracle", "--iterations", "3", "--data-dir", str(data_dir)]) == 2
    assert "--iterations does not apply to map source oracle" in capsys.readouterr().err


def test_oracle_needs_no_cache(data_dir, tmp_path, capsys):
    assert main(["maps", "generate", "--backend", "oracle", "--data-dir", str(data_dir), "--limit", "50"]) == 0
    out = capsys.readouterr().out
    assert "maps oracle (annotation)" in out and "AUROC vs digit 1.000" in out
    assert not (tmp_path / "cache").exists()


def test_image_folder_via_cli(vlm, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    for i, size in enumerate([(24, 40), (33, 33)]):
        Image.fromarray(np.full((*size, 3), 60 * i, np.uint8)).save(src / f"im{i}.png")
    assert main(["maps", "generate", "--images", str(src), "--out", str(tmp_path / "out"), "--vlm", vlm,
                 "--input-size", "32"]) == 0
    assert "2 maps from clip (vlm)" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "im0.png") as im:
        assert im.size == (40, 24)
    assert main(["maps", "show", "--images", str(src), "--vlm", vlm, "--input-size", "32",
                 "--out", str(tmp_path / "g.png")]) == 0


def test_oracle_on_an_image_folder_is_one_line_exit_2(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    rc = main(["maps", "generate", "--images", str(tmp_path), "--backend", "oracle", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: map source oracle needs the clean digit") and "--dataset" in err


def test_image_sub_folders_keep_their_paths_and_images_need_out(tmp_path, capsys):
    from PIL import Image

    for name in ("cat/a.png", "cat/b.jpg", "dog/c.png", ".hidden/d.png"):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "imgs" / name)
    args = ["maps", "generate", "--images", str(tmp_path / "imgs"), "--backend", "intensity"]
    assert main(args) == 2 and "--images needs --out DIR" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["cat/a.png", "cat/b.png", "dog/c.png"]


# ---- read-only commands, the lock, --quiet, kill -9, the optional vlm extra ------------------------

def _entry(cache):
    (meta,) = list(cache.rglob("meta.json"))
    return meta.parent


def test_check_and_show_report_a_corrupt_chunk_and_never_regenerate(data_dir, vlm, tmp_path, capsys):
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 0
    chunk = _entry(tmp_path / "cache") / "chunk-00000.npy"
    chunk.write_bytes(chunk.read_bytes()[:-7] + b"garbage")
    damaged = chunk.read_bytes()
    capsys.readouterr()
    for argv in (["maps", "check", *_opts(data_dir, vlm)],
                 ["maps", "show", *_opts(data_dir, vlm), "--out", str(tmp_path / "g.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "chunk 0" in err and "l2l maps generate" in err
        assert "regenerating" not in err and chunk.read_bytes() == damaged
    assert not (tmp_path / "g.png").exists()
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 0  # generate repairs it
    assert "regenerating that chunk" in capsys.readouterr().err and chunk.read_bytes() != damaged
    assert main(["maps", "check", *_opts(data_dir, vlm)]) == 0


def test_list_names_a_corrupt_entry_with_its_folder(data_dir, vlm, tmp_path, capsys):
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 0
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--variant", "maskclip", "--quiet"]) == 0
    bad = sorted(p.parent for p in (tmp_path / "cache").rglob("meta.json"))[0]
    (bad / "meta.json").write_text('{"format": 1')
    capsys.readouterr()
    assert main(["maps", "list"]) == 2
    out, err = capsys.readouterr()
    assert f"{bad}: CORRUPT (meta.json is not valid JSON)" in out and out.count("complete") == 1
    assert err.count("\n") == 1 and str(bad) in err and "1 of 2" in err


def test_a_second_generate_stops_at_the_lock_and_a_dead_ones_lock_is_taken_over(data_dir, vlm, tmp_path, capsys):
    import subprocess

    from learning_to_look.data import load_dataset
    from learning_to_look.maps import ClipMaps
    from learning_to_look.maps.cache import cache_folder

    split = load_dataset("decoymnist", data_dir, build=False).train.subset(np.arange(40))
    gen = ClipMaps(vlm=vlm, input_size=32)
    folder = cache_folder(gen, "decoymnist", split, tmp_path / "cache")
    folder.mkdir(parents=True)
    (folder / ".lock").write_text(str(os.getppid()))  # a live process
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"another l2l process (pid {os.getppid()})" in err and str(folder) in err
    assert (folder / ".lock").read_text() == str(os.getppid()) and not (folder / "meta.json").exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (folder / ".lock").write_text(str(dead.pid))  # a process that is gone (killed with -9)
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 0
    assert (folder / "meta.json").exists() and not (folder / ".lock").exists()


def test_quiet_silences_loading_the_model(data_dir, vlm, tmp_path, capsys):
    assert main(["maps", "generate", *_opts(data_dir, vlm), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    src = tmp_path / "imgs"
    src.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(src / "a.png")
    assert main(["maps", "generate", "--images", str(src), "--vlm", vlm, "--input-size", "32", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""


def test_offline_hub_failure_is_fast_without_hf_hub_offline(data_dir, monkeypatch, capsys):
    """No HF_HUB_OFFLINE and no network: one connection attempt, kept, and one line in well under 2 s
    (measured from the command's start, after the interpreter's imports)."""
    import socket

    from learning_to_look import hub as weights

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(data_dir / "no-hub-cache"))
    monkeypatch.setattr(weights, "_REACHABLE", {})
    calls = []

    def no_network(*a, **k):
        calls.append(a)
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    for _ in range(2):
        t0 = time.perf_counter()
        rc = main(["maps", "generate", "--dataset", "decoymnist", "--backend", "clip", "--vlm",
                   "openai/clip-vit-base-patch16", "--limit", "2", "--data-dir", str(data_dir)])
        assert time.perf_counter() - t0 < 2.0
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "hub is unreachable" in err and "--vlm PATH" in err
    assert len(calls) == 1


def test_kill_9_during_generate_then_rerun_equals_an_uninterrupted_run(data_dir, vlm, tmp_path):
    """`l2l maps generate` killed with SIGKILL between chunks, then run again: it resumes,
    its maps equal an uninterrupted run's, and no temporary file or lock is left."""
    import signal
    import subprocess
    import sys

    from learning_to_look.data import load_dataset
    from learning_to_look.maps import ClipMaps, cached_maps, read_cached

    l2l = Path(sys.executable).parent / "l2l"
    cache = tmp_path / "killed"
    argv = [l2l, "maps", "generate", "--backend", "clip", "--vlm", vlm, "--input-size", "32", "--dataset",
            "decoymnist", "--data-dir", data_dir, "--limit", "600", "--cache-dir", cache, "--quiet"]
    env = {**os.environ, "L2L_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "L2L_MAPS_CHUNK": "20"}
    proc = subprocess.Popen([str(a) for a in argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline and not list(cache.rglob("chunk-00002.npy")):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "generation finished before it could be killed"
    meta = json.loads(next(cache.rglob("meta.json")).read_text())
    assert not meta["complete"] and 2 <= len(meta["chunks"]) < 30  # chunk 2 may be written but not yet listed
    rerun = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(cache.rglob("*.tmp")) and not list(cache.rglob(".lock"))

    split = load_dataset("decoymnist", data_dir, build=False).train.subset(np.arange(600))
    gen = ClipMaps(vlm=vlm, input_size=32)
    whole = cached_maps(gen, "decoymnist", split, cache_dir=tmp_path / "whole", chunk_size=20, progress=False)
    resumed, meta = read_cached(gen, "decoymnist", split, cache)
    assert np.array_equal(resumed, whole) and meta["complete"]


def test_without_the_vlm_extra_maps_import_and_cheap_sources_work(data_dir, tmp_path):
    """transformers is the optional `vlm` extra: nothing but a VLM backend imports it, and
    a VLM backend without it is one line naming the extra."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np
from learning_to_look.cli import main
from learning_to_look.maps import VARIANTS
from learning_to_look.data import load_dataset
from learning_to_look.maps import get_map_source
data = {str(data_dir)!r}
for backend in ("oracle", "intensity", "not-decoy"):
    assert main(["maps", "generate", "--backend", backend, "--data-dir", data, "--limit", "8"]) == 0, backend
split = load_dataset("decoymnist", data, build=False).train.subset(np.arange(8))
for kind, s in (("blur", 1.0), ("shift", 2.0), ("drop", 0.5)):
    get_map_source("degraded-oracle", degradation=kind, strength=s).generate(split)
loaded = sorted(m for m in ("transformers", "safetensors", "huggingface_hub") if m in sys.modules)
assert not loaded, loaded
for m in ("transformers", "safetensors", "huggingface_hub"):
    sys.modules[m] = None  # as if the extra were not installed
sys.exit(main(["maps", "generate", "--backend", "clip", "--vlm", {str(tmp_path)!r}, "--data-dir", data,
               "--limit", "8"]))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "L2L_MAPS_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: the clip backend needs") and "pip install 'learning-to-look[vlm]'" in lines[0]


def test_train_takes_map_flags_and_l2l_vlm_and_maps_only_its_subset(data_dir, vlm, tmp_path, monkeypatch, capsys):
    """--prompt and --input-size reach the map source from `l2l train`; L2L_VLM names the model;
    with --train-subset only the images trained and validated on get maps."""
    monkeypatch.setenv("L2L_VLM", vlm)
    args = ["train", "--dataset", "decoymnist", "--method", "l2l", "--maps", "clip", "--epochs", "2", "--e-att", "1",
            "--train-subset", "40", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"), "--quiet",
            "--input-size", "32", "--prompt", "a digit", "--negatives", "background"]
    monkeypatch.setenv("L2L_MAPS_DIR", str(tmp_path / "cache"))
    assert main(args) == 0, capsys.readouterr().err
    (result,) = (tmp_path / "runs").rglob("result.json")
    r = json.loads(result.read_text())
    maps_cfg = r["maps"]["config"]
    assert r["config"]["map_options"]["vlm"] == vlm and maps_cfg["input_size"] == 32
    prompts = maps_cfg["prompts"]
    assert list(prompts["positive"]) == ["a digit"] and list(prompts["negative"]) == ["background"]
    (meta,) = (tmp_path / "cache").rglob("meta.json")
    assert json.loads(meta.read_text())["n"] == 40 + 40 // 5  # the subset's training and validation images
    assert main([*args[:-4], "--maps", "oracle", "--prompt", "x"]) == 2
    assert "does not apply to map source oracle" in capsys.readouterr().err


def test_no_map_flag_is_shadowed_by_a_train_flag_unless_declared():
    """`l2l train` drops a map flag whose name is a config field: only these may share one."""
    from learning_to_look.cli.maps import map_flags
    from learning_to_look.cli.train import TRAIN_FIELDS

    # the run's own device and batch size, and the training method: GALS's map option `method` is set in
    # a config file's map_options (or with `l2l maps generate --method`)
    assert set(map_flags()) & set(TRAIN_FIELDS) == {"device", "batch_size", "method"}
